"""The Python client's cost on the agent's thread: `task.usage(...)` against an empty loop that
calls a no-op of the same signature, in the same run, while the client's sender thread delivers
the events to a real `taskmeter serve` (SQLite) or, in the second scenario, spools them because
nothing listens.

On this 2-core machine the server runs next to the agent; by default it is pinned to core 1 and
the bench (agent thread + sender thread) to core 0, as when the server is another machine.
`--no-pin` lets them share both cores (the server's ingestion then competes with the agent).

    .venv/bin/python bench/bench_client.py [--calls 100000] [--no-pin]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select  # noqa: E402
from taskmeter_client import TaskmeterClient  # noqa: E402

from bench.common import machine  # noqa: E402
from bench.server import free_port, serve_sqlite  # noqa: E402
from metering.core.db import make_engine  # noqa: E402
from metering.core.tables import events  # noqa: E402


def noop(provider: str, model: str, *, input_tokens: int = 0, output_tokens: int = 0, cache_read_tokens: int = 0) -> None:
    return None


def timed_loop(call: Any, calls: int) -> tuple[float, list[int]]:
    """Mean seconds per call over one tight loop, and per-call nanoseconds from a second loop."""
    start = time.perf_counter()
    for i in range(calls):
        call("openai", "gpt-4o", input_tokens=1000 + i % 7, output_tokens=200, cache_read_tokens=512)
    mean = (time.perf_counter() - start) / calls
    clock = time.perf_counter_ns
    samples = []
    for i in range(calls):
        t0 = clock()
        call("openai", "gpt-4o", input_tokens=1000 + i % 7, output_tokens=200, cache_read_tokens=512)
        samples.append(clock() - t0)
    return mean, samples


def scenario(label: str, url: str, key: str, calls: int, spool: Path, **options: Any) -> dict[str, Any]:
    client = TaskmeterClient(url, key, spool_dir=spool, batch_size=500, flush_interval=1.0, close_timeout=120, **options)
    base_mean, base_samples = timed_loop(noop, calls)
    with client.task(customer="bench", task_type="bench") as task:
        mean, samples = timed_loop(task.usage, calls)
    close_start = time.perf_counter()
    client.close()
    samples.sort()
    base_samples.sort()

    def pct(values: list[int], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] / 1000

    return {
        "scenario": label, "calls": 2 * calls, "baseline_us": base_mean * 1e6, "usage_us": mean * 1e6,
        "added_us": (mean - base_mean) * 1e6, "p50": pct(samples, 0.5) - pct(base_samples, 0.5),
        "p99": pct(samples, 0.99), "p999": pct(samples, 0.999), "max": samples[-1] / 1000,
        "median_all": statistics.median(samples) / 1000, "close_s": time.perf_counter() - close_start,
        "stats": client.stats,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and the bench to separate cores")
    args = parser.parse_args()
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    print(f"machine: {machine()}; " + ("server pinned to core 1, bench to core 0" if pin else "no pinning"))
    tmp = Path(tempfile.mkdtemp(prefix="tm-bench-client-"))
    results = []
    if pin:
        os.sched_setaffinity(0, {0})
    with serve_sqlite(tmp / "client.db", cpus={1} if pin else None) as (url, key):
        results.append(scenario("server up", url, key, args.calls, tmp / "spool-up"))
        # A queue that never fills: no event takes the spool path on the agent's thread.
        results.append(scenario("server up, big queue", url, key, args.calls, tmp / "spool-up", max_queue=10**7))
    engine = make_engine(f"sqlite:///{tmp / 'client.db'}")
    with engine.connect() as connection:
        arrived = connection.execute(select(func.count(), func.count(events.c.event_id.distinct()))).one()
    engine.dispose()
    expected = 2 * (2 * args.calls + 2)
    assert tuple(arrived) == (expected, expected), (arrived, expected)
    results.append(scenario("server down (spooled)", f"http://127.0.0.1:{free_port()}", "k", args.calls, tmp / "spool-down"))

    print(f"\n{args.calls:,} calls timed in one loop, then {args.calls:,} timed one by one (perf_counter_ns):")
    for r in results:
        print(f"  {r['scenario']:<22} baseline {r['baseline_us']:.3f} µs/call   task.usage {r['usage_us']:.2f} µs/call   "
              f"added {r['added_us']:.2f} µs   p50 added {r['p50']:.2f} µs   p99 {r['p99']:.2f} µs   "
              f"p99.9 {r['p999']:.1f} µs   max {r['max']:.0f} µs   close {r['close_s']:.2f} s")  # fmt: skip
        print(f"  {'':<22} {r['stats']}")
    print(f"  both server-up runs: {arrived[0]:,} rows stored, {arrived[1]:,} distinct ids (expected {expected:,})")


if __name__ == "__main__":
    main()
