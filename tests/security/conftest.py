"""Security scenarios: tenants with a full set of data (plans, customers, events, tasks, a
closed month with a finalized invoice and a credit note), built through the public services.

Everything a `World` owns is named after its tenant (`bravo-cust`, `bravo-task-1`, invoice
numbers `INV-bravo-...`), so a response of another tenant that mentions the name is a leak.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from sqlalchemy import Engine, insert, select

from api.app import create_app
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.periods import parse_month
from metering.core.tables import events as event_table
from metering.core.tables import quarantine
from metering.core.tenants import Tenant, create_api_key, parse_scopes
from metering.events.ingest import ingest_events, to_us
from pricing import credit_notes, invoices, service
from pricing.tables import disputes
from pricing.tables import invoices as invoice_table
from tests.conftest import TEST_SECRET, LiveServer

CLOSED_MONTH = "2026-10"
WEBHOOK_SECRET = "whsec_security_tests"
PRICES = [{"provider": "acme-ai", "model": "acme-large", "input": "3.00", "output": "15.00",
           "cache_read": "0.30", "cache_write": "3.75"}]  # fmt: skip


@dataclass(frozen=True)
class World:
    """A tenant and the ids of what it owns."""

    tenant: Tenant
    key: str  # all scopes
    key_id: int
    customer: str
    task: str
    event_id: str
    plan: str
    invoice_id: int
    invoice_number: str
    quarantine_id: int = 0  # an event of 1600, stored by hand, that the rollup set aside
    budget: str = ""
    dispute_id: int = 0  # an open dispute of its task 1

    @property
    def name(self) -> str:
        return self.tenant.name

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def build_world(engine: Engine, tenant: Tenant, *, now: datetime) -> World:
    """Config, two months of events rolled up, October closed, a credit note on its invoice."""
    p = tenant.name
    config = {
        "prices": PRICES,
        "plans": [
            {"id": f"{p}-jobs", "type": "per_job", "prices": {"default": "0.50", "support_ticket": "1.20"}},
            {"id": f"{p}-tokens", "type": "per_token",
             "rates": {"input": "6.00", "output": "30.00", "cache_read": "0.60", "cache_write": "7.50"}},
        ],
        "customers": [{"id": f"{p}-cust", "plan": f"{p}-jobs", "compare_with": [f"{p}-tokens"]}],
        "budgets": [{"id": f"{p}-budget", "scope": {"customer": f"{p}-cust"}, "measure": "billed", "limit": "1",
                     "period": "month", "alerts": ["0.1"], "enforce": True}],
    }
    with unit_of_work(engine) as session:
        service.load_config(session, tenant, yaml.safe_dump(config), now=datetime(2020, 1, 1, tzinfo=UTC))
        key, key_id = create_api_key(session, tenant, parse_scopes("ingest,read,admin"), secret=TEST_SECRET.encode(), now=now)
    events: list[dict[str, Any]] = []
    for n, (day, outcome) in enumerate([("2026-10-05", "completed"), ("2026-10-20", "failed"), ("2026-11-10", None)], 1):
        task, time = f"{p}-task-{n}", f"{day}T10:00:00Z"
        events.append({"id": f"{p}-evt-{n}", "type": "usage", "time": time, "customer": f"{p}-cust", "task": task,
                       "task_type": "support_ticket", "provider": "acme-ai", "model": "acme-large",
                       "input_tokens": 1_000_000 * n, "output_tokens": 1000 * n})  # fmt: skip
        if outcome:
            events.append({"id": f"{p}-end-{n}", "type": f"task.{outcome}", "time": time, "customer": f"{p}-cust", "task": task})
    with unit_of_work(engine) as session:
        result = ingest_events(session, tenant.id, events, now=now)
    assert not result.rejected, result.rejected
    with engine.begin() as connection:  # refused at the door: written by hand, for the quarantine
        connection.execute(insert(event_table).values(
            tenant_id=tenant.id, event_id=f"{p}-evt-old", type="usage", time_us=to_us(datetime(1600, 1, 1, tzinfo=UTC)),
            customer=f"{p}-cust", task=f"{p}-task-1", provider="acme-ai", model="acme-large", input_tokens=1,
            output_tokens=1, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0, content_hash="0" * 32,
            ingested_us=0,
        ))  # fmt: skip
    with unit_of_work(engine) as session:  # the close rolls every event up first
        invoices.close_period(session, tenant, parse_month(CLOSED_MONTH, tenant.timezone), now=now)
    with unit_of_work(engine) as session:
        invoice_id, number = session.execute(
            select(invoice_table.c.id, invoice_table.c.number).where(invoice_table.c.tenant_id == tenant.id)
        ).one()
        credit_notes.create_credit_note(session, tenant, invoice_id, amount="0.10", reason=f"{p} goodwill", now=now)
        quarantine_id = session.execute(select(quarantine.c.id).where(quarantine.c.tenant_id == tenant.id)).scalar_one()
        dispute_id = session.execute(
            insert(disputes).values(
                tenant_id=tenant.id, customer=f"{p}-cust", task=f"{p}-task-1", reason=f"{p} dispute", status="open",
                opened_at=now, opened_by="key:test",
            ).returning(disputes.c.id)
        ).scalar_one()  # fmt: skip
    return World(
        tenant, key, key_id, f"{p}-cust", f"{p}-task-1", f"{p}-evt-1", f"{p}-jobs", invoice_id, number, quarantine_id, budget=f"{p}-budget", dispute_id=dispute_id
    )


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """The test settings, with a Stripe webhook secret: the webhook answers (400 for a bad
    signature) instead of 503 (off)."""
    return Settings(
        env="test", database_url=database_url, secret_key=TEST_SECRET, scheduler_enabled=False,
        reports_dir=tmp_path / "reports", stripe_webhook_secret=WEBHOOK_SECRET,
    )  # fmt: skip


@pytest.fixture
def make_world(engine: Engine, make_tenant: Callable[..., Tenant]) -> Callable[[str], World]:
    def make(name: str) -> World:
        return build_world(engine, make_tenant(name), now=datetime.now(UTC))

    return make


@pytest.fixture
def alpha(make_world: Callable[[str], World]) -> World:
    return make_world("alpha")


@pytest.fixture
def bravo(make_world: Callable[[str], World]) -> World:
    return make_world("bravo")


@pytest.fixture
def server_for(engine: Engine) -> Iterator[Callable[[Settings], LiveServer]]:
    """A live server with settings of the test's choosing (rate limits, body limits)."""
    started: list[LiveServer] = []

    def start(settings: Settings) -> LiveServer:
        server = LiveServer(settings, engine).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


@dataclass(frozen=True)
class RouteInfo:
    """A route as a client sees it: its full path, methods and FastAPI dependant (None for
    plain Starlette routes such as /docs)."""

    path: str
    methods: frozenset[str]
    dependant: Any


def flat_routes(app: FastAPI) -> list[RouteInfo]:
    """Every route of the app, included routers (nested too) resolved to full paths. FastAPI
    >= 0.16x keeps included routers as nodes of `app.routes`; older versions list the routes."""
    try:
        from fastapi.routing import _iter_routes_with_context
    except ImportError:  # pragma: no cover - older FastAPI
        pairs: Any = [(route, None) for route in app.routes]
    else:
        pairs = _iter_routes_with_context(app.routes)
    found = []
    for route, context in pairs:
        source = context if context is not None else route
        path = re.sub(r"{(\w+):\w+}", r"{\1}", source.path)  # as clients and OpenAPI name it: {task}, not {task:path}
        found.append(RouteInfo(path, frozenset(getattr(source, "methods", None) or ()), getattr(source, "dependant", None)))
    return found


def throwaway_app() -> FastAPI:
    """The app's routes, without a database (engines connect lazily)."""
    return create_app(Settings(env="test", database_url="sqlite://", scheduler_enabled=False))


def sign_in(browser: httpx.Client, key: str) -> httpx.Response:
    """Sign a browser in to the dashboard with a key, as a person would (the form's CSRF token)."""
    page = browser.get("/dashboard/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text
    return browser.post("/dashboard/sign-in", data={"key": key, "csrf": token.group(1), "next": "/dashboard"})
