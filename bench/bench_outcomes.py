"""Outcome truth at scale.

    .venv/bin/python bench/bench_outcomes.py [--events 2000000] [--line-tasks 100000] [--db sqlite|postgresql]
        [--rollup-url URL] [--only evidence|rollup]

Measures, each in a fresh subprocess (its peak RSS is its own):
- evidence: `GET /v1/invoices/{id}/lines/1/tasks` with `Accept: text/csv` for a line of
  `--line-tasks` completed tasks (target <= 5 s, bounded memory), against the baseline of reading
  the same month's billed tasks alone (`billed_tasks`, what the line is chosen from);
- the incremental rollup of 10,000 new events (1,000 tasks, a tenth of them reopened, accepted or
  rejected) over the `bench_rollup` event store of `--events` usage events, with settlement rules
  active (target <= 1 s), against the same 10,000 events without outcome events (baseline).

The stores are built once (not timed) and reused: the rollup store is `bench_rollup`'s
(generator `bench_rollup.synthetic_chunk`), the evidence tenant lives in its own database.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_rollup import NOW, POSTGRES_URL, build_store, own_peak_mb, synthetic_chunk  # noqa: E402
from bench.common import cpu_check, machine  # noqa: E402
from metering.core.db import make_engine, unit_of_work, upgrade_schema  # noqa: E402
from metering.core.db.writes import write_rows  # noqa: E402
from metering.core.event_columns import INSERT_COLUMNS  # noqa: E402
from metering.core.tables import events  # noqa: E402

FOLDER = Path(os.environ.get("TASKMETER_BENCH_DIR", "/tmp/tm-bench"))
RULES = {
    "outcomes": [
        {"task_type": "default", "settle_after": "72h"},
        {"task_type": "code_review", "require_acceptance": True},
    ]
}
OCT = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp() * 1_000_000)


def event_row(**fields: object) -> tuple:
    """An `events` row in `INSERT_COLUMNS` order: the given fields, zero tokens, no names."""
    defaults = {name: 0 if name.endswith("_tokens") else None for name in INSERT_COLUMNS}
    return tuple((defaults | {"content_hash": "x", "ingested_us": 0} | fields)[name] for name in INSERT_COLUMNS)


def peak_mb() -> float:
    """This process's own peak RSS (`bench_rollup.own_peak_mb`: ru_maxrss carries the parent's
    over through fork and exec, and the parent built the stores)."""
    return own_peak_mb()


def run_child(*argv: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *argv], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- evidence -----------------------------------------------------------------------------------


def build_evidence(url: str, tasks: int) -> None:
    """A tenant whose October invoice has one jobs line of `tasks` completed tasks (closed)."""
    from metering.core.tenants import create_tenant
    from pricing import invoices, service

    engine = make_engine(url)
    upgrade_schema(engine)
    with engine.connect() as connection:
        if connection.execute(text("SELECT count(*) FROM invoices")).scalar_one():
            return
    print(f"building the evidence store ({tasks:,} tasks)...", flush=True)
    with unit_of_work(engine) as session:
        tenant = create_tenant(session, "evidence", now=NOW)
        config = {
            "plans": [{"id": "jobs", "type": "per_job", "prices": {"default": "0.50"}}],
            "customers": [{"id": "acme", "plan": "jobs"}],
        }
        service.load_config(
            session, tenant, yaml.safe_dump(config | RULES), now=datetime(2020, 1, 1, tzinfo=UTC)
        )
    rng = np.random.default_rng(7)
    when = OCT + rng.integers(0, 25 * 86_400, tasks) * 1_000_000
    rows = []
    for i in range(tasks):
        task = f"=evidence-task-{i:06d}" if i % 1000 == 0 else f"evidence-task-{i:06d}"  # some look like formulas
        common = {"tenant_id": tenant.id, "customer": "acme", "task": task}
        rows.append(event_row(**common, event_id=f"u-{i}", type="usage", time_us=int(when[i]), provider="acme-ai",
                              model="acme-large", input_tokens=1000, output_tokens=100))  # fmt: skip
        rows.append(event_row(**common, event_id=f"e-{i}", type="task.completed", time_us=int(when[i]) + 60_000_000))
    with engine.begin() as connection:
        write_rows(connection, events, INSERT_COLUMNS, rows)
    from metering.core.periods import parse_month

    with unit_of_work(engine) as session:
        invoices.close_period(
            session, tenant, parse_month("2026-10", "UTC"), now=datetime(2026, 11, 1, tzinfo=UTC)
        )


def child_evidence(url: str) -> dict:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings
    from metering.core.periods import parse_month
    from metering.core.tenants import create_api_key, get_tenant, parse_scopes
    from pricing import outcomes_repository
    from pricing.tables import invoices

    secret = "bench-secret-" + "x" * 40
    engine = make_engine(url)
    with unit_of_work(engine) as session:
        tenant = get_tenant(session, "evidence")
        key, _ = create_api_key(session, tenant, parse_scopes("read"), secret=secret.encode(), now=NOW)
        invoice_id = session.execute(
            select(invoices.c.id).where(invoices.c.tenant_id == tenant.id)
        ).scalar_one()
    app = create_app(Settings(env="test", database_url=url, secret_key=secret, scheduler_enabled=False))
    with TestClient(app) as client:
        client.get("/healthz")
        before = peak_mb()
        started = time.perf_counter()
        size, lines = 0, 0
        with client.stream(
            "GET",
            f"/v1/invoices/{invoice_id}/lines/1/tasks",
            headers={"Authorization": f"Bearer {key}", "Accept": "text/csv"},
        ) as response:
            assert response.status_code == 200, response.read()
            for chunk in response.iter_bytes():
                size += len(chunk)
                lines += chunk.count(b"\n")
        seconds = time.perf_counter() - started
    after = peak_mb()
    started = time.perf_counter()
    with unit_of_work(engine) as session:  # the baseline, after: its memory is not the request's
        baseline = len(
            outcomes_repository.billed_tasks(session, tenant.id, parse_month("2026-10", "UTC"), "acme")
        )
    baseline_s = time.perf_counter() - started
    return {"seconds": seconds, "baseline_s": baseline_s, "baseline_tasks": baseline, "rows": lines - 1, "bytes": size,
            "peak_mb": after, "before_mb": before}  # fmt: skip


# --- incremental rollup with rules --------------------------------------------------------------


def child_incremental(url: str, outcomes: bool) -> dict:
    from metering.core.tenants import get_tenant
    from metering.rollup.pipeline import rollup_tenant
    from pricing import service

    engine = make_engine(url)
    with unit_of_work(engine) as session:
        tenant = get_tenant(session, "bench")
        service.load_config(session, tenant, yaml.safe_dump(RULES), now=datetime(2020, 1, 1, tzinfo=UTC))
    rollup_tenant(engine, tenant, now=NOW)  # whatever an earlier run left: not timed
    rng = np.random.default_rng(int(time.time()))
    first = 10**9 + int(rng.integers(0, 10**8))
    rows = synthetic_chunk(rng, first, 1000, 8, 0)  # 1,000 tasks: 8,000 usage + 2,000 lifecycle events
    rows = [(*r[:1], f"inc-{r[1]}", *r[2:]) for r in rows]
    if outcomes:  # a tenth of the tasks get a verdict (instead of a usage event: still 10,000 events)
        verdicts = ("task.reopened", "task.accepted", "task.rejected")
        ends = {r[5]: r for r in rows if r[2] in ("task.completed", "task.failed", "task.cancelled")}
        swapped = 0
        for index, row in enumerate(rows):
            if (
                row[2] == "usage"
                and row[1].endswith("-u0")
                and swapped < 1000
                and int(row[5].split("-")[1]) % 10 == 0
            ):
                end = ends[row[5]]
                rows[index] = event_row(
                    tenant_id=row[0], event_id=row[1], type=verdicts[swapped % 3], time_us=end[3] + 60_000_000,
                    customer=row[4], task=row[5],
                )  # fmt: skip
                swapped += 1
    with engine.begin() as connection:
        write_rows(connection, events, INSERT_COLUMNS, rows)
    started = time.perf_counter()
    result = rollup_tenant(engine, tenant, now=NOW)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "events": result.events_read,
        "tasks": result.tasks_updated,
        "peak_mb": peak_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--events",
        type=int,
        default=2_000_000,
        help="usage events of the rollup store (bench_rollup's generator)",
    )
    parser.add_argument("--line-tasks", type=int, default=100_000)
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument(
        "--rollup-url",
        help="measure the incremental rollup over this existing bench_rollup store (a copy: the run adds "
        "events and outcome rules to it) instead of building one of --events",
    )
    parser.add_argument("--only", choices=["evidence", "rollup"], help="one of the two measures")
    parser.add_argument("--child", nargs="*")
    args = parser.parse_args()
    if args.child:
        what, url = args.child[0], args.child[1]
        result = child_evidence(url) if what == "evidence" else child_incremental(url, what == "outcomes")
        print(json.dumps(result))
        return
    FOLDER.mkdir(parents=True, exist_ok=True)
    if args.rollup_url:
        args.db = make_engine(args.rollup_url).dialect.name
    if args.db == "sqlite":
        rollup_url = f"sqlite:///{FOLDER}/outcomes-rollup-{args.events}.db"
        evidence_url = f"sqlite:///{FOLDER}/outcomes-evidence-{args.line_tasks}.db"
    else:
        rollup_url = POSTGRES_URL.rsplit("/", 1)[0] + "/taskmeter_bench_outcomes_rollup"
        evidence_url = POSTGRES_URL.rsplit("/", 1)[0] + "/taskmeter_bench_outcomes_evidence"
        admin = make_engine(POSTGRES_URL.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            for name in ("taskmeter_bench_outcomes_rollup", "taskmeter_bench_outcomes_evidence"):
                if not connection.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
                ).first():
                    connection.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
    print(f"machine: {machine()}; date {datetime.now(UTC):%Y-%m-%d}; {args.db}; {cpu_check()}", flush=True)

    if args.only != "rollup":
        measure_evidence(evidence_url, args.line_tasks)
    if args.only != "evidence":
        measure_rollup(args.rollup_url or rollup_url, args.events, build=not args.rollup_url)


def measure_evidence(evidence_url: str, line_tasks: int) -> None:
    build_evidence(evidence_url, line_tasks)
    evidence = run_child("evidence", evidence_url)
    evidence = min(evidence, run_child("evidence", evidence_url), key=lambda r: r["seconds"])  # best of 2
    print(f"evidence CSV of an invoice line of {evidence['rows']:,} tasks: {evidence['seconds']:.2f} s "
          f"({evidence['bytes'] / 1e6:.1f} MB streamed), peak RSS {evidence['peak_mb']:.0f} MB "
          f"({evidence['before_mb']:.0f} MB before the request); baseline: reading the month's "
          f"{evidence['baseline_tasks']:,} billed tasks alone {evidence['baseline_s']:.2f} s "
          f"(ratio {evidence['seconds'] / evidence['baseline_s']:.1f}x)", flush=True)  # fmt: skip


def measure_rollup(rollup_url: str, usage_events: int, *, build: bool) -> None:
    engine = make_engine(rollup_url)
    if build:
        build_store(engine, usage_events)
    with engine.connect() as connection:
        stored = connection.execute(select(func.count()).select_from(events)).scalar_one()
    engine.dispose()
    baseline = run_child("plain", rollup_url)
    ruled = run_child("outcomes", rollup_url)
    print(f"incremental rollup over {stored:,} stored events, settlement rules active: "
          f"{ruled['seconds']:.3f} s for {ruled['events']:,} new events (1,000 tasks, 1,000 of the events "
          f"reopen, accept or reject); baseline (the same without outcome events) {baseline['seconds']:.3f} s "
          f"(ratio {ruled['seconds'] / baseline['seconds']:.2f}x); peak RSS {ruled['peak_mb']:.0f} MB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
