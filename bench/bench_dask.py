"""Partition work on a Dask cluster vs in process, and the Parquet archive vs the database.

    .venv/bin/python bench/bench_dask.py [--rows 12000000] [--partitions 8] [--archive-events 2000000] [--db sqlite|postgresql|both]
    .venv/bin/python bench/bench_dask.py --full-rollup URL [--full-runs 2] [--with-local] [--pool-python PATH --pool-bench PATH]

`--full-rollup URL`: the full rollup (a rebuild) of bench_rollup's store at URL (a SQLite file or
a PostgreSQL database, built by `bench/bench_rollup.py`; it is rewritten by each run, so give it a
copy), each run in a fresh process after the events are read into the page cache, alternating:
in process (`TASKMETER_DASK_SCHEDULER` unset), through a local Dask cluster (a `dask scheduler`
and two `dask worker` processes, one thread each, on loopback, started by the bench before the
runs; `--one-worker`: also a cluster of one worker, the in-process parallelism), and with
`--with-local` through `local:2` (a `distributed.LocalCluster` started by the
run: its start-up is in the time). `--pool-python/--pool-bench`: also the rollup of another
checkout (an interpreter and its `bench_rollup.py`, e.g. one with the former worker-process pool)
on the same store, as a baseline of the same run. Every run's rollup tables are compared with the
first's (row counts and integer column sums per table). The clusters' workers import the rollup's
modules before the runs, as a running cluster has them.

Otherwise it measures, in one run:
- `summarize` over a synthetic priced events frame of `--rows` rows, split by task into
  `--partitions` partitions, each partition generated (seeded) and summarized by the function
  that runs it, as a rollup partition is read by its worker: in process one after the other, on
  a local Dask cluster (a `dask scheduler` and two `dask worker` processes, one thread each)
  through `metering.rollup.executors.DaskExecutor`, and on one worker of that cluster (the same parallelism as
  in process: the cluster's own overhead). The summaries come back to the caller every time.
- `taskmeter archive`'s work (`pricing.archive.archive_tenant`) over a store of
  `--archive-events` events in closed months: events/s written; reading them back
  (`metering.events.archive.read_archived_events`): events/s; and re-rating's read of one month from
  Parquet vs from the database with the rollup's reader.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_rollup import MODELS, build_store  # noqa: E402
from bench.common import POSTGRES_URL, cpu_check, machine  # noqa: E402
from metering.core.db import make_engine, read_frame, upgrade_schema  # noqa: E402
from metering.core.event_columns import EVENT_COLUMNS, TEXT_COLUMNS  # noqa: E402
from metering.core.periods import parse_month  # noqa: E402
from metering.core.tables import events, rollup_state  # noqa: E402
from metering.events.ingest import to_us  # noqa: E402
from metering.rollup.executors import DaskExecutor, InProcess  # noqa: E402
from metering.rollup.summary import Summary, summarize  # noqa: E402
from pricing.tables import billing_periods  # noqa: E402

NOW = datetime(2027, 1, 15, tzinfo=UTC)
BASE_US = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp() * 1_000_000)
KINDS = np.array(["usage", "task.started", "task.completed", "task.failed"], dtype=object)
KIND_P = [0.82, 0.08, 0.08, 0.02]
ROWS_PER_TASK = 12


def partition_events(k: int, parts: int, rows: int) -> pd.DataFrame:
    """Partition `k` of `parts`: `rows` priced events of the tasks whose number is k modulo
    `parts` (so a task lives in one partition), typed as the rollup's reader gives them."""
    rng = np.random.default_rng([19, k])
    tasks = max(1, rows // ROWS_PER_TASK)
    # As agents work: a task's events within minutes of its start, mostly on one model.
    task_codes = np.sort(rng.integers(0, tasks, rows))
    task_names = np.array([f"task-{k + parts * t}" for t in range(tasks)], dtype=object)
    kind = rng.choice(len(KINDS), rows, p=KIND_P)
    usage = kind == 0
    task_model = rng.integers(0, len(MODELS), tasks)
    pair = np.where(rng.random(rows) < 0.8, task_model[task_codes], rng.integers(0, len(MODELS), rows))
    task_start = BASE_US + rng.integers(0, 60 * 86_400, tasks) * 1_000_000
    provider_names = sorted({p for p, _ in MODELS})
    provider_code = np.array([provider_names.index(p) for p, _ in MODELS])[pair]
    tokens = {name: rng.integers(0, 40_000, rows) * usage for name in ("input_tokens", "output_tokens")}
    tokens["cache_read_tokens"] = tokens["input_tokens"] // 3
    tokens["cache_write_tokens"] = np.zeros(rows, dtype=np.int64)
    tokens["reasoning_tokens"] = tokens["output_tokens"] // 4

    def categorical(
        codes: np.ndarray, names: list[str] | np.ndarray, present: np.ndarray | None = None
    ) -> pd.Categorical:
        codes = codes if present is None else np.where(present, codes, -1)
        return pd.Categorical.from_codes(codes, categories=pd.Index(names, dtype=object))

    return pd.DataFrame(
        {
            "seq": k + parts * np.arange(1, rows + 1, dtype=np.int64),
            "time_us": task_start[task_codes] + rng.integers(0, 600, rows) * 1_000_000,
            "type": categorical(kind, KINDS),
            "customer": categorical(task_codes % 1000, [f"cust-{c}" for c in range(1000)]),
            "task": categorical(task_codes, task_names),
            "task_type": categorical(rng.integers(0, 2, rows), ["support_ticket", "code_review"], kind == 1),
            "provider": categorical(provider_code, provider_names, usage),
            "model": categorical(pair, [m for _, m in MODELS], usage),
            **tokens,
            "cost_nanos": rng.integers(0, 10**7, rows) * usage,
            "cost_rem": rng.integers(0, 10**6, rows) * usage,
            "priced": np.ones(rows, dtype=bool),
        }
    )


def summarize_partition(spec: tuple[int, int, int]) -> tuple[Summary, float]:
    """Generate partition `spec` = (k, parts, rows) and summarize it; with the summarize time."""
    frame = partition_events(*spec)
    started = time.perf_counter()
    summary = summarize(frame, "UTC")
    return summary, time.perf_counter() - started


def same(a: list[tuple[Summary, float]], b: list[tuple[Summary, float]]) -> bool:
    return all(
        getattr(x, name).equals(getattr(y, name))
        for (x, _), (y, _) in zip(a, b, strict=True)
        for name in ("tasks", "detail", "daily")
    )


def measure_dask(rows: int, parts: int) -> dict[str, Any]:
    from tests.support.dask_cluster import LocalCluster

    specs = [(k, parts, rows // parts) for k in range(parts)]
    results: dict[str, Any] = {"rows": rows, "partitions": parts}
    folder = Path(tempfile.mkdtemp(prefix="tm-dask-"))
    try:
        with LocalCluster(folder, workers=2) as cluster, DaskExecutor(cluster.address, retries=1) as executor:
            executor.map(summarize_partition, [(0, parts, 1000)])  # warm both sides' imports
            InProcess().map(summarize_partition, [(0, parts, 1000)])
            started = time.perf_counter()
            local = InProcess().map(summarize_partition, specs)
            results["in_process_s"] = time.perf_counter() - started
            results["summarize_s"] = sum(s for _, s in local)
            started = time.perf_counter()
            remote = executor.map(summarize_partition, specs)
            results["dask_2_workers_s"] = time.perf_counter() - started
            one = next(iter(executor.client.scheduler_info()["workers"]))
            started = time.perf_counter()
            futures = executor.client.map(summarize_partition, specs, pure=False, workers=[one])
            pinned = executor.client.gather(futures)
            del futures
            results["dask_1_worker_s"] = time.perf_counter() - started
            results["identical"] = same(local, remote) and same(local, pinned)
            results["tasks"] = sum(len(s.tasks) for s, _ in local)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def table_digests(url: str) -> dict[str, tuple[Any, ...]]:
    """A fingerprint of each rollup table: its row count and the sum of each integer column
    modulo a prime (no overflow; cheap on 12M events' tables; the tests compare every row)."""
    from sqlalchemy import Integer, func

    from metering.rollup.stores.common import ROLLUP_TABLES

    engine = make_engine(url)
    digests = {}
    try:
        with engine.connect() as connection:
            for table in ROLLUP_TABLES:
                sums = [func.sum(column % 1_000_003) for column in table.columns if isinstance(column.type, Integer) and not column.name.endswith("seq")]
                digests[table.name] = tuple(connection.execute(select(func.count(), *sums).select_from(table)).one())
    finally:
        engine.dispose()
    return digests


def warm_workers(address: str) -> float:
    """Import the rollup's modules on every worker of the cluster (a running cluster has them
    after its first task); returns the seconds it took."""
    started = time.perf_counter()
    with DaskExecutor(address) as executor:
        executor.client.run(_import_rollup)
    return time.perf_counter() - started


def _import_rollup() -> None:
    import adbc_driver_sqlite.dbapi  # noqa: F401

    import metering.rollup.pipeline  # noqa: F401
    import metering.rollup.stores.postgresql  # noqa: F401
    import metering.rollup.stores.sqlite  # noqa: F401


def measure_full_rollup(url: str, runs: int, with_local: bool, one_worker: bool, pool: tuple[str, str] | None) -> None:
    """The full rollup of the store at `url`: in process vs a local Dask cluster (and `local:2`,
    and another checkout's rollup), alternating, each in a fresh process; prints every run."""
    from bench.bench_rollup import run_child, warm_cache
    from tests.support.dask_cluster import LocalCluster

    def other_checkout(url: str) -> dict[str, Any]:
        python, script = pool  # type: ignore[misc]
        out = subprocess.run([python, script, "--child", "full", "--url", url], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    folder = Path(tempfile.mkdtemp(prefix="tm-dask-"))
    reference: dict[str, tuple[Any, ...]] | None = None
    times: dict[str, list[float]] = {}
    try:
        with LocalCluster(folder / "two", workers=2) as cluster, LocalCluster(folder / "one", workers=1) if one_worker else nullcontext() as single:  # fmt: skip
            places: list[tuple[str, Any]] = [("in process", lambda: run_child(url, "full")),
                                             ("Dask cluster, 2 workers", lambda: run_child(url, "full", cluster.address))]  # fmt: skip
            if single is not None:
                places.append(("Dask cluster, 1 worker", lambda: run_child(url, "full", single.address)))
            if with_local:
                places.append(("local:2 (LocalCluster started by the run)", lambda: run_child(url, "full", "local:2")))
            for running in (cluster, single):
                if running is not None:
                    print(f"  {len(running.worker_processes)}-worker cluster's workers warmed (the rollup's imports) in {warm_workers(running.address):.1f} s", flush=True)
            if pool is not None:
                places.append(("other checkout", lambda: other_checkout(url)))
            for number in range(runs):
                for label, run in places:
                    print(f"  run {number + 1}, {label}: {cpu_check()}; {warm_cache(url)}", flush=True)
                    result = run()
                    print(f"    full rollup {result['seconds']:.1f} s", flush=True)
                    digests = table_digests(url)
                    reference = reference or digests
                    times.setdefault(label, []).append(result["seconds"])
                    print(f"    full rollup {result['seconds']:.1f} s, {result['events']:,} events, {result['tasks']:,} tasks, "
                          f"peak RSS {result['peak_mb']:,.0f} MB; tables identical to the first run's: {digests == reference}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base = min(times["in process"])
    for label, seconds in times.items():
        print(f"  {label}: best {min(seconds):.1f} s of {', '.join(f'{s:.1f}' for s in seconds)}; ratio to in process {min(seconds) / base:.2f}", flush=True)


def prepare_archive_store(engine: Engine, usage_events: int) -> int:
    """The bench tenant's events (bench_rollup's store) with every month closed and rolled up."""
    upgrade_schema(engine)
    with (
        engine.begin() as connection
    ):  # build_store may start the store afresh: nothing may point at its tenant
        for table in ("archived_months", "billing_periods", "rollup_state"):
            connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - constant names, bench setup
    count = build_store(engine, usage_events)
    with engine.begin() as connection:
        newest = connection.execute(select(events.c.seq).order_by(events.c.seq.desc()).limit(1)).scalar_one()
        connection.execute(
            insert(rollup_state).values(
                tenant_id=1, watermark_seq=newest, price_version="bench", updated_at=NOW
            )
        )
        for month in ("2026-10", "2026-11", "2026-12"):
            connection.execute(
                insert(billing_periods).values(
                    tenant_id=1, period=month, closed_at=NOW, watermark_seq=newest, price_version="bench", plans_as_of=0,
                    assignments_as_of=0, reconciled_seq=newest, reconciled_price_version="bench",
                )
            )  # fmt: skip
    return count


def measure_archive(url: str, usage_events: int) -> dict[str, Any]:
    from metering.core.tenants import Tenant
    from metering.events.archive import read_archived_events
    from pricing.archive import archive_tenant

    engine = make_engine(url)
    results: dict[str, Any] = {"db": engine.dialect.name}
    try:
        results["events"] = prepare_archive_store(engine, usage_events)
        tenant = Tenant(id=1, name="bench", timezone="UTC", currency="USD")
        folder = Path(tempfile.mkdtemp(prefix="tm-archive-"))
        try:
            started = time.perf_counter()
            months = archive_tenant(
                engine, tenant, before=parse_month("2027-01", "UTC"), url=str(folder), drop=False, now=NOW
            )
            results["write_s"] = time.perf_counter() - started
            results["archived"] = sum(m.rows for m in months)
            results["parquet_mb"] = sum(f.stat().st_size for f in folder.rglob("*.parquet")) / 1e6
            labels = [m.month for m in months]
            started = time.perf_counter()
            everything = read_archived_events(str(folder), 1, labels)
            results["read_s"] = time.perf_counter() - started
            assert len(everything) == results["archived"]
            month = max(labels, key=lambda label: next(m.rows for m in months if m.month == label))
            results["month"] = month
            started = time.perf_counter()
            from_parquet = read_archived_events(str(folder), 1, [month])
            results["month_parquet_s"] = time.perf_counter() - started
            started = time.perf_counter()
            from_database = read_month_from_database(engine, month)
            results["month_database_s"] = time.perf_counter() - started
            results["month_events"] = len(from_parquet)
            assert len(from_database) == len(from_parquet)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        engine.dispose()
    return results


def read_month_from_database(engine: Engine, month: str) -> pd.DataFrame:
    """A month's events with the rollup's reader (ADBC on PostgreSQL, the driver on SQLite)."""
    period = parse_month(month, "UTC")
    query = (
        select(*[events.c[name] for name in EVENT_COLUMNS])
        .where(
            events.c.tenant_id == 1,
            events.c.time_us >= to_us(period.start),
            events.c.time_us < to_us(period.end),
        )
        .order_by(events.c.seq)
    )
    with engine.connect() as connection:
        return read_frame(connection, query, EVENT_COLUMNS, texts=TEXT_COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=12_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--archive-events",
        type=int,
        default=2_000_000,
        help="usage events in the archive store (plus 2 per task)",
    )
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--skip-archive", action="store_true")
    parser.add_argument("--full-rollup", metavar="URL", help="measure the full rollup of this store (only that)")
    parser.add_argument("--full-runs", type=int, default=2)
    parser.add_argument("--with-local", action="store_true", help="also through local:2")
    parser.add_argument("--one-worker", action="store_true", help="also through a cluster of one worker")
    parser.add_argument("--pool-python", help="another checkout's interpreter, for a baseline")
    parser.add_argument("--pool-bench", help="that checkout's bench/bench_rollup.py")
    args = parser.parse_args()
    print(machine(), flush=True)
    if args.full_rollup:
        pool = (args.pool_python, args.pool_bench) if args.pool_python and args.pool_bench else None
        measure_full_rollup(args.full_rollup, args.full_runs, args.with_local, args.one_worker, pool)
        return
    print(cpu_check(), flush=True)
    if not args.skip_dask:
        d = measure_dask(args.rows, args.partitions)
        print(
            f"summarize {d['rows']:,} rows ({d['tasks']:,} tasks) in {d['partitions']} partitions: in process {d['in_process_s']:.1f} s "
            f"(summarize alone {d['summarize_s']:.1f} s); Dask 1 worker {d['dask_1_worker_s']:.1f} s "
            f"(overhead {d['dask_1_worker_s'] / d['in_process_s'] - 1:+.1%}); Dask 2 workers {d['dask_2_workers_s']:.1f} s "
            f"(ratio {d['dask_2_workers_s'] / d['in_process_s']:.2f}); identical: {d['identical']}",
            flush=True,
        )
    if not args.skip_archive:
        urls = {
            "sqlite": "sqlite:////tmp/tm-bench/archive.db",
            "postgresql": POSTGRES_URL.rsplit("/", 1)[0] + "/taskmeter_bench_archive",
        }
        for name in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
            if name == "sqlite":
                Path("/tmp/tm-bench").mkdir(exist_ok=True)
            else:
                ensure_database(urls[name])
            a = measure_archive(urls[name], args.archive_events)
            print(
                f"archive on {a['db']}: {a['archived']:,} events written in {a['write_s']:.1f} s ({a['archived'] / a['write_s']:,.0f} events/s, "
                f"{a['parquet_mb']:.0f} MB Parquet), read back in {a['read_s']:.1f} s ({a['archived'] / a['read_s']:,.0f} events/s); "
                f"month {a['month']} ({a['month_events']:,} events) for re-rating: Parquet {a['month_parquet_s']:.2f} s, "
                f"database {a['month_database_s']:.2f} s",
                flush=True,
            )


def ensure_database(url: str) -> None:
    admin = make_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    name = url.rsplit("/", 1)[1]
    with admin.connect() as connection:
        if (
            connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            is None
        ):
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


if __name__ == "__main__":
    main()
