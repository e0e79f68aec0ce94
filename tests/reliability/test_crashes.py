"""Crashes: `kill -9` of the server while clients ingest, of `taskmeter rollup`, `taskmeter close`
and `taskmeter stripe sync` in the middle of their work, a scheduler guard held by a killed
process, and PostgreSQL stopped under the API. After each, a rerun finishes the work with
nothing lost, nothing doubled, and the result of a clean run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select
from taskmeter_client import TaskmeterClient

from bench.load_clients import EventPool
from bench.load_faults import setup_tenant
from metering.core.db import is_sqlite, make_engine, unit_of_work, upgrade_schema
from metering.core.jobstate import hold
from metering.core.periods import period_of
from metering.core.tables import events, task_usage
from metering.core.tenants import Tenant, create_api_key, create_tenant
from metering.events.ingest import ingest_events
from metering.rollup.pipeline import rollup_tenant
from pricing.stripe_sync import metadata_of
from pricing.tables import invoice_lines, invoices
from tests.conftest import BACKEND, TEST_SECRET
from tests.support import integrity
from tests.support.billing import Line, make_invoice
from tests.support.localstripe_server import LocalStripe
from tests.support.processes import (
    PrivatePostgres,
    ServeProcess,
    kill9,
    postgres_bindir,
    run_cli,
    start_cli,
    taskmeter_env,
)
from tests.support.stripe_fakes import localstripe_server, ls

__all__ = ["localstripe_server", "ls"]  # fixtures

pytestmark = pytest.mark.slow

NOW = datetime.now(UTC)


def ingest(engine: Engine, tenant: Tenant, items: list[dict[str, Any]], chunk: int = 10_000) -> None:
    for start in range(0, len(items), chunk):
        with unit_of_work(engine) as session:
            result = ingest_events(session, tenant.id, items[start : start + chunk], now=NOW)
        assert not result.rejected


def figures(test: str, **values: Any) -> None:
    """What a test measured, for RELIABILITY.md (shown with `pytest -s`)."""
    print(f"\nFIGURES {test}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def cli_json(args: list[str], env: dict[str, str]) -> Any:
    done = run_cli(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


class TestServerKilledDuringIngestion:
    def test_clients_retry_and_every_event_is_stored_exactly_once(
        self, serve: Callable[..., ServeProcess], engine: Engine, tenant: Tenant, make_key: Callable[..., str], tmp_path: Path
    ) -> None:
        server = serve(scheduler_enabled=True, rollup_interval_seconds=0.5)
        key = make_key(tenant, "ingest,read")
        stop = threading.Event()
        expected: dict[str, tuple[int, int]] = {}  # task -> (input tokens, output tokens)
        delivered: list[bool] = []
        stats: list[Any] = []

        def agent(n: int) -> None:
            client = TaskmeterClient(
                server.url, key, batch_size=100, flush_interval=0.05, spool_dir=tmp_path / f"spool-{n}",
                max_retries=2, backoff_base=0.05, backoff_max=0.5, timeout=2, close_timeout=30,
            )  # fmt: skip
            i = 0
            while not stop.is_set():
                with client.task(customer=f"cust-{n}", task_type="support_ticket") as task:
                    task.usage("openai", "gpt-4o", input_tokens=1000 + i, output_tokens=100 + i)
                    task.usage("openai", "gpt-4o-mini", input_tokens=500, output_tokens=50, reasoning_tokens=10)
                expected[task.id] = (1500 + i, 150 + i)
                i += 1
                time.sleep(0.003)
            delivered.append(client.flush(timeout=120))
            stats.append(client.stats)
            client.close()

        agents = [threading.Thread(target=agent, args=(n,)) for n in range(3)]
        for thread in agents:
            thread.start()
        time.sleep(1.5)
        server.kill9()  # in the middle of the traffic: some requests die half-served
        time.sleep(1.0)  # down: the clients spool
        server.start()
        time.sleep(1.5)
        server.kill9()
        server.start()  # at once: the clients' retries meet a fresh server
        time.sleep(1.5)
        stop.set()
        for thread in agents:
            thread.join(timeout=180)

        assert delivered == [True, True, True]
        assert sum(s.retries + s.spooled for s in stats) > 0  # the kills did hit requests
        with engine.connect() as connection:
            per_task = dict(connection.execute(
                select(events.c.task, func.count()).where(events.c.tenant_id == tenant.id).group_by(events.c.task)
            ).all())  # fmt: skip
        assert per_task == {task: 4 for task in expected}  # started, 2 usage, completed: once each
        newest, deadline = integrity.newest_seq(engine, tenant.id), time.monotonic() + 60
        while integrity.watermark(engine, tenant.id) < newest:  # the restarted scheduler rolls it all up
            assert time.monotonic() < deadline, "the scheduler's rollup did not catch up"
            time.sleep(0.1)
        with engine.connect() as connection:
            rows = connection.execute(
                select(task_usage.c.task, task_usage.c.input_tokens, task_usage.c.output_tokens, task_usage.c.status)
                .where(task_usage.c.tenant_id == tenant.id)
            ).all()  # fmt: skip
        assert {r.task: (r.input_tokens, r.output_tokens) for r in rows} == expected
        assert {r.status for r in rows} == {"completed"}
        assert "Traceback" not in server.log_text()
        figures("server-kill", events=4 * len(expected), kills=2, retries=sum(s.retries for s in stats),
                spooled=sum(s.spooled for s in stats), duplicates_answered=sum(s.duplicates for s in stats))  # fmt: skip


def two_part_backlog(customers: int, tasks: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events of `tasks` tasks: first the start and first usage of two thirds of them, then the
    rest (their second usage and outcome, which change stored tasks, and the last third whole)."""
    pool = EventPool(period_of(NOW, "UTC").previous(), customers)
    old = tasks * 2 // 3
    first = [pool.event(k) for k in range(old * 4) if k % 4 < 2]
    second = [pool.event(k) for k in range(old * 4) if k % 4 >= 2] + [pool.event(k) for k in range(old * 4, tasks * 4)]
    return first, second


class TestRollupKilledMidRun:
    def test_nothing_is_written_and_a_rerun_equals_a_clean_run(
        self, engine: Engine, tenant: Tenant, process_env: Callable[..., dict[str, str]], mid_write: Callable[..., Any]
    ) -> None:
        first, second = two_part_backlog(customers=50, tasks=15_000)
        ingest(engine, tenant, first)
        rollup_tenant(engine, tenant, now=NOW)  # an incremental base the killed run merges into
        ingest(engine, tenant, second)
        before, mark = integrity.rollup_snapshot(engine, tenant.id), integrity.watermark(engine, tenant.id)
        env = process_env()

        with mid_write("usage_daily") as stall:  # PostgreSQL: the last table the run writes
            process = start_cli(["rollup", "--tenant", tenant.name], env)
            try:
                assert stall.wait(process), "the rollup finished before it could be killed mid-write"
            finally:
                kill9(process)

        assert integrity.watermark(engine, tenant.id) == mark
        assert integrity.rollup_differences(integrity.rollup_snapshot(engine, tenant.id), before) == []

        result = cli_json(["rollup", "--tenant", tenant.name], env)
        assert result["events_read"] == len(second) and not result["rebuilt"]
        assert cli_json(["rollup", "--tenant", tenant.name], env)["events_read"] == 0  # and once only
        incremental = integrity.rollup_snapshot(engine, tenant.id)
        integrity.rebuild(engine, tenant, now=NOW)
        assert integrity.rollup_differences(incremental, integrity.rollup_snapshot(engine, tenant.id)) == []
        assert len(incremental["task_usage"]) == 15_000
        figures("rollup-kill", base_events=len(first), backlog_events=len(second), tasks=15_000,
                rows_compared=sum(len(rows) for rows in incremental.values()))  # fmt: skip


class TestCloseKilledMidRun:
    def test_a_rerun_bills_each_customer_once_with_unique_numbers_and_equal_totals(
        self, engine: Engine, process_env: Callable[..., dict[str, str]], mid_write: Callable[..., Any]
    ) -> None:
        tenant, _ = setup_tenant(engine, 1500, secret=TEST_SECRET, now=NOW)
        month = period_of(NOW, "UTC").previous()
        first, second = two_part_backlog(customers=1500, tasks=6000)
        ingest(engine, tenant, first + second)
        rollup_tenant(engine, tenant, now=NOW)
        expected = integrity.draft_totals(engine, tenant, month)
        env = process_env()
        close = ["close", "--tenant", tenant.name, "--month", month.label]

        with mid_write("billing_periods") as stall:  # PostgreSQL: after every invoice is written
            process = start_cli(close, env)
            try:
                assert stall.wait(process), "the close finished before it could be killed"
            finally:
                kill9(process)

        assert integrity.closed_invoices(engine, tenant.id, month.label) == []
        assert not integrity.is_closed(engine, tenant.id, month.label)

        closed = cli_json(close, env)
        assert closed["closed"] is True and len(closed["invoices"]) == len(expected) > 1400
        again = cli_json(close, env)
        assert again["closed"] is False and again["invoices"] == closed["invoices"]
        assert integrity.invoice_problems(engine, tenant.id, month.label, expected) == []
        numbers = sorted(invoice["number"] for invoice in closed["invoices"])
        assert numbers == [f"INV-{tenant.name}-{month.first_day:%Y%m}-{n:04d}" for n in range(1, len(expected) + 1)]
        figures("close-kill", customers=1500, invoices=len(numbers), events=len(first) + len(second))


LINES = 30
"""Lines of each of the three invoices: after the second kill a third of the items are left, so a
sync on a busy machine does not finish them all before the kill lands."""


class TestStripeSyncKilledBetweenItems:
    def test_a_rerun_pushes_each_invoice_once_without_duplicate_items(
        self, engine: Engine, tenant: Tenant, ls: LocalStripe, process_env: Callable[..., dict[str, str]]
    ) -> None:
        ids = [
            make_invoice(engine, tenant, customer=f"cust-{n}", lines=[Line(1_000 + 10 * i + n, f"line {i}") for i in range(LINES)])
            for n in range(3)
        ]
        items = 3 * LINES
        env = process_env(stripe_api_key=ls.api_key, stripe_api_base=ls.url)

        def items_recorded() -> int:
            with engine.connect() as connection:
                return int(connection.execute(
                    select(func.count()).select_from(invoice_lines)
                    .where(invoice_lines.c.invoice_id.in_(ids), invoice_lines.c.stripe_item_id.is_not(None))
                ).scalar_one())  # fmt: skip

        killed_at = []
        for kill_at in (5, LINES + 5):  # in the first invoice's items, then in the second's
            process = start_cli(["stripe", "sync", "--tenant", tenant.name], env)
            try:
                deadline = time.monotonic() + 60
                while items_recorded() < kill_at:
                    assert process.poll() is None, "the sync ended before it could be killed"
                    assert time.monotonic() < deadline
                    time.sleep(0.002)
            finally:
                kill9(process)
            killed_at.append(items_recorded())
            assert killed_at[-1] < items

        done = run_cli(["stripe", "sync", "--tenant", tenant.name], env)
        assert done.returncode == 0, done.stderr
        client = ls.client()
        remote_invoices = list(client.v1.invoices.list({"limit": 100}).auto_paging_iter())
        remote_items = list(client.v1.invoice_items.list({"limit": 100}).auto_paging_iter())
        assert sorted(metadata_of(i)["tm_invoice_id"] for i in remote_invoices) == sorted(str(i) for i in ids)
        assert len(remote_items) == items
        assert len({metadata_of(item)["tm_line_id"] for item in remote_items}) == items
        with engine.connect() as connection:
            ours = {r.id: r for r in connection.execute(select(invoices).where(invoices.c.id.in_(ids)))}
        for remote in remote_invoices:
            invoice = ours[int(metadata_of(remote)["tm_invoice_id"])]
            assert invoice.stripe_status == "synced" and invoice.stripe_invoice_id == remote.id
            assert remote.status == "open" and remote.total == invoice.total_minor
            assert sorted(item.id for item in remote_items if item.invoice == remote.id) == sorted(
                line.stripe_item_id for line in _lines(engine, invoice.id)
            )
        figures("stripe-kill", invoices=3, items=items, items_recorded_at_kills=killed_at)


def _lines(engine: Engine, invoice_id: int) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(invoice_lines).where(invoice_lines.c.invoice_id == invoice_id)).all())


class TestSchedulerGuardOfAKilledProcess:
    def test_does_not_block_the_next_run(self, engine: Engine, tenant: Tenant, database_url: str) -> None:
        if not is_sqlite(engine):
            pytest.skip("PostgreSQL's advisory locks end with the holder's connection (tests/scheduler/test_jobstate.py)")
        holder = subprocess.Popen(
            [sys.executable, "-c", (
                "import sys, time\nfrom metering.core.db import make_engine\nfrom metering.core.jobstate import hold\n"
                f"held = hold(make_engine({database_url!r}), 'rollup', {tenant.id})\nguard = held.__enter__()\n"
                "print('held' if guard else 'busy', flush=True)\ntime.sleep(600)\n"
            )],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2], start_new_session=True,
        )  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with hold(engine, "rollup", tenant.id) as guard:
                assert guard is None  # a live holder keeps its lease
        finally:
            kill9(holder)
        with hold(engine, "rollup", tenant.id) as guard:
            assert guard is not None  # its process is gone: no need to wait out the 15-minute lease


# --- PostgreSQL stopped under the API ----------------------------------------------------------------


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if BACKEND != "postgresql":
        pytest.skip("PostgreSQL outage: run with TASKMETER_TEST_DB=postgresql")
    if postgres_bindir() is None or shutil.which("runuser") is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) to run a cluster of our own")
    root = Path(tempfile.mkdtemp(prefix="taskmeter-pg-"))
    cluster = PrivatePostgres(root)
    try:
        yield cluster.init()
    finally:
        cluster.destroy()


@pytest.fixture
def private_engine(private_postgres: PrivatePostgres) -> Iterator[Engine]:
    engine = make_engine(private_postgres.url)
    yield engine
    engine.dispose()  # a failed test too: no connection is left for the garbage collector


class TestPostgresStoppedDuringIngestion:
    def test_the_api_answers_503_with_retry_after_and_nothing_is_lost(
        self, private_postgres: PrivatePostgres, private_engine: Engine, tmp_path: Path
    ) -> None:
        engine = private_engine
        upgrade_schema(engine)
        with unit_of_work(engine) as session:
            tenant = create_tenant(session, "outage", now=NOW)
            key, _ = create_api_key(session, tenant, frozenset({"ingest", "read"}), secret=TEST_SECRET.encode(), now=NOW)
        env = taskmeter_env(private_postgres.url, TEST_SECRET, scheduler_enabled=True, rollup_interval_seconds=0.5)
        statuses: Counter[str] = Counter()
        problems: list[str] = []
        sent: set[str] = set()
        stop = threading.Event()
        lock = threading.Lock()

        def note(status: str, problem: str | None = None) -> None:
            with lock:
                statuses[status] += 1
                if problem:
                    problems.append(problem)

        def ingester(n: int) -> None:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                batch_no = 0
                while not stop.is_set():
                    batch_no += 1
                    batch = [{"id": f"pg-{n}-{batch_no}-{i}", "type": "usage", "time": NOW.isoformat(), "customer": f"c{n}",
                              "task": f"t{n}-{batch_no}", "provider": "openai", "model": "gpt-4o",
                              "input_tokens": 100, "output_tokens": 10} for i in range(50)]  # fmt: skip
                    while True:  # the same batch until it is acknowledged
                        try:
                            answer = http.post("/v1/events", json=batch)
                        except httpx.TransportError as exc:
                            note(type(exc).__name__, f"the server itself failed: {exc!r}")
                            time.sleep(0.2)
                            continue
                        if answer.status_code == 200:
                            note("200")
                            with lock:
                                sent.update(e["id"] for e in batch)
                            break
                        retry_after = answer.headers.get("retry-after")
                        note(str(answer.status_code), None if answer.status_code == 503 and retry_after
                             else f"{answer.status_code} (Retry-After {retry_after}): {answer.text[:200]}")  # fmt: skip
                        time.sleep(0.2)

        def reader() -> None:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                while not stop.is_set():
                    answer = http.get("/v1/usage")
                    if answer.status_code == 200 or (answer.status_code == 503 and "retry-after" in answer.headers):
                        note(f"read {answer.status_code}")
                    else:
                        note(f"read {answer.status_code}", f"GET /v1/usage: {answer.status_code}: {answer.text[:200]}")
                    time.sleep(0.05)

        with ServeProcess(env, tmp_path / "serve.log") as server:
            threads = [threading.Thread(target=ingester, args=(n,)) for n in range(3)] + [threading.Thread(target=reader)]
            for thread in threads:
                thread.start()
            time.sleep(1.5)
            private_postgres.stop("immediate")  # the database crashes under load
            time.sleep(3)
            down = dict(statuses)
            private_postgres.start()
            time.sleep(3)
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
            newest, deadline = integrity.newest_seq(engine, tenant.id), time.monotonic() + 60
            while integrity.watermark(engine, tenant.id) < newest:  # the scheduler outlived the outage
                assert time.monotonic() < deadline, "the scheduler's rollup did not resume"
                time.sleep(0.1)
            assert server.alive
            log = server.log_text()

        assert problems == []
        assert down.get("503", 0) > 0 and down.get("read 503", 0) > 0
        assert statuses["200"] > down.get("200", 0)  # ingestion resumed once the database was back
        with engine.connect() as connection:
            stored = set(connection.execute(select(events.c.event_id).where(events.c.tenant_id == tenant.id)).scalars())
        assert stored == sent
        # The API and the scheduler's jobs said the database was away, in one line each, no traceback.
        assert "unhandled error" not in log and "database error" not in log
        assert "database unavailable" in log
        assert "Traceback" not in log
        figures("postgres-outage", outage_s=3, events=len(sent), answers=dict(statuses))
