"""The rollup at scale: 10 million usage events (~1 million tasks, 20 models, 1,000 customers).

    .venv/bin/python bench/bench_rollup.py [--events 10000000] [--db sqlite|postgresql|both] [--skip-api]
        [--executor local:2|tcp://host:8786] [--sqlite PATH] [--postgresql URL]

Measures, on each database:
- the full rollup from the database (a fresh subprocess, so its peak memory is its own), its
  partitions where `--executor` says (`TASKMETER_DASK_SCHEDULER`'s values; default in process);
- the in-memory step (price + summarize a 10M-row frame, in a fresh subprocess) against DuckDB computing the same
  per-task aggregation over the same frame, in the same process;
- an incremental rollup of 10,000 new events over the 10M history;
- GET /v1/customers/{id}/usage/current latency (p50/p99 over 500 requests) with 10M events stored.

The event store is built once per database (not timed) and reused by later runs; `--sqlite` and
`--postgresql` name another store than the default ones.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import POSTGRES_URL, cpu_check, machine  # noqa: E402
from metering.core.db import is_postgresql, is_sqlite, make_engine, unit_of_work, upgrade_schema, write_rows  # noqa: E402
from metering.core.event_columns import INSERT_COLUMNS  # noqa: E402
from metering.core.tables import events, tenants  # noqa: E402

NOW = datetime(2026, 11, 29, tzinfo=UTC)
BASE_US = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp() * 1_000_000)
MODELS = [
    ("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("openai", "gpt-4.1"), ("openai", "gpt-4.1-mini"),
    ("openai", "o3"), ("openai", "o4-mini"), ("anthropic", "claude-sonnet-4-20250514"),
    ("anthropic", "claude-3-5-haiku-latest"), ("anthropic", "claude-opus-4-1"), ("google", "gemini-2.5-pro"),
    ("google", "gemini-2.5-flash"), ("google", "gemini-2.0-flash"), ("openai", "gpt-5"), ("openai", "gpt-5-mini"),
    ("anthropic", "claude-3-7-sonnet-latest"), ("google", "gemini-2.5-flash-lite"), ("openai", "gpt-4o-2024-08-06"),
    ("mistral", "mistral-large-latest"), ("deepseek", "deepseek-chat"), ("acme-ai", "acme-large"),
]  # fmt: skip
SQLITE_PATH = Path(os.environ.get("TASKMETER_BENCH_DIR", "/tmp/tm-bench")) / "rollup.db"
PG_URL = POSTGRES_URL.rsplit("/", 1)[0] + "/taskmeter_bench_rollup"


def synthetic_chunk(rng: np.random.Generator, first_task: int, tasks: int, per_task: int, seq0: int) -> list[tuple]:
    """Tasks with a start, `per_task` usage events on one or two models, and an outcome."""
    n_usage = tasks * per_task
    task_ids = np.repeat(np.arange(first_task, first_task + tasks), per_task)
    start = BASE_US + rng.integers(0, 60 * 86400, tasks) * 1_000_000
    offsets = np.tile(np.arange(1, per_task + 1), tasks) * rng.integers(5, 60, n_usage) * 1_000_000
    model_of_task = rng.integers(0, len(MODELS), tasks)
    model = np.where(rng.random(n_usage) < 0.8, np.repeat(model_of_task, per_task), rng.integers(0, len(MODELS), n_usage))
    inputs = rng.integers(500, 60_000, n_usage)
    cache_read = (inputs * rng.random(n_usage) * 0.6).astype(np.int64)
    outputs = rng.integers(50, 4_000, n_usage)
    customer = task_ids % 1000
    rows: list[tuple] = []
    task_names = [f"task-{t}" for t in range(first_task, first_task + tasks)]
    for i in range(tasks):  # setup only, not timed
        t, c = task_names[i], f"cust-{(first_task + i) % 1000}"
        rows.append((1, f"{t}-s", "task.started", int(start[i]), c, t, "support_ticket" if i % 3 else "code_review", None, None, 0, 0, 0, 0, 0, None, None, None, "x", 0))
    for j in range(n_usage):
        i = j // per_task
        p, m = MODELS[model[j]]
        rows.append((1, f"{task_names[i]}-u{j % per_task}", "usage", int(start[i] + offsets[j]), f"cust-{customer[j]}",
                     task_names[i], None, p, m, int(inputs[j]), int(outputs[j]), int(cache_read[j]), 0, 0, None, None, None, "x", 0))
    outcome = rng.random(tasks)
    for i in range(tasks):
        kind = "task.completed" if outcome[i] < 0.85 else "task.failed" if outcome[i] < 0.97 else "task.cancelled"
        end = int(start[i] + (per_task + 2) * 60 * 1_000_000)
        rows.append((1, f"{task_names[i]}-e", kind, end, f"cust-{(first_task + i) % 1000}", task_names[i], None, None, None, 0, 0, 0, 0, 0, None, None, None, "x", 0))
    return [(*row, 0) for row in rows]  # cache_write_1h_tokens, last of INSERT_COLUMNS


def build_store(engine: Engine, usage_events: int) -> int:
    """Create the bench tenant and its events unless already there; returns the event count."""
    upgrade_schema(engine)
    with engine.connect() as connection:
        have = connection.execute(select(func.count()).select_from(events)).scalar_one()
    per_task = 10
    tasks = usage_events // per_task
    want = usage_events + 2 * tasks
    if have >= want:  # the incremental measurement adds 10,000 events per run
        return have
    print(f"building the event store ({want:,} events)...", flush=True)
    with engine.begin() as connection:
        for table in ("rollup_state", "task_usage", "task_usage_detail", "usage_daily", "tenant_prices", "events", "api_keys", "tenants"):
            connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - constant names, bench setup
        connection.execute(tenants.insert().values(id=1, name="bench", timezone="UTC", currency="USD", created_at=NOW))
    rng = np.random.default_rng(42)
    step = 50_000
    started = time.perf_counter()
    for first in range(0, tasks, step):
        rows = synthetic_chunk(rng, first, min(step, tasks - first), per_task, 0)
        with engine.begin() as connection:
            write_rows(connection, events, INSERT_COLUMNS, rows)
        print(f"  {first + step:,}/{tasks:,} tasks ({time.perf_counter() - started:.0f}s)", flush=True)
    return want


def run_child(url: str, what: str, executor: str | None = None) -> dict:
    """Run a measurement in a fresh interpreter; returns its JSON result (with peak RSS).
    `executor`: where the rollup's partitions run (`metering.rollup.executors.executor_for`)."""
    command = [sys.executable, __file__, "--child", what, "--url", url, *(["--executor", executor] if executor else [])]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(what: str, url: str, place: str | None = None) -> None:
    if what == "memory":
        print(json.dumps(in_memory(url)))
        return
    from metering.core.tenants import get_tenant
    from metering.rollup.executors import executor_for
    from metering.rollup.pipeline import rollup_tenant

    engine = make_engine(url)
    with engine.connect() as connection:
        tenant = get_tenant(connection, "bench")
    if what == "full":
        with unit_of_work(engine) as session:  # force a rebuild (a stale version alone makes a re-pricing)
            session.execute(text("UPDATE rollup_state SET price_version = 'stale', price_buckets = NULL"))
        if is_postgresql(engine):
            # The dead rows of the previous run's rebuild, as autovacuum would have removed them
            # (it is off on the bench server): 5 runs' worth made the rebuild 100 s → 128 s.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text("VACUUM task_usage, task_usage_detail, usage_daily"))
        started = time.perf_counter()
        with executor_for(place) as executor:  # a `local` cluster starts inside the timing
            result = rollup_tenant(engine, tenant, now=NOW, executor=executor)
        seconds = time.perf_counter() - started
        assert result.rebuilt and result.repriced is None
    elif what == "incremental":
        rng = np.random.default_rng(int(time.time()))
        first = 10**9 + int(rng.integers(0, 10**8))
        rows = synthetic_chunk(rng, first, 1000, 8, 0)  # 1,000 tasks: 8,000 usage + 2,000 lifecycle events
        rows = [(*r[:1], f"inc-{r[1]}", *r[2:]) for r in rows]
        with engine.begin() as connection:
            write_rows(connection, events, INSERT_COLUMNS, rows)
        started = time.perf_counter()
        with executor_for(place) as executor:
            result = rollup_tenant(engine, tenant, now=NOW, executor=executor)
        seconds = time.perf_counter() - started
    else:
        raise SystemExit(f"unknown child {what}")
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest worker's
    print(json.dumps({"seconds": seconds, "events": result.events_read, "tasks": result.tasks_updated, "peak_mb": own_peak_mb(),
                      "workers_peak_mb": workers_peak}))  # fmt: skip


def warm_cache(url: str) -> str:
    """Read the stored events once, so that the full rollup reads them from memory. This VM's
    kernel pages out file pages left idle for a few minutes (DAMON), so without it the same
    rollup took 24-77 s to read its events, depending on how long the store sat unused."""
    started = time.perf_counter()
    engine = make_engine(url)
    if is_sqlite(engine):
        size = 0
        with open(engine.url.database, "rb") as file:  # type: ignore[arg-type]
            while block := file.read(1 << 24):
                size += len(block)
    else:
        with engine.begin() as connection:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
            blocks = sum(
                connection.execute(text("SELECT pg_prewarm(CAST(:relation AS regclass), 'read')"), {"relation": relation}).scalar_one()
                for relation in ("events", "ix_events_tenant_seq")
            )
        size = blocks * 8192
    engine.dispose()
    return f"page cache warmed: {size / 1e9:.1f} GB read in {time.perf_counter() - started:.1f} s"


def settle(url: str) -> str:
    """Finish writing what the full rollup's rebuild left to write: PostgreSQL's checkpoint
    (after ~1 GB of WAL it spreads its writes over minutes, checkpoint_completion_target) or
    SQLite's WAL, then the kernel's dirty pages (this VM's disk writes ~50 MB/s)."""
    started = time.perf_counter()
    engine = make_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if is_postgresql(engine):
            connection.execute(text("CHECKPOINT"))
        else:
            connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()
    os.sync()
    return f"settled: checkpoint and sync took {time.perf_counter() - started:.1f} s"


def own_peak_mb() -> float:
    """This process's peak RSS. Not ru_maxrss: Linux carries it over from the parent through
    fork and exec, so a child started after the parent's 12M-row in-memory step reported the
    parent's ~9 GB."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


def in_memory(url: str) -> dict:
    """Price + summarize a 10M-row frame vs DuckDB's per-task aggregation over the same frame."""
    import duckdb

    from metering.costs.book import price_book, price_events
    from metering.rollup.stores import store_for
    from metering.rollup.summary import summarize

    engine = make_engine(url)
    with engine.connect() as connection:
        book, _ = price_book(connection, 1)
        upto = connection.execute(select(func.max(events.c.seq))).scalar_one()
    engine.dispose()  # closed before ADBC's SQLite opens the file (see `SqliteStore.read_events`)
    t0 = time.perf_counter()
    # The frame a 10M-event backlog is summarized from: read as the worker processes read it
    # (Arrow; on SQLite through ADBC's SQLite), so text columns are categorical with Arrow names.
    frame = pd.concat(list(store_for(engine).read_events(engine, 1, 0, upto, 20_000_000, own_process=True)), ignore_index=True)
    read_s = time.perf_counter() - t0
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    runs = []
    # Best of 3, each side: on this VM the first touch of freshly allocated memory is slow (the
    # same pricing took 4.9 s, then 2.1 s on the same frame), which would measure the machine.
    for _ in range(3):
        t0 = time.perf_counter()
        priced = price_events(frame.copy(), book, {})
        price_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = summarize(priced, "UTC")
        summarize_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        duck = con.execute(DUCKDB_TASKS).df()
        duck_s = time.perf_counter() - t0
        runs.append((price_s, summarize_s, duck_s))
    assert len(duck) == len(summary.tasks)
    check = summary.tasks.set_index("task").loc[duck["task"]]
    assert (check["cost_nanos"].to_numpy() == duck["cost_nanos"].to_numpy()).all()
    assert (check["status"].to_numpy() == duck["status"].str.removeprefix("task.").fillna("open").to_numpy()).all()
    price_s = min(r[0] for r in runs)
    summarize_s = min(r[1] for r in runs)
    duck_s = min(r[2] for r in runs)
    ours = price_s + summarize_s
    return {"rows": len(frame), "read_s": read_s, "price_s": price_s, "summarize_s": summarize_s, "ours_s": ours,
            "duckdb_s": duck_s, "ratio": ours / duck_s, "first_run": runs[0]}  # fmt: skip


DUCKDB_TASKS = """
    SELECT task,
           arg_min(customer, (time_us, seq)) AS customer,
           arg_max(task_type, (time_us, seq)) FILTER (WHERE task_type IS NOT NULL) AS task_type,
           arg_max(type, (time_us, seq)) FILTER (WHERE type IN ('task.completed','task.failed','task.cancelled')) AS status,
           min(time_us) FILTER (WHERE type = 'task.started') AS started_us,
           min(time_us) AS first_us, max(time_us) AS last_us, count(*) AS events,
           count(*) FILTER (WHERE type = 'usage') AS usage_events,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(cache_read_tokens) AS cache_read_tokens, sum(cost_nanos) AS cost_nanos, sum(cost_rem) AS cost_rem
    FROM priced GROUP BY task
"""
"""DuckDB's per-task aggregation of the priced frame (`priced`, a local of `in_memory`)."""


def api_latency(url: str, requests: int = 500) -> dict:
    import socket

    import httpx

    from metering.core.tenants import create_api_key, get_tenant

    engine = make_engine(url)
    with unit_of_work(engine) as session:
        key, _ = create_api_key(session, get_tenant(session, "bench"), frozenset({"read"}), secret=b"bench-secret", now=NOW)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "TASKMETER_DATABASE_URL": url, "TASKMETER_SECRET_KEY": "bench-secret", "TASKMETER_SCHEDULER_ENABLED": "false"}
    server = subprocess.Popen([str(Path(sys.executable).with_name("taskmeter")), "serve", "--port", str(port), "--log-level", "warning"], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        latencies = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            for i in range(requests + 20):
                t0 = time.perf_counter()
                response = client.get(f"/v1/customers/cust-{i % 1000}/usage/current", params={"at": "2026-11-15T00:00:00Z"})
                elapsed = time.perf_counter() - t0
                response.raise_for_status()
                if i >= 20:
                    latencies.append(elapsed * 1000)
        return {"requests": requests, "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--db", default="both", choices=["sqlite", "postgresql", "both"])
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--skip-full", action="store_true", help="reuse the stored rollup (no full rebuild)")
    parser.add_argument("--executor", help="where the rollup's partitions run: local, local:N or a scheduler's address (default: in process)")
    parser.add_argument("--sqlite", type=Path, default=SQLITE_PATH, help="the SQLite store's file")
    parser.add_argument("--postgresql", default=PG_URL, help="the PostgreSQL store's URL (its database is created if missing)")
    parser.add_argument("--child")
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.executor)
        return
    print(f"machine: {machine()}; date {datetime.now(UTC):%Y-%m-%d}; usage events {args.events:,}", flush=True)
    urls = []
    if args.db in ("sqlite", "both"):
        args.sqlite.parent.mkdir(parents=True, exist_ok=True)
        urls.append(("sqlite", f"sqlite:///{args.sqlite}"))
    if args.db in ("postgresql", "both"):
        name = args.postgresql.rsplit("/", 1)[1]
        admin = make_engine(args.postgresql.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}).first()
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        urls.append(("postgresql", args.postgresql))
    for label, url in urls:
        engine = make_engine(url)
        stored = build_store(engine, args.events)
        engine.dispose()
        print(f"\n[{label}] {stored:,} events stored", flush=True)
        if not args.skip_full:
            print(f"  {cpu_check()}; {warm_cache(url)}", flush=True)
            full = run_child(url, "full", args.executor)
            print(f"  full rollup: {full['seconds']:.1f} s for {full['events']:,} events, {full['tasks']:,} tasks, peak RSS {full['peak_mb']:,.0f} MB "
                  f"(largest worker process {full['workers_peak_mb']:,.0f} MB)", flush=True)
        memory = run_child(url, "memory")  # a fresh interpreter, as the rollup's workers are
        print(f"  in-memory step on {memory['rows']:,} rows: price {memory['price_s']:.2f} s + summarize {memory['summarize_s']:.2f} s = "
              f"{memory['ours_s']:.2f} s; DuckDB per-task aggregation {memory['duckdb_s']:.2f} s; ratio {memory['ratio']:.2f}x "
              f"(best of 3 each; first run: price {memory['first_run'][0]:.2f} s + summarize {memory['first_run'][1]:.2f} s, "
              f"DuckDB {memory['first_run'][2]:.2f} s; read from the database: {memory['read_s']:.1f} s)", flush=True)
        incremental = run_child(url, "incremental", args.executor)
        print(f"  incremental rollup: {incremental['seconds']:.3f} s for {incremental['events']:,} new events, {incremental['tasks']:,} tasks", flush=True)
        if not args.skip_api:
            for when in ("right after the rollups, while their writes are flushed to disk", "settled"):
                if when == "settled":
                    print(f"  {settle(url)}", flush=True)
                latency = api_latency(url)
                print(f"  GET /v1/customers/{{id}}/usage/current ({when}): p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms "
                      f"over {latency['requests']} requests", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
