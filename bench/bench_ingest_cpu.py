"""HTTP ingestion's server CPU per 1,000-event batch: a `taskmeter serve` of the checkout this runs
from (its working directory), a fresh database, one client posting 1,000-event batches.

    cd <a checkout of any commit> && .venv/bin/python <this file> [--events 100000] [--db sqlite|postgresql]

The figure is the server process's CPU time (user + system, from psutil, start-up excluded) per
batch, which a shared machine's neighbours disturb far less than the wall time (also printed).
It imports the checkout's modules by both their paths, before and after issue 16's move into
`metering.core`, so the same script compares commits from either side of it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import psutil

sys.path.insert(0, os.getcwd())

from bench.common import fresh_postgres, fresh_sqlite, synthetic_events  # noqa: E402
from bench.server import SECRET, free_port  # noqa: E402

try:
    from metering.core.db import unit_of_work
    from metering.core.tenants import create_api_key, create_tenant
except ImportError:  # a commit before issue 16's layout
    from metering.db import unit_of_work  # type: ignore[no-redef]
    from metering.tenants import create_api_key, create_tenant  # type: ignore[no-redef]

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tm-cpu-"))
    engine = fresh_postgres() if args.db == "postgresql" else fresh_sqlite(str(folder / "cpu.db"))
    if engine is None:
        raise SystemExit("PostgreSQL unavailable")
    url = engine.url.render_as_string(hide_password=False)
    with unit_of_work(engine) as session:
        tenant = create_tenant(session, "bench", now=NOW)
        key, _ = create_api_key(session, tenant, frozenset({"ingest"}), secret=SECRET.encode(), now=NOW)
    engine.dispose()
    env = {**os.environ, "TASKMETER_DATABASE_URL": url, "TASKMETER_SECRET_KEY": SECRET,
           "TASKMETER_SCHEDULER_ENABLED": "false", "TASKMETER_RATE_LIMIT_PER_MINUTE": "10000000"}  # fmt: skip
    port = free_port()
    command = [str(Path(sys.executable).with_name("taskmeter")), "serve", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        payload = synthetic_events(args.events, seed=11)
        process = psutil.Process(server.pid)
        before = process.cpu_times()
        headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            started = time.perf_counter()
            for i in range(0, len(payload), 1000):
                answer = client.post("/v1/events", content=orjson.dumps(payload[i : i + 1000]))
                assert answer.status_code == 200, answer.text
            elapsed = time.perf_counter() - started
        after = process.cpu_times()
    finally:
        server.terminate()
        server.wait(10)
    cpu = after.user + after.system - before.user - before.system
    print(f"{Path.cwd().name} {args.db}: server CPU {1000 * cpu / (len(payload) / 1000):.1f} ms per 1,000-event batch; "
          f"{len(payload) / elapsed:,.0f} events/s wall")  # fmt: skip


if __name__ == "__main__":
    main()
