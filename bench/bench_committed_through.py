"""What asking for the counting bound costs a tenant's ingestion on PostgreSQL.

    cd <a checkout> && .venv/bin/python bench/bench_committed_through.py [--seconds 6] [--ingesters 2] [--interval 0.25] [--rounds 3]

The deferred follower (every `TASKMETER_SPEND_FOLLOW_INTERVAL_SECONDS` with something to count)
and the rollup count up to `metering.events.ingest.committed_through`: the newest seq below
which no batch is still in flight. `--ingesters` threads store 1,000-event batches of one tenant
(`insert_prepared`, each batch its own transaction, the rows prepared before the clock starts,
so the figure is the database's part) for `--seconds`, while a thread asks for the bound every
`--interval` seconds, each way in turn, each run into a fresh database:

- `none`: nobody asks (the baseline);
- `lock`: the tenant's ingest lock taken alone, then the newest seq read (`newest_committed` in a
  transaction of its own: how the bound was read before). PostgreSQL queues every batch that
  asks for the lock shared behind that request, so the batches wait for those in flight too;
- `holders`: `committed_through`: the newest seq read, then a wait (looking at `pg_locks`) until
  the transactions that held the lock just after have ended; no batch is queued behind it.

Each line: events/s of each run, its ratio against the mean of the `none` runs on either side,
and the asks' wait (median, p99). Needs PostgreSQL (TASKMETER_BENCH_POSTGRES_URL).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime

sys.path.insert(0, os.getcwd())

from sqlalchemy import Engine  # noqa: E402

from bench.common import cpu_check, fresh_postgres, machine, synthetic_events  # noqa: E402
from metering.core.db import unit_of_work  # noqa: E402
from metering.core.tenants import create_tenant  # noqa: E402
from metering.events.ingest import (  # noqa: E402
    Prepared,
    committed_through,
    insert_prepared,
    newest_committed,
    prepare_rows,
    validate_items,
)

NOW = datetime(2026, 10, 31, tzinfo=UTC)
BATCH = 1000
MODES = ("none", "lock", "holders")


def _ask(engine: Engine, tenant_id: int, mode: str) -> int:
    if mode == "lock":
        with engine.begin() as connection:
            return newest_committed(connection, tenant_id)
    return committed_through(engine, tenant_id)


def run(batches: list[Prepared], mode: str, seconds: float, ingesters: int, interval: float) -> tuple[float, list[float]]:
    """(events/s stored, the asks' waits in seconds) of one run into a fresh database."""
    engine = fresh_postgres()
    if engine is None:
        raise SystemExit("PostgreSQL unavailable")
    with unit_of_work(engine) as session:
        tenant_id = create_tenant(session, "bench", now=NOW).id
    todo = iter(batches)
    lock = threading.Lock()
    stored = [0] * ingesters
    stop = threading.Event()
    waits: list[float] = []

    def ingest(slot: int) -> None:
        while not stop.is_set():
            with lock:
                prepared = next(todo, None)
            if prepared is None:
                raise SystemExit("out of prepared batches: give fewer --seconds or more --events")
            with engine.begin() as connection:
                stored[slot] += insert_prepared(connection, tenant_id, prepared).accepted

    def ask() -> None:
        while not stop.wait(interval):
            began = time.perf_counter()
            _ask(engine, tenant_id, mode)
            waits.append(time.perf_counter() - began)

    threads = [threading.Thread(target=ingest, args=(slot,)) for slot in range(ingesters)]
    if mode != "none":
        threads.append(threading.Thread(target=ask))
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    engine.dispose()
    return sum(stored) / elapsed, waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--ingesters", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=600_000, help="events prepared for each run (more than a run stores)")
    args = parser.parse_args()
    print(machine(), flush=True)
    print(cpu_check(), flush=True)
    payload = synthetic_events(args.events, seed=5)
    batches = [prepare_rows(validate_items(payload[i : i + BATCH]), 1, now=NOW) for i in range(0, len(payload), BATCH)]
    series: list[str] = ["none"]
    for _ in range(args.rounds):
        for mode in MODES[1:]:
            series += [mode, "none"]
    results: list[tuple[str, float, list[float]]] = []
    for mode in series:
        rate, waits = run(batches, mode, args.seconds, args.ingesters, args.interval)
        results.append((mode, rate, waits))
        print(f"  {mode}: {rate:,.0f} events/s" + (f", {len(waits)} asks" if waits else ""), flush=True)
    for mode in MODES[1:]:
        ratios = [rate / ((results[i - 1][1] + results[i + 1][1]) / 2) for i, (m, rate, _) in enumerate(results) if m == mode]
        waits = sorted(w for m, _, ws in results if m == mode for w in ws)
        p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1000 if waits else 0.0
        print(
            f"{mode}: {', '.join(f'{r:.1%}' for r in ratios)} of none (median {statistics.median(ratios):.1%}); "
            f"the ask waited median {statistics.median(waits) * 1000:.1f} ms, p99 {p99:.1f} ms ({len(waits)} asks)",
            flush=True,
        )



if __name__ == "__main__":
    main()
