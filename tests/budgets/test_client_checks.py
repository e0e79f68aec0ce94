"""The SDK's budget check: `budget_check` on the async client (awaited at `async with`, raising
before the block runs), and what both clients do when `POST /v1/authorize` cannot be reached
(`on_unavailable`: a real server on loopback, then stopped)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import time_machine
from taskmeter_client import AsyncTaskmeterClient, BudgetExceeded, BudgetUnavailable, TaskmeterClient

from metering.core.tenants import Tenant
from tests.conftest import FROZEN_NOW, LiveServer
from tests.factories import make_event
from tests.support.servers import ServerThread


@pytest.fixture
def clock() -> object:
    with time_machine.travel(FROZEN_NOW, tick=True):
        yield FROZEN_NOW


def exhausted(live_server: LiveServer, key: str, at: datetime) -> None:
    """An enforced jobs budget of 1 for acme, used up."""
    with live_server.client(key) as api:
        api.put("/v1/budgets/jobs", json={"scope": {"customer": "acme"}, "measure": "jobs", "limit": "1", "period": "day", "enforce": True})
        api.post("/v1/events", json=[make_event(id="c", type="task.completed", task="done", time=at.isoformat())])


class TestAsyncBudgetCheck:
    def test_off_warn_enforce(
        self, live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str], clock: datetime,
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
    ) -> None:  # fmt: skip
        key = make_key(tenant)
        exhausted(live_server, key, clock)
        ran: list[str] = []

        async def scenario() -> None:
            async with AsyncTaskmeterClient(live_server.url, key, spool_dir=tmp_path) as client:
                async with client.task(customer="acme"):
                    ran.append("off")
                with caplog.at_level(logging.WARNING, logger="taskmeter.client"):
                    async with client.task(customer="acme", budget_check="warn"):
                        ran.append("warn")
                assert "budget 'jobs' has reached its limit" in caplog.text
                with pytest.raises(BudgetExceeded) as denied:
                    async with client.task(customer="acme", budget_check="enforce"):
                        ran.append("enforce")
                assert denied.value.budget == "jobs"
                async with client.task(customer="globex", budget_check="enforce"):  # no budget of globex
                    ran.append("globex")
                with pytest.raises(RuntimeError, match="async with"), client.task(customer="acme", budget_check="warn"):
                    ran.append("plain with")
                with pytest.raises(ValueError, match="on_unavailable"):
                    client.task(customer="acme", budget_check="enforce", on_unavailable="maybe")

        asyncio.run(scenario())
        assert ran == ["off", "warn", "globex"]

    def test_the_denied_task_records_no_event(
        self, live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str], clock: datetime, tmp_path: Path
    ) -> None:
        key = make_key(tenant)
        exhausted(live_server, key, clock)

        async def scenario() -> None:
            async with AsyncTaskmeterClient(live_server.url, key, spool_dir=tmp_path) as client:
                with pytest.raises(BudgetExceeded):
                    async with client.task(customer="acme", task="refused", budget_check="enforce"):
                        pass
                assert await client.flush(10)

        asyncio.run(scenario())
        with live_server.client(key) as api:
            assert api.get("/v1/tasks/refused/events").status_code == 404


class TestServerUnreachable:
    """A server that answered, then stopped: the port refuses connections."""

    def test_allow_by_default_deny_when_asked(
        self, live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str], clock: datetime,
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
    ) -> None:  # fmt: skip
        key = make_key(tenant)
        with live_server.client(key) as api:  # runs the app's startup once
            assert api.get("/v1/budgets").status_code == 200
        server = ServerThread(live_server.app, lifespan="off").__enter__()
        ran: list[str] = []
        with TaskmeterClient(server.url, key, spool_dir=tmp_path / "sync", max_retries=0) as client:
            with client.task(customer="acme", budget_check="enforce", on_unavailable="deny"):
                ran.append("up")
            server.__exit__()
            with caplog.at_level(logging.WARNING, logger="taskmeter.client"):
                with client.task(customer="acme", budget_check="enforce"):  # the default: allow
                    ran.append("allow")
            assert "could not check budgets for acme" in caplog.text
            with pytest.raises(BudgetUnavailable) as refused:
                with client.task(customer="acme", budget_check="enforce", on_unavailable="deny"):
                    ran.append("deny")
            assert isinstance(refused.value, BudgetExceeded) and "ConnectError" in refused.value.reason
            with client.task(customer="acme", budget_check="warn", on_unavailable="deny"):  # warn never stops
                ran.append("warn")
        with TaskmeterClient(server.url, key, spool_dir=tmp_path / "deny", on_unavailable="deny") as denying:
            with pytest.raises(BudgetUnavailable), denying.task(customer="acme", budget_check="enforce"):
                ran.append("client deny")

        async def scenario() -> None:
            async with AsyncTaskmeterClient(server.url, key, spool_dir=tmp_path / "async") as client:
                async with client.task(customer="acme", budget_check="enforce"):
                    ran.append("async allow")
                with pytest.raises(BudgetUnavailable):
                    async with client.task(customer="acme", budget_check="enforce", on_unavailable="deny"):
                        ran.append("async deny")

        asyncio.run(scenario())
        assert ran == ["up", "allow", "warn", "async allow"]
