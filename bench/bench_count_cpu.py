"""Inline spend counting's CPU per 1,000-event batch: `bench_budgets.py`'s load (its
`thousand_budgets`, its `synthetic_events` payload) stored through `metering.events.ingest`
into a fresh SQLite database, one 1,000-event transaction at a time, with 1,000 budgets and with
none, in one process of the checkout this runs from (its working directory).

    cd <a checkout> && .venv/bin/python <this file> [--events 100000] [--db sqlite|postgresql] [--profile]

Figures are CPU time (time.process_time, this process only: PostgreSQL's server is not in
them), medians over the batches: `count` is `count_ingested` (the generation read, matching,
pricing, the counter upsert with its read-back, the alert check), `store` the whole batch
(validation, insert, counting, commit) with the budgets and with none. `--profile`: cProfile's
top functions under `count_ingested` instead.
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

from bench.bench_budgets import NOW, _payload, thousand_budgets  # noqa: E402
from bench.common import fresh_postgres, fresh_sqlite  # noqa: E402
from metering.core.db import unit_of_work  # noqa: E402
from metering.core.tenants import create_tenant  # noqa: E402
from metering.events import ingest  # noqa: E402
from metering.events.ingest import store_events, validate_items  # noqa: E402
from metering.spend import budget_repository  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    payload = _payload(args.events)
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
