"""Load with faults: many concurrent clients on loopback against a real `taskmeter serve` (its
scheduler rolling up every half second) for a fixed time, then proof that nothing was lost,
doubled or mispriced.

The clients (`bench/load_clients.py`, `bench/load_readers.py`) send overlapping batches, replays of acknowledged batches,
events that conflict with stored ones, invalid events, and requests whose answers they never
read; readers hit the usage API, a customer's running month and draft invoice, the month's CSV
and the dashboard; with `--kill-every`, the server is killed with SIGKILL and started again.
Afterwards:

1. the stored events are exactly the distinct ids sent, each with its original content, and
   every answer accounted for its whole batch (see `Ingester.check_answer`);
2. the scheduler's rollup catches up, per-task tokens, event counts and status equal a
   recomputation from the events sent, and the incremental tables equal a full rebuild;
3. `taskmeter close` bills the month: one invoice per customer, numbers unique, every total the
   sum of its lines and equal to the draft computed before the close;
4. the server logged no traceback, and nothing answered 500.

    .venv/bin/python bench/load_faults.py --seconds 60 [--db sqlite|postgresql] [--clients 8]
        [--readers 2] [--kill-every 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, select, text  # noqa: E402

from bench.load_clients import EVENTS_PER_TASK, EventPool, Ingester, Recorder, Shared  # noqa: E402
from bench.load_readers import Killer, Reader  # noqa: E402
from metering.core.db import make_engine, unit_of_work, upgrade_schema  # noqa: E402
from metering.core.periods import Period, period_of  # noqa: E402
from metering.core.tables import events, task_usage  # noqa: E402
from metering.core.tenants import Tenant, create_api_key, create_tenant  # noqa: E402
from pricing.service import load_config  # noqa: E402
from tests.support import integrity  # noqa: E402
from tests.support.processes import ServeProcess, run_cli, taskmeter_env  # noqa: E402

TENANT = "load"
SECRET = "load-faults-secret"
PLANS = """\
prices:
  - {provider: acme-ai, model: acme-large, input: "3.00", output: "15.00", cache_read: "0.30", cache_write: "3.75"}
plans:
  - {id: tokens, type: per_token, rates: {input: "6.00", output: "30.00", cache_read: "0.60", cache_write: "7.50"}}
  - {id: tokens-plus, type: per_token, markup: "0.40", minimum: "25.00"}
  - {id: jobs, type: per_job, prices: {default: "0.50", support_ticket: "1.20"}, failed: "0.05", platform_fee: "9.90"}
  - id: jobs-tiered
    type: per_job
    tiers:
      mode: graduated
      steps: [{up_to: 20, price: "1.00"}, {up_to: 100, price: "0.80"}, {up_to: null, price: "0.60"}]
customers:
"""
PLAN_IDS = ("tokens", "tokens-plus", "jobs", "jobs-tiered")


@dataclass
class LoadOptions:
    seconds: float = 60.0
    clients: int = 8
    readers: int = 2
    batch: int = 200
    overlap: int = 40  # events each window shares with the one before it
    replay_rate: float = 0.15
    invalid_rate: float = 0.05
    conflict_rate: float = 0.05
    abort_rate: float = 0.03
    kill_every: float | None = None
    customers: int = 24
    rollup_interval: float = 0.5


@dataclass
class LoadReport:
    database: str
    options: dict[str, Any]
    elapsed: float = 0.0
    distinct_ids_sent: int = 0
    events_stored: int = 0
    tasks: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    rollup_catch_up_s: float | None = None
    rebuild_s: float = 0.0
    close: dict[str, Any] = field(default_factory=dict)
    server_starts: int = 0
    downtime_s: float = 0.0  # time the server was down between a SIGKILL and its restart
    problems: list[str] = field(default_factory=list)


def setup_tenant(engine: Engine, customers: int, *, secret: str, now: datetime) -> tuple[Tenant, str]:
    """The load's tenant with an all-scopes key, its prices, the four plans, and its customers
    spread over them."""
    config = PLANS + "".join(
        f"  - {{id: cust-{n:03d}, plan: {PLAN_IDS[n % len(PLAN_IDS)]}, compare_with: [tokens]}}\n" for n in range(customers)
    )
    with unit_of_work(engine) as session:
        tenant = create_tenant(session, TENANT, now=now)
        key, _ = create_api_key(session, tenant, frozenset({"ingest", "read", "admin"}), secret=secret.encode(), now=now)
        load_config(session, tenant, config, now=now)
    return tenant, key


def run_load(database_url: str, workdir: Path, options: LoadOptions, *, secret: str = SECRET) -> LoadReport:
    """Set up the tenant, run the load against a `taskmeter serve` subprocess, check everything."""
    now = datetime.now(UTC)
    month = period_of(now, "UTC").previous()
    engine = make_engine(database_url)
    report = LoadReport(database=engine.dialect.name, options=asdict(options))
    try:
        tenant, key = setup_tenant(engine, options.customers, secret=secret, now=now)
        env = taskmeter_env(
            database_url, secret, scheduler_enabled=True, rollup_interval_seconds=options.rollup_interval,
            close_grace_seconds=100 * 86400, close_check_seconds=3600, reports_dir=workdir / "reports",
        )  # fmt: skip
        server = ServeProcess(env, workdir / "serve.log")
        recorder = Recorder()
        pool = EventPool(month, options.customers)
        shared = Shared(options.batch, options.overlap)
        with server:
            _drive(server, key, pool, shared, recorder, options, report)
            _settle_and_close(engine, tenant, month, env, server, report)
        report.server_starts = server.starts
        _check_events(engine, tenant, pool, shared, report)
        _check_tasks(engine, tenant, pool, shared, report)
        _check_rebuild(engine, tenant, report)
        log = server.log_text()
        if "Traceback" in log or "unhandled error" in log:
            report.problems.append(f"the server logged a traceback: {log[log.find('Traceback') - 500:][:3000]}")
        report.counts = dict(recorder.counts)
        report.statuses = {name: dict(counter) for name, counter in recorder.statuses.items()}
        report.latency_ms = {name: _percentiles(values) for name, values in sorted(recorder.latencies.items())}
        report.problems = recorder.problems + report.problems
        if any("500" in counter for counter in report.statuses.values()):
            report.problems.append(f"answers with status 500: {report.statuses}")
        return report
    finally:
        engine.dispose()


def _drive(server: ServeProcess, key: str, pool: EventPool, shared: Shared, recorder: Recorder, options: LoadOptions,
           report: LoadReport) -> None:  # fmt: skip
    stop = threading.Event()
    faults = dict(replay_rate=options.replay_rate, invalid_rate=options.invalid_rate,
                  conflict_rate=options.conflict_rate, abort_rate=options.abort_rate)  # fmt: skip
    ingesters = [Ingester(n, server.url, key, pool, shared, recorder, stop, **faults) for n in range(options.clients)]
    readers = [Reader(n, server.url, key, pool.month, options.customers, recorder, stop) for n in range(options.readers)]
    killer = Killer(server, options.kill_every, recorder, stop) if options.kill_every else None
    threads = [*ingesters, *readers, *([killer] if killer else [])]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(options.seconds)
    stop.set()
    for thread in threads:
        thread.join()
    report.elapsed = time.perf_counter() - started
    report.downtime_s = round(killer.downtime, 1) if killer else 0.0
    if not server.alive:
        server.start()
    report.distinct_ids_sent = len(shared.sent)
    report.throughput = {
        "distinct_events_per_s": round(len(shared.sent) / report.elapsed),
        "events_posted_per_s": round(recorder.counts["events_in_batches"] / report.elapsed),
        "ingest_requests_per_s": round(recorder.counts["batches"] / report.elapsed, 1),
        "reads_answered_per_s": round(
            sum(n for name, c in recorder.statuses.items() if name.startswith("GET") for status, n in c.items() if status.isdigit())
            / report.elapsed, 1
        ),
    }


def _settle_and_close(engine: Engine, tenant: Tenant, month: Period, env: dict[str, str], server: ServeProcess,
                      report: LoadReport) -> None:  # fmt: skip
    """Wait for the scheduler's rollup to reach the newest event, then close the month with the
    CLI while the server (and its scheduler) keeps running."""
    started, newest = time.monotonic(), integrity.newest_seq(engine, tenant.id)
    while integrity.watermark(engine, tenant.id) < newest:
        if time.monotonic() - started > 120:
            report.problems.append(f"the scheduler's rollup did not reach seq {newest} within 120 s")
            break
        time.sleep(0.1)
    else:
        report.rollup_catch_up_s = round(time.monotonic() - started, 2)
    expected = integrity.draft_totals(engine, tenant, month)
    began = time.perf_counter()
    closed = run_cli(["close", "--tenant", tenant.name, "--month", month.label], env)
    report.close = {"seconds": round(time.perf_counter() - began, 2), "exit": closed.returncode}
    if closed.returncode != 0:
        report.problems.append(f"taskmeter close failed: {closed.stderr[-2000:]}")
        return
    summary = json.loads(closed.stdout)
    report.close.update(invoices=len(summary["invoices"]), totals={k: str(v) for k, v in summary["totals"].items()})
    report.problems += integrity.invoice_problems(engine, tenant.id, month.label, expected)
    if not server.alive:
        report.problems.append("the server died during the close")


def _check_events(engine: Engine, tenant: Tenant, pool: EventPool, shared: Shared, report: LoadReport) -> None:
    """Stored = the distinct ids sent, each with the content first sent (never a conflicting one)."""
    query = select(events.c.event_id, events.c.type, events.c.output_tokens, events.c.input_tokens).where(
        events.c.tenant_id == tenant.id
    )
    with engine.connect() as connection:
        stored = {row.event_id: row for row in connection.execute(query)}
    report.events_stored = len(stored)
    sent = {pool.event(k)["id"]: k for k in shared.sent}
    if set(stored) != set(sent):
        missing, extra = sorted(set(sent) - set(stored)), sorted(set(stored) - set(sent))
        report.problems.append(f"stored events differ from those sent: {len(missing)} missing {missing[:5]}, "
                               f"{len(extra)} unexpected {extra[:5]}")  # fmt: skip
    for event_id, k in sent.items():
        row, want = stored.get(event_id), pool.event(k)
        if row is not None and (row.type, row.output_tokens, row.input_tokens) != (
            want["type"], want.get("output_tokens", 0), want.get("input_tokens", 0)
        ):
            report.problems.append(f"{event_id} stored with other content than first sent: {tuple(row)}")
            break


def _check_tasks(engine: Engine, tenant: Tenant, pool: EventPool, shared: Shared, report: LoadReport) -> None:
    """Per-task figures of the incremental rollup against a recomputation from the events sent."""
    want: dict[str, dict[str, Any]] = {}
    for k in sorted(shared.sent):
        event = pool.event(k)
        task = want.setdefault(event["task"], {"customer": event["customer"], "task_type": None, "status": "open", "events": 0,
                                               "usage_events": 0, "input_tokens": 0, "output_tokens": 0,
                                               "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0})  # fmt: skip
        task["events"] += 1
        if event["type"] == "usage":
            task["usage_events"] += 1
            for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
                task[name] += event[name]
        elif event["type"] == "task.started":
            task["task_type"] = event.get("task_type")
        else:
            task["status"] = event["type"].removeprefix("task.")
    columns = ["task", *next(iter(want.values())).keys(), "unpriced_events"] if want else ["task"]
    with engine.connect() as connection:
        rows = connection.execute(select(*[task_usage.c[c] for c in columns]).where(task_usage.c.tenant_id == tenant.id)).all()
    got = {row.task: {c: getattr(row, c) for c in columns[1:-1]} for row in rows}
    report.tasks = len(got)
    if set(got) != set(want):
        report.problems.append(f"tasks rolled up {len(got)} != tasks sent {len(want)}")
    wrong = [name for name, figures in want.items() if got.get(name) not in (None, figures)]
    if wrong:
        report.problems.append(f"{len(wrong)} task(s) differ from a recomputation, e.g. {wrong[0]}: "
                               f"{got[wrong[0]]} != {want[wrong[0]]}")  # fmt: skip
    if any(row.unpriced_events for row in rows):
        report.problems.append("some usage was left unpriced")
    assert len(want) == len({k // EVENTS_PER_TASK for k in shared.sent})


def _check_rebuild(engine: Engine, tenant: Tenant, report: LoadReport) -> None:
    """The scheduler's incremental result equals a rollup of every event at once."""
    incremental = integrity.rollup_snapshot(engine, tenant.id)
    began = time.perf_counter()
    integrity.rebuild(engine, tenant, now=datetime.now(UTC))
    report.rebuild_s = round(time.perf_counter() - began, 2)
    report.problems += [f"incremental != rebuild: {d}" for d in integrity.rollup_differences(incremental, integrity.rollup_snapshot(engine, tenant.id))]


def _percentiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"n": len(values), "p50": round(values[0] * 1000, 1) if values else 0.0, "p99": round(values[0] * 1000, 1) if values else 0.0}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "p50": round(cuts[49] * 1000, 1), "p99": round(cuts[98] * 1000, 1)}


# --- the command ------------------------------------------------------------------------------------


def fresh_database(kind: str, workdir: Path) -> str:
    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'load.db'}"
    else:
        base = os.environ.get("TASKMETER_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
        admin = make_engine(base.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        name = f"taskmeter_load_{os.getpid()}"
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = base.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    upgrade_schema(engine)
    engine.dispose()
    return url


def drop_database(url: str) -> None:
    if not url.startswith("postgresql"):
        return
    admin = make_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def markdown(report: LoadReport) -> str:
    o = report.options
    lines = [
        f"{report.database}: {report.elapsed:.0f} s, {o['clients']} ingesting clients (batches of {o['batch']}, "
        f"overlap {o['overlap']}), {o['readers']} readers, kill -9 every {o['kill_every'] or '-'} s "
        f"({report.counts.get('kills', 0)} kills, {report.downtime_s} s down in all)",
        "",
        f"- distinct events sent {report.distinct_ids_sent:,}, stored {report.events_stored:,}, "
        f"tasks {report.tasks:,}; events posted {report.counts.get('events_in_batches', 0):,} "
        f"({report.counts.get('replays', 0)} replayed batches, {report.counts.get('conflicts_sent', 0)} conflicts, "
        f"{report.counts.get('invalid_sent', 0)} invalid events, {report.counts.get('answers_never_read', 0)} answers never read)",
        f"- throughput: {report.throughput.get('distinct_events_per_s', 0):,} distinct events/s, "
        f"{report.throughput.get('events_posted_per_s', 0):,} events posted/s, "
        f"{report.throughput.get('reads_answered_per_s', 0)} reads answered/s",
        f"- rollup caught up {report.rollup_catch_up_s} s after the load; rebuild {report.rebuild_s} s; "
        f"close {report.close.get('seconds')} s, {report.close.get('invoices')} invoices",
        f"- problems: {len(report.problems)}",
        "",
        "| endpoint | requests | p50 ms | p99 ms | statuses |",
        "|---|---|---|---|---|",
    ]
    for name, figures in report.latency_ms.items():
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses.get(name, {}).items()))
        lines.append(f"| {name} | {figures['n']:,} | {figures['p50']} | {figures['p99']} | {statuses} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds between SIGKILLs of the server (0: never)")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    args = parser.parse_args()
    options = LoadOptions(seconds=args.seconds, clients=args.clients, readers=args.readers, batch=args.batch,
                          kill_every=args.kill_every or None)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="taskmeter-load-") as folder:
        workdir = Path(folder)
        url = fresh_database(args.db, workdir)
        try:
            report = run_load(url, workdir, options)
        finally:
            drop_database(url)
    print(markdown(report))
    for problem in report.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2, default=str))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
