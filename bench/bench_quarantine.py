"""What the quarantine check adds to the rollup: `metering.rollup.quarantine.unprocessable` over the frame
a backlog is summarized from, against pricing + summarizing the same frame, in the same process.

    .venv/bin/python bench/bench_quarantine.py [--events 2000000]

The frame is read from a SQLite event store (built once under TASKMETER_BENCH_DIR, not timed) the
way the rollup's workers read it (Arrow, categorical text columns). Best of 5 for the check and of
3 for pricing + summarizing, since the first touch of fresh memory is slow on this VM.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_rollup import build_store  # noqa: E402
from bench.common import cpu_check, machine  # noqa: E402
from metering.core.db import make_engine  # noqa: E402
from metering.core.tables import events  # noqa: E402
from metering.costs.book import price_book, price_events  # noqa: E402
from metering.rollup.quarantine import unprocessable  # noqa: E402
from metering.rollup.stores import store_for  # noqa: E402
from metering.rollup.summary import summarize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2_000_000)
    args = parser.parse_args()
    folder = Path(os.environ.get("TASKMETER_BENCH_DIR", "/tmp/tm-bench"))
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / f'quarantine-{args.events}.db'}"
    engine = make_engine(url)
    build_store(engine, args.events)
    with engine.connect() as connection:
        book, _ = price_book(connection, 1)
        upto = connection.execute(select(func.max(events.c.seq))).scalar_one()
    engine.dispose()
    frame = pd.concat(list(store_for(engine).read_events(engine, 1, 0, upto, 20_000_000, own_process=True)), ignore_index=True)
    print(machine(), "|", cpu_check())
    checks = []
    for _ in range(5):
        t0 = time.perf_counter()
        codes = unprocessable(frame)
        checks.append(time.perf_counter() - t0)
    assert not codes.any()
    rollups = []
    for _ in range(3):
        t0 = time.perf_counter()
        summarize(price_events(frame.copy(), book, {}), "UTC")
        rollups.append(time.perf_counter() - t0)
    check, rollup = min(checks), min(rollups)
    print(f"{len(frame):,} events: quarantine check {check * 1000:.0f} ms, price + summarize {rollup:.2f} s; "
          f"the check adds {check / rollup:.1%} to the in-memory step")


if __name__ == "__main__":
    main()
