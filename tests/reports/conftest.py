"""Report scenarios on a real database: events in, rollup, config, close, CSVs out.

`Books` drives one tenant through the public services with an explicit `now`; the factories
name only what a test cares about. The hand-built October of `october` is worked out in
tests/reports/test_monthly.py.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine

from metering.core.db import unit_of_work
from metering.core.periods import parse_month
from metering.core.tenants import Tenant
from metering.events.ingest import ingest_events
from metering.rollup.pipeline import rollup_tenant
from pricing import invoices, service
from reports.monthly import write_month

# The tenant's own model price, per million: input 3.00, output 15.00, cache reads 0.30.
PRICES = [{"provider": "acme-ai", "model": "acme-large", "input": "3.00", "output": "15.00",
           "cache_read": "0.30", "cache_write": "3.75"}]  # fmt: skip
JOBS = {
    "id": "jobs",
    "type": "per_job",
    "prices": {"default": "0.50", "support_ticket": "1.20"},
    "failed": "0.05",
}
TOKENS = {"id": "tokens", "type": "per_token",
          "rates": {"input": "6.00", "output": "30.00", "cache_read": "0.60", "cache_write": "7.50"}}  # fmt: skip
CUSTOMERS = [{"id": "acme", "plan": "jobs", "compare_with": ["tokens"]},
             {"id": "globex", "plan": "tokens", "compare_with": ["jobs"]}]  # fmt: skip
LATER = datetime(2100, 1, 1, tzinfo=UTC)
_ids = itertools.count(1)


def usage(task: str, time: str, *, customer: str = "acme", input_tokens: int = 0, output_tokens: int = 0,
          cache_read_tokens: int = 0, model: str = "acme-large", **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"id": f"u-{next(_ids)}", "type": "usage", "time": time, "customer": customer, "task": task,
            "provider": "acme-ai", "model": model, "input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_read_tokens": cache_read_tokens, **extra}  # fmt: skip


def ended(
    task: str, time: str, outcome: str = "completed", *, customer: str = "acme", task_type: str | None = None
) -> dict[str, Any]:
    event = {
        "id": f"e-{next(_ids)}",
        "type": f"task.{outcome}",
        "time": time,
        "customer": customer,
        "task": task,
    }
    return event | ({"task_type": task_type} if task_type else {})


def started(task: str, time: str, *, customer: str = "acme") -> dict[str, Any]:
    return {"id": f"s-{next(_ids)}", "type": "task.started", "time": time, "customer": customer, "task": task}


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


@dataclass
class Books:
    engine: Engine
    tenant: Tenant

    def config(self, config: dict[str, Any], *, now: datetime = datetime(2020, 1, 1, tzinfo=UTC)) -> None:
        with unit_of_work(self.engine) as session:
            service.load_config(session, self.tenant, yaml.safe_dump(config), now=now)

    def send(self, *events: dict[str, Any]) -> None:
        with unit_of_work(self.engine) as session:
            result = ingest_events(session, self.tenant.id, list(events), now=LATER)
        assert not result.rejected, result.rejected

    def rollup(self) -> None:
        rollup_tenant(self.engine, self.tenant, now=LATER)

    def close(self, month: str, *, now: datetime) -> dict[str, Any]:
        with unit_of_work(self.engine) as session:
            return invoices.close_period(
                session, self.tenant, parse_month(month, self.tenant.timezone), now=now
            )

    def write(self, month: str, out_dir: Path) -> dict[str, str]:
        """The five files of the month, by report name, as text."""
        self.rollup()
        write_month(self.engine, self.tenant, month, out_dir)
        return {name: (out_dir / f"{name}-{month}.csv").read_bytes().decode("utf-8")
                for name in ("customers", "invoice-lines", "tasks", "comparison", "spend")}  # fmt: skip

    def rows(self, month: str, out_dir: Path) -> dict[str, list[dict[str, str]]]:
        return {name: read_csv(text) for name, text in self.write(month, out_dir).items()}


@pytest.fixture
def make_books(engine: Engine, make_tenant: Callable[..., Tenant]) -> Callable[..., Books]:
    def make(
        name: str = "acme-ai", timezone: str = "UTC", currency: str = "USD", *, configured: bool = True
    ) -> Books:
        books = Books(engine, make_tenant(name, timezone=timezone, currency=currency))
        if configured:
            books.config({"prices": PRICES, "plans": [JOBS, TOKENS], "customers": CUSTOMERS})
        return books

    return make


@pytest.fixture
def books(make_books: Callable[..., Books]) -> Books:
    return make_books()


def send_october(books: Books) -> None:
    """The hand-built October (costs at the tenant's acme-large price):

    acme (jobs): a1 support ticket completed, 1M in + 100k out = 4.50; a2 failed, 200k in = 0.60;
                 a3 still open, 200k in + 10k out = 0.75 (on Oct 31, 23:00 UTC).
    globex (tokens): g1 code review completed, 500k in incl. 100k cache reads + 50k out = 1.98;
                 g2 began Sep 30 (300k in = 0.90) and finished Oct 1 (100k in = 0.30).
    """
    books.send(
        started("a1", "2026-10-10T09:00:00Z"),
        usage("a1", "2026-10-10T09:30:00Z", input_tokens=1_000_000, output_tokens=100_000),
        ended("a1", "2026-10-10T10:00:00Z", task_type="support_ticket"),
        usage("a2", "2026-10-20T12:00:00Z", input_tokens=200_000),
        ended("a2", "2026-10-20T12:05:00.250Z", "failed"),
        usage("a3", "2026-10-31T23:00:00Z", input_tokens=200_000, output_tokens=10_000),
        usage(
            "g1",
            "2026-10-05T08:00:00Z",
            customer="globex",
            input_tokens=500_000,
            cache_read_tokens=100_000,
            output_tokens=50_000,
            reasoning_tokens=20_000,
        ),
        ended("g1", "2026-10-05T08:10:00Z", customer="globex", task_type="code_review"),
        usage("g2", "2026-09-30T22:00:00Z", customer="globex", input_tokens=300_000),
        usage("g2", "2026-10-01T01:00:00Z", customer="globex", input_tokens=100_000),
        ended("g2", "2026-10-01T02:00:00Z", customer="globex"),
    )
