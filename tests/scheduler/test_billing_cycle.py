"""The whole cycle on the real services: events → scheduled close (pricing.invoices) → Stripe;
late usage becoming an adjustment on the next invoice; two workers (threads, then processes)
closing at once without a double close."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import stripe
from pydantic import SecretStr
from sqlalchemy import Engine, func, select

from api.scheduler import REPORTS, Runtime, run_close, run_reports, run_stripe_sync
from metering.core.db import unit_of_work
from metering.core.jobstate import hold
from metering.core.tenants import Tenant
from pricing.service import load_config
from pricing.tables import billing_periods, invoice_lines, invoices
from tests.conftest import TEST_SECRET
from tests.factories import make_event, make_task_events
from tests.scheduler.conftest import send
from tests.support.localstripe_server import LocalStripe
from tests.support.stripe_fakes import localstripe_server, ls

__all__ = ["localstripe_server", "ls"]  # fixtures

pytest.importorskip("pricing.invoices")

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
plans:
  - {id: jobs, type: per_job, prices: {default: "0.50", support_ticket: "1.20"}, platform_fee: "9.90"}
customers:
  - {id: acme, plan: jobs}
  - {id: globex, plan: jobs}
"""


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def billed(engine: Engine, tenant_at: Callable[..., Tenant]) -> Tenant:
    """A tenant since October with per-job plans and completed tasks in October."""
    tenant = tenant_at(created=utc(2026, 10, 1))
    with unit_of_work(engine) as session:
        load_config(session, tenant, CONFIG, now=utc(2026, 10, 1))
    events = make_task_events("t1", customer="acme") + make_task_events(
        "t2", customer="acme", task_type="support_ticket"
    )
    events += make_task_events("t3", customer="globex")
    send(engine, tenant, events, now=utc(2026, 10, 20))
    return tenant


def invoice_rows(engine: Engine, tenant: Tenant) -> list:  # type: ignore[type-arg]
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(invoices)
                .where(invoices.c.tenant_id == tenant.id)
                .order_by(invoices.c.period, invoices.c.customer)
            )
        )


def lines_of(engine: Engine, invoice_id: int) -> list:  # type: ignore[type-arg]
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(invoice_lines)
                .where(invoice_lines.c.invoice_id == invoice_id)
                .order_by(invoice_lines.c.line_no)
            )
        )


class TestScheduledClose:
    def test_october_is_finalized_once_after_its_grace(
        self, runtime: Runtime, engine: Engine, billed: Tenant
    ) -> None:
        assert run_close(runtime, now=utc(2026, 11, 1, 0, 59, 59)) == []
        assert run_close(runtime, now=utc(2026, 11, 1, 1)) == [("acme-ai", "2026-10")]
        assert run_close(runtime, now=utc(2026, 11, 1, 2)) == []
        rows = invoice_rows(engine, billed)
        assert [(r.customer, r.period, r.status, r.total_minor) for r in rows] == [
            ("acme", "2026-10", "finalized", 50 + 120 + 990),
            ("globex", "2026-10", "finalized", 50 + 990),
        ]

    def test_two_workers_racing_close_once(self, runtime: Runtime, engine: Engine, billed: Tenant) -> None:
        start = threading.Barrier(3)
        closed: list[tuple[str, str]] = []
        errors: list[BaseException] = []

        def worker() -> None:
            start.wait()
            try:
                closed.extend(run_close(runtime, now=utc(2026, 11, 1, 1)))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == [] and closed == [("acme-ai", "2026-10")]
        assert [(r.customer, r.period) for r in invoice_rows(engine, billed)] == [
            ("acme", "2026-10"),
            ("globex", "2026-10"),
        ]

    def test_a_late_event_after_close_is_an_adjustment_on_the_next_invoice(
        self, runtime: Runtime, engine: Engine, billed: Tenant
    ) -> None:
        run_close(runtime, now=utc(2026, 11, 1, 1))
        october = {r.customer: r for r in invoice_rows(engine, billed)}
        # a task of October reported on November 5th, after October was closed
        send(engine, billed, make_task_events("late", customer="acme"), now=utc(2026, 11, 5))
        send(
            engine,
            billed,
            [make_event(id="nov-usage", customer="acme", task="nov", time="2026-11-10T10:00:00Z")],
            now=utc(2026, 11, 10),
        )

        assert run_close(runtime, now=utc(2026, 12, 1, 1)) == [("acme-ai", "2026-11")]
        after = {(r.customer, r.period): r for r in invoice_rows(engine, billed)}
        assert after[("acme", "2026-10")].total_minor == october["acme"].total_minor  # never changes
        adjustments = [
            line for line in lines_of(engine, after[("acme", "2026-11")].id) if line.adjusts_period
        ]
        assert [(a.adjusts_period, a.amount_minor) for a in adjustments] == [("2026-10", 50)]


class TestReportsAfterClose:
    def test_the_months_csvs_are_written_once_after_its_close(self, runtime: Runtime, billed: Tenant) -> None:
        assert run_reports(runtime, now=utc(2026, 11, 1, 1)) == []  # not closed yet
        run_close(runtime, now=utc(2026, 11, 1, 1))
        assert run_reports(runtime, now=utc(2026, 11, 1, 1)) == [("acme-ai", "2026-10")]
        assert run_reports(runtime, now=utc(2026, 11, 1, 2)) == []
        folder = runtime.settings.reports_dir / "acme-ai"
        names = sorted(p.name for p in folder.iterdir())
        assert names == [
            "comparison-2026-10.csv",
            "customers-2026-10.csv",
            "invoice-lines-2026-10.csv",
            "spend-2026-10.csv",
            "tasks-2026-10.csv",
        ]
        assert "acme" in (folder / "customers-2026-10.csv").read_text()


    def test_a_worker_that_closed_waits_for_a_reports_guard_taken_before_its_close(
        self, runtime: Runtime, engine: Engine, billed: Tenant
    ) -> None:
        # Another worker took the reports guard before this one's close moved the bookmark: it
        # found nothing to write. This worker, having closed October, waits for it and writes.
        taken, release = threading.Event(), threading.Event()

        def other_worker() -> None:
            with hold(engine, REPORTS, billed.id, lease_seconds=60) as guard:
                assert guard is not None
                taken.set()
                release.wait(10)

        other = threading.Thread(target=other_worker)
        other.start()
        assert taken.wait(10)
        closed = run_close(runtime, now=utc(2026, 11, 1, 1))
        assert closed == [("acme-ai", "2026-10")]
        assert run_reports(runtime, now=utc(2026, 11, 1, 1)) == []  # not waiting: the next run writes
        threading.Timer(0.3, release.set).start()
        written = run_reports(runtime, now=utc(2026, 11, 1, 1), closed_here=frozenset({"acme-ai"}))
        other.join()
        assert written == [("acme-ai", "2026-10")]
        assert (runtime.settings.reports_dir / "acme-ai" / "customers-2026-10.csv").exists()


class TestClosedThenPushed:
    def test_the_scheduler_pushes_what_it_closed(
        self, runtime: Runtime, engine: Engine, billed: Tenant, ls: LocalStripe
    ) -> None:
        stripe_on = Runtime(
            runtime.settings.model_copy(
                update={"stripe_api_key": SecretStr(ls.api_key), "stripe_api_base": ls.url}
            ),
            engine,
        )
        run_close(stripe_on, now=utc(2026, 11, 1, 1))
        reports = run_stripe_sync(stripe_on, now=utc(2026, 11, 1, 1, 1))
        assert [len(r.synced) for r in reports] == [2]
        client: stripe.StripeClient = ls.client()
        for row in invoice_rows(engine, billed):
            assert row.stripe_status == "synced"
            remote = client.v1.invoices.retrieve(row.stripe_invoice_id)
            assert (remote.status, remote.total, remote.currency) == ("open", row.total_minor, "usd")
            assert len(client.v1.invoice_items.list({"invoice": remote.id}).data) == len(
                lines_of(engine, row.id)
            )
        assert run_stripe_sync(stripe_on, now=utc(2026, 11, 2))[0].synced == []


class TestTwoProcesses:
    def test_two_worker_processes_close_once(
        self, database_url: str, engine: Engine, billed: Tenant, tmp_path: Path
    ) -> None:
        # October ended long ago by the real clock: both `worker --once` close it, or try to
        env = {
            **os.environ, "TASKMETER_DATABASE_URL": database_url, "TASKMETER_SECRET_KEY": TEST_SECRET,
            "TASKMETER_REPORTS_DIR": str(tmp_path / "reports"),
        }  # fmt: skip
        env.pop("TASKMETER_STRIPE_API_KEY", None)
        command = [sys.executable, "-m", "api.cli", "worker", "--once"]
        processes = [
            subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120) for p in processes]
        assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
        closed = [c for out, _ in outputs for c in json.loads(out)["closed"]]
        months = sorted(c["month"] for c in closed)
        assert months[0] == "2026-10" and len(months) == len(set(months))  # each month by one process
        reported = sorted(r["month"] for out, _ in outputs for r in json.loads(out)["reports"])
        assert len(reported) == len(set(reported)) and set(reported) <= set(months)
        assert (tmp_path / "reports" / "acme-ai" / "customers-2026-10.csv").exists()
        with engine.connect() as connection:
            periods = connection.execute(
                select(billing_periods.c.period, func.count())
                .where(billing_periods.c.tenant_id == billed.id)
                .group_by(billing_periods.c.period)
            ).all()
        assert all(n == 1 for _, n in periods)
        october = [(r.customer, r.period) for r in invoice_rows(engine, billed) if r.period == "2026-10"]
        assert october == [("acme", "2026-10"), ("globex", "2026-10")]
