"""A real `taskmeter serve` subprocess on a fresh database, with an ingest key, for HTTP benches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.common import fresh_sqlite
from metering.core.db import unit_of_work
from metering.core.tenants import create_api_key, create_tenant

SECRET = "bench-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_sqlite(path: Path, cpus: set[int] | None = None) -> Iterator[tuple[str, str]]:
    """(url, ingest key) of `taskmeter serve` (one uvicorn worker, no scheduler) on a new SQLite
    file; `cpus` pins the server to those cores (the bench then pins itself to the others)."""
    engine = fresh_sqlite(str(path))
    with unit_of_work(engine) as session:
        tenant = create_tenant(session, "bench", now=datetime.now(UTC))
        key, _ = create_api_key(session, tenant, frozenset({"ingest", "read"}), secret=SECRET.encode(), now=datetime.now(UTC))
    engine.dispose()
    port = free_port()
    env = {**os.environ, "TASKMETER_DATABASE_URL": f"sqlite:///{path}", "TASKMETER_SECRET_KEY": SECRET,
           "TASKMETER_SCHEDULER_ENABLED": "false"}  # fmt: skip
    exe = Path(sys.executable).with_name("taskmeter")
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    server = subprocess.Popen([str(exe), "serve", "--port", str(port), "--log-level", "warning"], env=env, preexec_fn=pin)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url, key
    finally:
        server.terminate()
        server.wait(10)
