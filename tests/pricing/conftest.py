"""Billing scenarios on a real database: events in, rollup, config, close, invoices out.

`billing` drives one tenant through the public services with an explicit `now` (time is an
argument); the factories name only what a test cares about.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, select

from metering.core.db import unit_of_work
from metering.core.periods import parse_month
from metering.core.tenants import Tenant
from metering.events.ingest import ingest_events
from metering.rollup.pipeline import rollup_tenant
from pricing import invoices, service
from pricing.tables import credit_notes, invoice_lines
from pricing.tables import invoices as invoice_table

# The tenant's own model price: cost = input × 3 + output × 15 + cache reads × 0.30 per million.
PRICES = [{"provider": "acme-ai", "model": "acme-large", "input": "3.00", "output": "15.00",
           "cache_read": "0.30", "cache_write": "3.75"}]  # fmt: skip
RATES = {"input": "6.00", "output": "30.00", "cache_read": "0.60", "cache_write": "7.50"}
JOBS = {"id": "jobs", "type": "per_job", "prices": {"default": "0.50", "support_ticket": "1.20"}, "failed": "0.05"}
TOKENS = {"id": "tokens", "type": "per_token", "rates": RATES}
_ids = itertools.count(1)


def at(text: str) -> datetime:
    """An instant from RFC 3339 text (`Z` allowed)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def usage(task: str, time: str, *, customer: str = "acme", input_tokens: int = 1_000_000, output_tokens: int = 0,
          cache_read_tokens: int = 0, model: str = "acme-large", **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"id": f"u-{next(_ids)}", "type": "usage", "time": time, "customer": customer, "task": task,
            "provider": "acme-ai", "model": model, "input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_read_tokens": cache_read_tokens, **extra}  # fmt: skip


def ended(task: str, time: str, outcome: str = "completed", *, customer: str = "acme", task_type: str | None = None) -> dict[str, Any]:
    event = {"id": f"e-{next(_ids)}", "type": f"task.{outcome}", "time": time, "customer": customer, "task": task}
    return event | ({"task_type": task_type} if task_type else {})


def job(task: str, time: str, outcome: str = "completed", **fields: Any) -> list[dict[str, Any]]:
    """A task with one usage event, ending at the same instant."""
    return [usage(task, time, **{k: v for k, v in fields.items() if k != "task_type"}),
            ended(task, time, outcome, customer=fields.get("customer", "acme"), task_type=fields.get("task_type"))]  # fmt: skip


@dataclass
class Billing:
    engine: Engine
    tenant: Tenant

    def config(self, config: dict[str, Any] | str, *, now: datetime) -> dict[str, Any]:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        with unit_of_work(self.engine) as session:
            return service.load_config(session, self.tenant, text, now=now)

    def send(self, *events: dict[str, Any] | list[dict[str, Any]], now: datetime | None = None) -> None:
        flat = [e for item in events for e in (item if isinstance(item, list) else [item])]
        with unit_of_work(self.engine) as session:
            result = ingest_events(session, self.tenant.id, flat, now=now or datetime(2100, 1, 1, tzinfo=UTC))
        assert not result.rejected, result.rejected

    def rollup(self, *, now: datetime) -> None:
        rollup_tenant(self.engine, self.tenant, now=now)

    def close(self, month: str, *, now: datetime) -> dict[str, Any]:
        with unit_of_work(self.engine) as session:
            return invoices.close_period(session, self.tenant, parse_month(month, self.tenant.timezone), now=now)

    def upcoming(self, customer: str = "acme", *, now: datetime, month: str | None = None) -> dict[str, Any]:
        self.rollup(now=now)
        with unit_of_work(self.engine) as session:
            return invoices.upcoming_invoice(session, self.tenant, customer, now=now, month=month)

    def invoice(self, month: str, customer: str = "acme") -> dict[str, Any]:
        with unit_of_work(self.engine) as session:
            invoice_id = session.execute(
                select(invoice_table.c.id).where(
                    invoice_table.c.tenant_id == self.tenant.id, invoice_table.c.period == month, invoice_table.c.customer == customer
                )
            ).scalar_one()
            return invoices.invoice_view(session, self.tenant, invoice_id)

    def snapshot(self) -> list[tuple[Any, ...]]:
        """Every invoice, line and credit note row of the tenant, Stripe columns excluded."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(invoice_table).where(invoice_table.c.tenant_id == self.tenant.id).order_by(invoice_table.c.id)
            ).all()
            lines = connection.execute(
                select(invoice_lines).join(invoice_table).where(invoice_table.c.tenant_id == self.tenant.id).order_by(invoice_lines.c.id)
            ).all()
            notes = connection.execute(select(credit_notes).where(credit_notes.c.tenant_id == self.tenant.id)).all()
        return [tuple(r) for r in (*rows, *lines, *notes)]


def lines_of(invoice: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(kind, adjusts_period or '', amount) per line."""
    return [(line["kind"], line["adjusts_period"] or "", line["amount"]) for line in invoice["lines"]]


@pytest.fixture
def make_billing(engine: Engine, make_tenant: Callable[..., Tenant]) -> Callable[..., Billing]:
    def make(name: str = "acme-ai", timezone: str = "UTC", currency: str = "USD",
             plans: list[dict[str, Any]] | None = None, customers: list[dict[str, Any]] | None = None) -> Billing:  # fmt: skip
        billing = Billing(engine, make_tenant(name, timezone=timezone, currency=currency))
        config = {
            "prices": PRICES,
            "plans": plans if plans is not None else [JOBS, TOKENS],
            "customers": customers if customers is not None else [{"id": "acme", "plan": "jobs", "compare_with": ["tokens"]}],
        }
        billing.config(config, now=datetime(2020, 1, 1, tzinfo=UTC))
        return billing

    return make


@pytest.fixture
def billing(make_billing: Callable[..., Billing]) -> Billing:
    return make_billing()
