"""Instructions (valgrind's callgrind) of inline spend counting per 1,000-event batch: a figure
that a busy machine does not move, unlike CPU time. `bench_count_cpu.py`'s load (1,000 budgets,
`bench_budgets.py`'s events) stored through `metering.events.ingest` into a fresh SQLite
database; instrumentation is switched on (`callgrind_control`) only around `count_ingested`
(`count`) or around each whole batch (`store`: validation excluded; insert, counting, commit).

    cd <a checkout> && valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=OUT \\
        .venv/bin/python bench/bench_count_instructions.py [--batches 3] [--what count|store] [--none]

`--what follow`: the batches stored in deferred mode (`bench_count_cpu.py --follower`), then
instrumentation around the follower's `catch_up` of them all (after one warming run, undone).
The total ("Collected") divided by the batches is the figure; `callgrind_annotate OUT` splits it
by function and library (libsqlite3, libpython, numpy). Slow: minutes for three batches.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())

from bench.bench_budgets import NOW, _payload, thousand_budgets  # noqa: E402
from bench.common import fresh_sqlite  # noqa: E402
from metering.core.db import unit_of_work  # noqa: E402
from metering.core.tenants import create_tenant  # noqa: E402
from metering.events import ingest  # noqa: E402
from metering.events.ingest import store_events, validate_items  # noqa: E402
from metering.spend import budget_repository  # noqa: E402

BATCH = 1000


def _instrument(on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True, capture_output=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--what", choices=("count", "store", "follow"), default="count")
    parser.add_argument("--none", action="store_true", help="no budgets")
    args = parser.parse_args()
    if args.what == "follow":
        follow(args.batches)
        return
    payload = _payload(BATCH * (args.batches + 3))
    engine = fresh_sqlite(str(Path(tempfile.mkdtemp(prefix="tm-instr-")) / "count.db"))
    with unit_of_work(engine) as session:
        tenant = create_tenant(session, "bench", now=NOW)
        if not args.none:
            budget_repository.replace_all(session, tenant.id, thousand_budgets(), now=NOW)
    now = datetime.now(UTC)
    batches = [validate_items(payload[start : start + BATCH]) for start in range(0, len(payload), BATCH)]
    original = ingest.spend.count_ingested
    measuring = False

    def counted(*positional: Any, **named: Any) -> int:
        if measuring and args.what == "count":
            _instrument(True)
        try:
            return original(*positional, **named)
        finally:
            if measuring and args.what == "count":
                _instrument(False)

    ingest.spend.count_ingested = counted  # type: ignore[assignment]
    for batch in batches[:3]:  # warm caches and memos; counters exist
        with engine.begin() as connection:
            store_events(connection, tenant.id, batch, now=now)
    measuring = True
    for batch in batches[3:]:
        if args.what == "store":
            _instrument(True)
        with engine.begin() as connection:
            store_events(connection, tenant.id, batch, now=now)
        if args.what == "store":
            _instrument(False)
    engine.dispose()
    print(f"{args.batches} batches of {BATCH:,}: divide callgrind's 'Collected' by {args.batches}")


def follow(batches: int) -> None:
    from bench.bench_count_cpu import _unfollowed
    from metering.events import spend_follower

    engine = fresh_sqlite(str(Path(tempfile.mkdtemp(prefix="tm-instr-")) / "follow.db"))
    with unit_of_work(engine) as session:
        tenant = create_tenant(session, "bench", now=NOW)
        budget_repository.replace_all(session, tenant.id, thousand_budgets(), now=NOW)
    now = datetime.now(UTC)
    spend_follower.start(engine, tenant.id, now=now)
    payload = _payload(BATCH * batches)
    for start in range(0, len(payload), BATCH):
        with engine.begin() as connection:
            store_events(connection, tenant.id, validate_items(payload[start : start + BATCH]), now=now)
    spend_follower.catch_up(engine, tenant.id, now=now)  # warm caches and memos
    _unfollowed(engine, tenant.id)
    _instrument(True)
    done = spend_follower.catch_up(engine, tenant.id, now=now)
    _instrument(False)
    engine.dispose()
    print(f"catch_up of {done.events:,} events: divide callgrind's 'Collected' by {done.events}")


if __name__ == "__main__":
    main()
