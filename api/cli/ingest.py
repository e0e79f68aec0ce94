"""The `ingest` command of `taskmeter`: a JSONL file of events into the events table."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from api.cli.common import err, find_tenant, now, open_engine, out
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.errors import TaskmeterError
from metering.events import spend_follower
from metering.events.ingest import Prepared, insert_prepared, prepare_rows, validate_lines
from metering.events.jsonl import LineBatch, read_batches
from metering.events.schemas import FieldError, RejectedEvent


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine:
        path = Path(args.file)
        if not path.is_file():
            raise TaskmeterError(f"no such file: {path}")
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
        rejected_path = path.with_name(path.name.removesuffix(".jsonl") + ".rejected.jsonl")
        summary = ingest_file(
            engine, tenant.id, path, rejected_path, settings=settings, batch_size=args.batch_size,
            leave_counting=args.leave_counting,
        )  # fmt: skip
        out(summary)
    return 0


def ingest_file(
    engine: Engine, tenant_id: int, path: Path, rejected_path: Path, *, settings: Settings, batch_size: int = 5000,
    leave_counting: bool = False,
) -> dict[str, Any]:
    """Stream a JSONL file into the events table, one transaction per batch (a rerun is a replay).

    A reader thread parses and validates the next batch while this one is being inserted. With
    `TASKMETER_SPEND_COUNTING=deferred` the batches only store events (the tenant is followed from
    the start, `metering.events.spend_follower`) and the budget counters catch up once at the end
    of the file; the summary then says how many events that counted (`spend_counted`). A tenant
    followed by a server's follower is caught up at the end likewise. With `leave_counting` the
    command does not catch up: a running server's or worker's follower counts what it stored, and
    the summary says how many events it left uncounted when it ended (`spend_left`).
    """
    from tqdm import tqdm

    if settings.spend_counting == "deferred":
        spend_follower.start(engine, tenant_id, now=now())
    totals: dict[str, Any] = {"accepted": 0, "duplicates": 0, "conflicts": 0, "rejected": 0, "lines": 0}
    window = settings.event_window
    rejected_file = None

    def prepare(batch: LineBatch) -> tuple[LineBatch, Prepared]:
        validated = validate_lines(batch.raw)
        return batch, prepare_rows(validated, tenant_id, now=now(), window=window)

    with (
        path.open("rb") as stream,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, file=sys.stderr, disable=None) as bar,
        ThreadPoolExecutor(1, thread_name_prefix="taskmeter-ingest-reader") as reader,
    ):
        batches = read_batches(stream, batch_size)
        pending = _submit_next(reader, prepare, batches)
        while pending is not None:
            batch, prepared = pending.result()
            pending = _submit_next(reader, prepare, batches)  # at most one batch ahead: bounded memory
            with unit_of_work(engine) as session:
                result = insert_prepared(session, tenant_id, prepared)
            rejections = [(batch.lines[r.index], batch.raw[r.index], r) for r in result.rejected]
            rejections += [
                (number, raw, RejectedEvent(index=-1, id=None, errors=[FieldError(field=f, message=m)]))
                for number, raw, f, m in batch.unreadable
            ]
            if rejections:
                rejected_file = rejected_file or rejected_path.open("w", encoding="utf-8")
                for number, raw, rejection in sorted(rejections, key=lambda r: r[0]):
                    record = {
                        "line": number,
                        "id": rejection.id,
                        "errors": [e.model_dump() for e in rejection.errors],
                        "raw": raw.decode("utf-8", errors="replace"),
                    }
                    rejected_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            totals["accepted"] += result.accepted
            totals["duplicates"] += result.duplicates
            totals["conflicts"] += result.conflicts
            totals["rejected"] += len(rejections)
            totals["lines"] += len(batch.raw) + len(batch.unreadable)
            bar.update(batch.bytes_read)
    if rejected_file is not None:
        rejected_file.close()
        totals["rejected_file"] = str(rejected_path)
        err(f"{totals['rejected']} line(s) rejected; reasons in {rejected_path}")
    with engine.connect() as connection:
        followed = spend_follower.following(connection, tenant_id)
    if followed and leave_counting:
        totals["spend_left"] = spend_follower.uncounted(engine, tenant_id)
    elif followed:
        totals["spend_counted"] = spend_follower.catch_up(engine, tenant_id, now=now()).events
    return totals


def _submit_next(pool: ThreadPoolExecutor, work: Callable[[LineBatch], Any], batches: Iterator[LineBatch]) -> Future[Any] | None:
    batch = next(batches, None)
    return None if batch is None else pool.submit(work, batch)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("ingest", help="ingest a JSONL file of events")
    p.add_argument("file")
    p.add_argument("--tenant", required=True)
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument(
        "--leave-counting", action="store_true",
        help="deferred counting: leave the budget counters to a running server's or worker's follower "
        "instead of catching them up at the end of the file",
    )  # fmt: skip
    p.set_defaults(func=cmd_ingest)
