"""Spend counting's CPU: inline, per 1,000-event batch, or (`--follower`) the deferred follower's
per event. `bench_budgets.py`'s load (its `thousand_budgets`, its `synthetic_events` payload)
stored through `metering.events.ingest` into a fresh database, one 1,000-event transaction at a
time, in one process of the checkout this runs from (its working directory).

    cd <a checkout> && .venv/bin/python <this file> [--events 100000] [--db sqlite|postgresql] [--profile] [--follower]

Figures are CPU time (time.process_time, this process only: PostgreSQL's server is not in
them), medians over the batches: `count` is `count_ingested` (the generation read, matching,
pricing, the counter upsert with its read-back, the alert check), `store` the whole batch
(validation, insert, counting, commit) with the budgets and with none. `--profile`: cProfile's
top functions under `count_ingested` instead.

`--follower`: the events stored with 1,000 budgets in deferred mode (the tenant followed before
the first batch, so ingestion counts nothing), then `spend_follower.catch_up` counts them all,
`--repeats` times (the counters, alerts, outcomes and watermark put back between runs; the
process keeps its cached budgets, as a follower does). Figures: catch_up's CPU per event
(this process), each run and the median, and on PostgreSQL its server processes' for the
bench's database (from /proc: the server must run on this machine; 0.01 s ticks); `--profile`:
cProfile's top functions (CPU time) over the runs.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())

from sqlalchemy import Engine, delete, text, update  # noqa: E402

from bench.bench_budgets import NOW, _payload, thousand_budgets  # noqa: E402
from bench.common import fresh_postgres, fresh_sqlite  # noqa: E402
from metering.core.db import unit_of_work  # noqa: E402
from metering.core.tenants import create_tenant  # noqa: E402
from metering.events import ingest, spend_follower  # noqa: E402
from metering.events.ingest import store_events, validate_items  # noqa: E402
from metering.spend import budget_repository, deferred  # noqa: E402
from metering.spend.budget_tables import budget_alerts, budget_counters, budget_tasks, spend_watermarks  # noqa: E402

BATCH = 1000


def run(payload: list[dict[str, Any]], budgets: bool, db: str, profile: cProfile.Profile | None) -> tuple[list[float], list[float]]:
    """(count CPU per batch, store CPU per batch), in seconds, into a fresh database."""
    folder = Path(tempfile.mkdtemp(prefix="tm-count-"))
    engine = fresh_postgres() if db == "postgresql" else fresh_sqlite(str(folder / "count.db"))
    if engine is None:
        raise SystemExit("PostgreSQL unavailable")
    with unit_of_work(engine) as session:
        tenant = create_tenant(session, "bench", now=NOW)
        if budgets:
            budget_repository.replace_all(session, tenant.id, thousand_budgets(), now=NOW)
    counting: list[float] = []
    original = ingest.spend.count_ingested

    def timed(*args: Any, **kwargs: Any) -> int:
        start = time.process_time()
        if profile is not None:
            profile.enable()
        try:
            return original(*args, **kwargs)
        finally:
            if profile is not None:
                profile.disable()
            counting.append(time.process_time() - start)

    ingest.spend.count_ingested = timed  # type: ignore[assignment]
    storing: list[float] = []
    now = datetime.now(UTC)
    try:
        for start in range(0, len(payload), BATCH):
            began = time.process_time()
            batch = validate_items(payload[start : start + BATCH])
            with engine.begin() as connection:
                store_events(connection, tenant.id, batch, now=now)
            storing.append(time.process_time() - began)
    finally:
        ingest.spend.count_ingested = original  # type: ignore[assignment]
        engine.dispose()
    return counting, storing


def follow(
    payload: list[dict[str, Any]], db: str, repeats: int, profile: cProfile.Profile | None, page: int = deferred.PAGE
) -> tuple[list[float], list[float]]:
    """`catch_up`'s CPU per event (seconds) in each of `repeats` runs over the stored payload:
    this process's, and (PostgreSQL on this machine) its database's server processes'."""
    folder = Path(tempfile.mkdtemp(prefix="tm-follow-"))
    engine = fresh_postgres() if db == "postgresql" else fresh_sqlite(str(folder / "follow.db"))
    if engine is None:
        raise SystemExit("PostgreSQL unavailable")
    try:
        with unit_of_work(engine) as session:
            tenant = create_tenant(session, "bench", now=NOW)
            budget_repository.replace_all(session, tenant.id, thousand_budgets(), now=NOW)
        now = datetime.now(UTC)
        if not spend_follower.start(engine, tenant.id, now=now):
            raise SystemExit("the tenant was followed already")
        for start in range(0, len(payload), BATCH):
            batch = validate_items(payload[start : start + BATCH])
            with engine.begin() as connection:
                store_events(connection, tenant.id, batch, now=now)
        per_event, server = [], []
        for _ in range(repeats):
            _unfollowed(engine, tenant.id)
            server_began = _server_cpu(engine)
            began = time.process_time()
            if profile is not None:
                profile.enable()
            done = spend_follower.catch_up(engine, tenant.id, now=now, page=page)
            if profile is not None:
                profile.disable()
            spent = time.process_time() - began
            if db == "postgresql":
                server_spent = _server_cpu(engine)
                server.append(sum(cpu - server_began.get(pid, 0.0) for pid, cpu in server_spent.items()) / len(payload))
            if done.events != len(payload):
                raise SystemExit(f"catch_up counted {done.events:,} events of {len(payload):,}")
            per_event.append(spent / done.events)
        return per_event, server
    finally:
        engine.dispose()


def _server_cpu(engine: Engine) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL server process serving the bench's database (the
    pool's connections), read from /proc: the server is on this machine. Empty on SQLite."""
    if engine.dialect.name != "postgresql":
        return {}
    with engine.connect() as connection:
        pids = connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars().all()
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def _unfollowed(engine: Engine, tenant_id: int) -> None:
    """Put the tenant back as it was before the follower counted: no counter, alert or outcome,
    the watermark at 0 (the tenant was followed before its first event)."""
    with engine.begin() as connection:
        for table in (budget_counters, budget_alerts, budget_tasks):
            connection.execute(delete(table).where(table.c.tenant_id == tenant_id))
        connection.execute(update(spend_watermarks).where(spend_watermarks.c.tenant_id == tenant_id).values(counted_through=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--follower", action="store_true", help="the deferred follower's catch_up instead")
    parser.add_argument("--repeats", type=int, default=3, help="--follower: catch_up runs over the stored events")
    parser.add_argument("--page", type=int, default=None, help="--follower: events a page (default: the follower's)")
    args = parser.parse_args()
    payload = _payload(args.events)
    if args.follower:
        follow(payload[: 5 * BATCH], args.db, 1, None)  # warm imports and caches
        profile = cProfile.Profile(time.process_time) if args.profile else None  # CPU, not waits on the server
        per_event, server = follow(payload, args.db, args.repeats, profile, args.page or deferred.PAGE)
        us = 1e6
        print(
            f"{args.db}, follower catch_up over {args.events:,} events with 1,000 budgets, "
            f"{args.page or deferred.PAGE:,}-event pages, CPU us an event: "
            f"{', '.join(f'{v * us:.2f}' for v in per_event)} (median {statistics.median(per_event) * us:.2f})"
            + (f"; server {', '.join(f'{v * us:.2f}' for v in server)} (median {statistics.median(server) * us:.2f})" if server else "")
            + (" (profiled)" if profile is not None else ""),
            flush=True,
        )
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return
    run(payload[: 5 * BATCH], True, args.db, None)  # warm imports and caches
    if args.profile:
        profile = cProfile.Profile()
        counting, _ = run(payload, True, args.db, profile)
        print(f"count_ingested: {statistics.median(counting) * 1e3:.3f} ms a batch (median, profiled)")
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return
    counting, with_budgets = run(payload, True, args.db, None)
    _, without = run(payload, False, args.db, None)
    ms = 1e3
    print(
        f"{args.db}, {args.events:,} events in {BATCH:,}-event batches, CPU ms a batch (median): "
        f"count {statistics.median(counting) * ms:.3f}, store with 1,000 budgets {statistics.median(with_budgets) * ms:.3f}, "
        f"store without {statistics.median(without) * ms:.3f}, difference {(statistics.median(with_budgets) - statistics.median(without)) * ms:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
