"""Shared bench helpers: synthetic events, databases, timing."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, text

from metering.core.db import make_engine, upgrade_schema

POSTGRES_URL = os.environ.get("TASKMETER_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/taskmeter_bench")


def machine() -> str:
    return f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


_SPIN = "import time\nt = time.perf_counter()\ns = 0\nfor i in range(30_000_000): s += i\nprint(time.perf_counter() - t)"


def cpu_check() -> str:
    """How fast this machine's cores are right now: a fixed pure-Python loop in one process,
    then in two at once. On the shared VM the same loop took 1.45 s alone and 4.2-4.6 s a few
    minutes later, alone or in pairs, so an absolute time means little without this beside it."""
    def run(n: int) -> list[float]:
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return [float(proc.communicate()[0]) for proc in procs]

    alone, pair = run(1), run(2)
    return f"CPU check: a 30M-step Python loop {alone[0]:.2f} s alone, {max(pair):.2f} s with two at once"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    yield box
    box.append(time.perf_counter() - start)


def synthetic_events(n: int, *, seed: int = 7, tasks: int | None = None, models: int = 20) -> list[dict[str, Any]]:
    """n usage events over `tasks` tasks, as clients send them (JSON-ready dicts)."""
    rng = np.random.default_rng(seed)
    tasks = tasks or max(1, n // 10)
    base = datetime(2026, 10, 1, tzinfo=UTC)
    seconds = rng.integers(0, 30 * 86400, n)
    task_ids = rng.integers(0, tasks, n)
    model_ids = rng.integers(0, models, n)
    inputs = rng.integers(100, 50_000, n)
    cache = (inputs * rng.random(n) * 0.5).astype(np.int64)
    outputs = rng.integers(10, 4000, n)
    out = []
    for i in range(n):
        out.append({
            "id": f"b-{seed}-{i}",
            "type": "usage",
            "time": (base + timedelta(seconds=int(seconds[i]))).isoformat().replace("+00:00", "Z"),
            "customer": f"cust-{int(task_ids[i]) % 1000}",
            "task": f"task-{int(task_ids[i])}",
            "provider": "openai",
            "model": f"model-{int(model_ids[i])}",
            "input_tokens": int(inputs[i]),
            "output_tokens": int(outputs[i]),
            "cache_read_tokens": int(cache[i]),
        })  # fmt: skip
    return out


def fresh_sqlite(path: str) -> Engine:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    engine = make_engine(f"sqlite:///{path}")
    upgrade_schema(engine)
    return engine


def fresh_postgres() -> Engine | None:
    admin = make_engine(POSTGRES_URL.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    name = POSTGRES_URL.rsplit("/", 1)[1]
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        print(f"PostgreSQL skipped: {exc.__class__.__name__}: {exc}")
        return None
    finally:
        admin.dispose()
    engine = make_engine(POSTGRES_URL)
    upgrade_schema(engine)
    return engine
