"""Jobs count at settlement when the tenant has outcome rules (`pricing.budget_settlement`): a
completed task awaiting its window counts nothing in a `jobs` budget nor in the jobs part of a
`billed` one; it counts when it settles, in the period holding its settlement, as the invoice
bills it. Without rules nothing changes (tests/budgets/test_counters.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from freezegun import freeze_time
from sqlalchemy import Engine

from api.scheduler import Runtime, run_rollup
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.spend import budget_repository
from metering.spend import counters as spend
from pricing.budget_settlement import settle_counters
from tests.pricing.conftest import Billing, at, ended, job, make_billing  # noqa: F401 - the fixture

BUDGETS = [
    {"id": "jobs", "scope": {"customer": "acme"}, "measure": "jobs", "limit": 100, "period": "month"},
    {"id": "billed", "scope": {"customer": "acme"}, "measure": "billed", "limit": "100", "period": "month"},
]


def used(engine: Engine, billing: Billing, budget_id: str, now: datetime) -> Decimal:
    with engine.connect() as connection:
        chosen = budget_repository.get(connection, billing.tenant.id, budget_id)
        (found,) = spend.standings(connection, billing.tenant.id, [chosen], "UTC", now=now)
    return spend.used_decimal(chosen, found.used, found.rem)


def settle_now(billing: Billing) -> datetime:
    now = datetime.now(UTC)
    with unit_of_work(billing.engine) as session:
        assert settle_counters(session, billing.tenant, now=now)
    return now


def billed_jobs(billing: Billing, now: datetime) -> Decimal:
    invoice = billing.upcoming(now=now)
    return sum((line["quantity"] for line in invoice["lines"] if line["kind"] == "jobs"), Decimal(0))


def test_jobs_count_when_they_settle_as_the_invoice_bills_them(
    engine: Engine, make_billing: Callable[..., Billing],  # noqa: F811 - the fixture
    settings: Settings,
) -> None:  # fmt: skip
    billing = make_billing()
    billing.config({"outcomes": [{"task_type": "default", "settle_after": "72h"}], "budgets": BUDGETS},
                   now=at("2026-10-01T00:00:00Z"))  # fmt: skip
    events: list[Any] = [
        job("a", "2026-10-10T00:00:00Z"),
        job("b", "2026-10-10T00:00:00Z"), ended("b", "2026-10-11T00:00:00Z", "reopened"),  # never settles
        ended("c", "2026-10-10T00:00:00Z", "failed"),
        job("d", "2026-10-30T12:00:00Z"),  # settles on 2 November
    ]  # fmt: skip
    billing.send(*events)
    # ingestion counts no job of a tenant with rules: only the failed task's price
    assert used(engine, billing, "jobs", at("2026-10-10T00:00:00Z")) == 0

    with freeze_time("2026-10-12T23:59:59Z"):  # a's window is still running
        now = settle_now(billing)
        assert used(engine, billing, "jobs", now) == 0 == billed_jobs(billing, now)
        assert used(engine, billing, "billed", now) == Decimal("0.05")  # c failed: the failed price
    with freeze_time("2026-10-13T00:00:00Z"):  # a settles (72 h after its completion)
        now = settle_now(billing)
        assert used(engine, billing, "jobs", now) == 1 == billed_jobs(billing, now)
        assert used(engine, billing, "billed", now) == Decimal("0.50") + Decimal("0.05")
    billing.send(ended("a", "2026-10-20T00:00:00Z", "reopened"))  # settlement is final
    with freeze_time("2026-10-31T00:00:00Z"):  # d completed, not settled
        now = settle_now(billing)
        assert used(engine, billing, "jobs", now) == 1 == billed_jobs(billing, now)
    with freeze_time("2026-11-02T12:00:00Z"):  # d settles in November: November's budget counts it
        now = datetime.now(UTC)
        run_rollup(Runtime(settings, engine), now=now)  # the scheduler's rollup settles the counters
        assert used(engine, billing, "jobs", now) == 1 == billed_jobs(billing, now)
        assert used(engine, billing, "billed", now) == Decimal("0.50")


def test_a_budget_put_over_http_counts_the_settled_jobs_only(
    engine: Engine, make_billing: Callable[..., Billing],  # noqa: F811 - the fixture
    live_server: Any, make_key: Callable[..., str],
) -> None:  # fmt: skip
    billing = make_billing()
    billing.config({"outcomes": [{"task_type": "default", "settle_after": "1h"}]}, now=at("2026-10-01T00:00:00Z"))
    billing.send(job("a", "2026-10-10T00:00:00Z"), job("b", "2026-10-10T05:00:00Z"))
    with freeze_time("2026-10-10T05:30:00Z"), live_server.client(make_key(billing.tenant)) as api:
        answer = api.put("/v1/budgets/jobs", json=BUDGETS[0])
        assert answer.status_code == 200 and answer.json()["used"] == "1"  # b's hour is still running
