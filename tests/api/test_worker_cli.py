"""`taskmeter worker` (the scheduler alone, until SIGTERM; or every job once) and
`taskmeter stripe sync|status`: JSON on stdout, problems on stderr, non-zero exit on failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from api import cli
from api.settings import get_settings
from metering.core.db import unit_of_work
from metering.core.tables import task_usage
from metering.core.tenants import Tenant
from metering.events.ingest import ingest_events
from tests.conftest import TEST_SECRET
from tests.factories import make_task_events
from tests.support.billing import invoice_row, make_invoice, stripe_customer_id
from tests.support.localstripe_server import LocalStripe
from tests.support.stripe_fakes import localstripe_server, ls

__all__ = ["localstripe_server", "ls"]  # fixtures

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    values = {
        "TASKMETER_DATABASE_URL": database_url,
        "TASKMETER_SECRET_KEY": TEST_SECRET,
        "TASKMETER_REPORTS_DIR": str(tmp_path / "reports"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TASKMETER_STRIPE_API_KEY", raising=False)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


@pytest.fixture
def run(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    def invoke(*argv: str, **extra_env: str) -> tuple[int, dict | None, str]:
        for name, value in extra_env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, json.loads(captured.out) if captured.out.strip() else None, captured.err

    return invoke


def send(engine: Engine, tenant: Tenant, task: str) -> None:
    with unit_of_work(engine) as session:
        ingest_events(session, tenant.id, make_task_events(task), now=datetime.now(UTC))


def tasks(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(task_usage.c.task).order_by(task_usage.c.task)).scalars())


class TestWorker:
    def test_runs_the_scheduler_until_sigterm(
        self, env: dict[str, str], engine: Engine, tenant: Tenant
    ) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "worker"],
            cwd=ROOT, env={**os.environ, **env, "TASKMETER_ROLLUP_INTERVAL_SECONDS": "0.2"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            send(engine, tenant, "task-1")
            deadline = time.monotonic() + 20
            while tasks(engine) != ["task-1"] and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.05)
            assert tasks(engine) == ["task-1"]
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, err
        assert out == ""
        assert "scheduler started: taskmeter.close, taskmeter.reports, taskmeter.rollup" in err

    def test_once_runs_every_job_and_prints_what_it_did(self, run, engine: Engine, tenant: Tenant) -> None:  # type: ignore[no-untyped-def]
        send(engine, tenant, "task-1")
        code, out, _ = run("worker", "--once")
        assert code == 0
        assert out["rolled_up"] == ["acme-ai"]
        assert out["stripe"] == []  # off without a key
        assert tasks(engine) == ["task-1"]


class TestStripeCommands:
    def test_sync_pushes_and_status_reports(
        self, run, engine: Engine, tenant: Tenant, ls: LocalStripe
    ) -> None:  # type: ignore[no-untyped-def]
        stripe_env = {"TASKMETER_STRIPE_API_KEY": ls.api_key, "TASKMETER_STRIPE_API_BASE": ls.url}
        invoice_id = make_invoice(engine, tenant)
        code, out, err = run("stripe", "sync", **stripe_env)
        assert code == 0, err
        number = invoice_row(engine, invoice_id).number
        assert out["tenants"] == [
            {
                "tenant": "acme-ai",
                "busy": False,
                "synced": [number],
                "retrying": [],
                "failed": [],
                "aborted": None,
            }
        ]

        # the customer vanishes from Stripe: the next invoice fails, said on stderr, exit 1
        ls.client().v1.customers.delete(stripe_customer_id(engine, tenant))
        failing = make_invoice(engine, tenant, period="2026-11")
        code, out, err = run("stripe", "sync", "--tenant", "acme-ai", **stripe_env)
        failing_number = invoice_row(engine, failing).number
        assert code == 1
        assert out["tenants"][0]["failed"][0]["invoice"] == failing_number
        assert f"invoice {failing_number} failed: InvalidRequestError 404" in err

        code, out, _ = run("stripe", "status", **stripe_env)
        assert code == 0 and out["enabled"] is True
        status = out["tenants"][0]
        assert status["counts"] == {"synced": 1, "failed": 1}
        assert [u["number"] for u in status["unsynced"]] == [failing_number]
        assert status["unsynced"][0]["stripe_error"].startswith("InvalidRequestError 404")

    def test_sync_is_off_without_a_key(self, run) -> None:  # type: ignore[no-untyped-def]
        code, out, err = run("stripe", "sync")
        assert code == 1 and out is None
        assert "TASKMETER_STRIPE_API_KEY" in err
