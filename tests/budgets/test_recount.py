"""Counters recounted from the stored events (`metering.spend.recount`): a budget created or changed
mid-period starts from the spend already in its period, and spend already counted is re-priced
when the tenant's prices or customers' plans change. Compared with the rollup exactly."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select

from metering.core.db import unit_of_work
from metering.core.periods import period_of
from metering.core.tables import task_usage, usage_daily
from metering.core.tenants import Tenant
from metering.events.ingest import ingest_events
from metering.rollup.pipeline import rollup_tenant
from metering.spend import budget_repository
from metering.spend import counters as spend
from pricing.service import load_config
from tests.budgets.test_counters import _random_events
from tests.factories import make_event

NOW = datetime(2026, 11, 18, 10, 30, tzinfo=UTC)
IN_PERIOD = "2026-11-10T00:00:00Z"
LAST_MONTH = "2026-10-20T00:00:00Z"


def ingest(engine: Engine, tenant: Tenant, events: list[dict[str, Any]]) -> None:
    with unit_of_work(engine) as session:
        ingest_events(session, tenant.id, events, now=NOW)


def put(engine: Engine, tenant: Tenant, budget_id: str, **fields: Any) -> None:
    body = {"measure": "provider_cost", "limit": "100", "period": "month", **fields}
    with unit_of_work(engine) as session:
        budget_repository.put(session, tenant.id, budget_id, body, now=NOW)


def authorized(engine: Engine, tenant: Tenant, **attributes: Any) -> dict[str, dict[str, Any]]:
    with engine.connect() as connection:
        answer = spend.authorize(connection, tenant.id, {"customer": "acme", **attributes}, now=NOW)
    return {b["id"]: b for b in answer["budgets"]}


def counter(engine: Engine, tenant: Tenant, budget_id: str) -> int:
    """The budget's current-period counter: femto-units for money, else the count."""
    with engine.connect() as connection:
        chosen = budget_repository.get(connection, tenant.id, budget_id)
        (found,) = spend.standings(connection, tenant.id, [chosen], tenant.timezone, now=NOW)
    return found.used * 10**6 + found.rem if chosen.money else found.used


def rollup_cost(engine: Engine, tenant: Tenant, customer: str | None = None) -> int:
    """November's cost in femto-units from the rollup's daily table."""
    rollup_tenant(engine, tenant, now=NOW)
    with engine.connect() as connection:
        rows = connection.execute(select(usage_daily)).all()
    return sum(
        r.cost_nanos * 10**6 + r.cost_rem
        for r in rows
        if r.day.month == 11 and (customer is None or r.customer == customer)
    )


USAGE = [
    make_event(id="u1", customer="acme", task="a1", time=IN_PERIOD, model="gpt-4o", input_tokens=10_000,
               cache_read_tokens=4_000, output_tokens=1_000),
    make_event(id="u2", customer="acme", task="a2", time="2026-11-01T00:00:00Z", model="gpt-4o-mini",
               input_tokens=123_457, output_tokens=7_001, actor="ben", agent="ben/codex"),
    make_event(id="u3", customer="globex", task="g1", time=IN_PERIOD, model="gpt-4o", input_tokens=5_000),
    make_event(id="u0", customer="acme", task="a0", time=LAST_MONTH, model="gpt-4o", input_tokens=50_000),
]  # fmt: skip


class TestBackfill:
    def test_a_new_budget_starts_from_the_spend_already_in_its_period(self, engine: Engine, tenant: Tenant) -> None:
        ingest(engine, tenant, USAGE)
        put(engine, tenant, "acme-cost", scope={"customer": "acme"}, enforce=True, limit="0.03")
        put(engine, tenant, "all-tokens", measure="tokens", limit="1000000", period="week")
        # gpt-4o 0.030000 (u1) + gpt-4o-mini 123,457 x 0.15 + 7,001 x 0.60 per million (u2); not October's u0
        expected = Decimal("0.03") + Decimal("0.01851855") + Decimal("0.0042006")
        assert Decimal(counter(engine, tenant, "acme-cost")).scaleb(-15) == expected
        assert counter(engine, tenant, "acme-cost") == rollup_cost(engine, tenant, "acme")
        answer = authorized(engine, tenant)
        assert answer["acme-cost"]["used"] == str(expected) and answer["acme-cost"]["remaining"] == "0"
        with engine.connect() as connection:
            assert spend.authorize(connection, tenant.id, {"customer": "acme"}, now=NOW)["denied_by"] == "acme-cost"
        # the week of Monday 16 November holds none of these events
        assert counter(engine, tenant, "all-tokens") == 0

    def test_then_ingestion_adds_to_the_backfilled_counter(self, engine: Engine, tenant: Tenant) -> None:
        ingest(engine, tenant, USAGE[:2])
        put(engine, tenant, "acme-cost", scope={"customer": "acme"})
        ingest(engine, tenant, [*USAGE[2:], make_event(id="u4", customer="acme", task="a4", time=IN_PERIOD,
                                                      model="gpt-4o", output_tokens=333)])  # fmt: skip
        assert counter(engine, tenant, "acme-cost") == rollup_cost(engine, tenant, "acme")

    def test_a_changed_scope_starts_from_the_new_scopes_spend(self, engine: Engine, tenant: Tenant) -> None:
        ingest(engine, tenant, USAGE)
        put(engine, tenant, "b", scope={"customer": "globex"})
        put(engine, tenant, "b", scope={"customer": "acme", "actor": "ben"})
        assert Decimal(counter(engine, tenant, "b")).scaleb(-15) == Decimal("0.01851855") + Decimal("0.0042006")
        put(engine, tenant, "b", scope={"customer": "acme", "actor": "ben"}, limit="5")  # the limit only: kept
        assert Decimal(counter(engine, tenant, "b")).scaleb(-15) == Decimal("0.01851855") + Decimal("0.0042006")

    def test_jobs_of_the_period_and_a_later_failure(self, engine: Engine, tenant: Tenant) -> None:
        ingest(engine, tenant, [
            make_event(id="c1", type="task.completed", task="t1", time=IN_PERIOD),
            make_event(id="c2", type="task.completed", task="t2", time=IN_PERIOD),
            make_event(id="c3", type="task.completed", task="t3", time=IN_PERIOD),
            make_event(id="f3", type="task.failed", task="t3", time="2026-11-11T00:00:00Z"),
            make_event(id="c0", type="task.completed", task="t0", time=LAST_MONTH),
        ])  # fmt: skip
        with unit_of_work(engine) as session:
            budget_repository.replace_all(
                session, tenant.id,
                [budget_repository.Budget.model_validate({"id": "jobs", "measure": "jobs", "limit": 10, "period": "month"})],
                now=NOW,
            )  # fmt: skip
        assert counter(engine, tenant, "jobs") == 2
        # t1 completed before the budget existed; its failure now takes it out of the count
        ingest(engine, tenant, [make_event(id="f1", type="task.failed", task="t1", time="2026-11-12T00:00:00Z")])
        assert counter(engine, tenant, "jobs") == 1
        rollup_tenant(engine, tenant, now=NOW)
        with engine.connect() as connection:
            completed = connection.execute(select(task_usage.c.task, task_usage.c.ended_us).where(task_usage.c.status == "completed")).all()
        november = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * 10**6
        assert [t for t, ended in completed if ended >= november] == ["t2"]


class TestRepricing:
    PRICES = """
prices:
  - {provider: acme-ai, model: acme-large, input: "%s", output: "15.00"}
plans:
  - {id: plus, type: per_token, markup: "%s"}
customers:
  - {id: acme, plan: plus}
budgets:
  - {id: cost, measure: provider_cost, limit: "100", period: month}
  - {id: billed, scope: {customer: acme}, measure: billed, limit: "100", period: month}
"""

    def config(self, engine: Engine, tenant: Tenant, input_rate: str, markup: str) -> None:
        with unit_of_work(engine) as session:
            load_config(session, tenant, self.PRICES % (input_rate, markup), now=NOW)

    def test_a_price_change_reprices_the_open_period_as_the_rollup_does(self, engine: Engine, tenant: Tenant) -> None:
        self.config(engine, tenant, "3.00", "0.40")
        ingest(engine, tenant, [
            make_event(id="x1", task="x1", time=IN_PERIOD, provider="acme-ai", model="acme-large", input_tokens=1_000_000, output_tokens=0),
            make_event(id="x2", task="x2", time=LAST_MONTH, provider="acme-ai", model="acme-large", input_tokens=1_000_000, output_tokens=0),
        ])  # fmt: skip
        assert Decimal(counter(engine, tenant, "cost")).scaleb(-15) == Decimal("3.00")
        assert counter(engine, tenant, "cost") == rollup_cost(engine, tenant)
        self.config(engine, tenant, "4.50", "0.40")
        assert Decimal(counter(engine, tenant, "cost")).scaleb(-15) == Decimal("4.50")
        assert Decimal(counter(engine, tenant, "billed")).scaleb(-15) == Decimal("4.50") * Decimal("1.40")
        assert counter(engine, tenant, "cost") == rollup_cost(engine, tenant)  # the rollup rebuilt at the new price

    def test_a_plan_change_rerates_the_billed_measure(self, engine: Engine, tenant: Tenant) -> None:
        self.config(engine, tenant, "3.00", "0.40")
        ingest(engine, tenant, [make_event(id="x1", task="x1", time=IN_PERIOD, provider="acme-ai", model="acme-large",
                                           input_tokens=1_000_000, output_tokens=0)])  # fmt: skip
        assert Decimal(counter(engine, tenant, "billed")).scaleb(-15) == Decimal("4.20")
        self.config(engine, tenant, "3.00", "1.00")
        assert Decimal(counter(engine, tenant, "billed")).scaleb(-15) == Decimal("6.00")


class TestRandomBackfillEqualsTheRollup:
    @pytest.mark.parametrize("seed", [3, 4])
    def test_budgets_put_midway_through_random_batches(self, engine: Engine, tenant: Tenant, seed: int) -> None:
        rng = random.Random(seed)
        sent: list[dict[str, Any]] = []
        for batch in range(6):
            if batch == 3:  # the budgets arrive after half the events
                put(engine, tenant, "cost-all")
                put(engine, tenant, "cost-c1", scope={"customer": "c1"}, period="week")
                put(engine, tenant, "jobs-all", measure="jobs", limit="1000")
                put(engine, tenant, "tokens-c2", measure="tokens", limit="1000000000", scope={"customer": "c2"}, period="day")
            events = _random_events(rng, rng.randrange(10, 60), start=batch * 100)
            ingest(engine, tenant, events + rng.sample(sent, min(len(sent), 5)))
            sent += events
        rollup_tenant(engine, tenant, now=NOW)
        month, week, day = (period_of(NOW, "UTC", kind) for kind in ("month", "week", "day"))
        with engine.connect() as connection:
            daily = connection.execute(select(usage_daily)).all()
            tasks = connection.execute(select(task_usage).where(task_usage.c.status == "completed")).all()

        def cost(period: Any, customer: str | None = None) -> int:
            return sum(r.cost_nanos * 10**6 + r.cost_rem for r in daily
                       if period.first_day <= r.day < period.next_first_day and customer in (None, r.customer))  # fmt: skip

        tokens = sum(r.input_tokens + r.output_tokens for r in daily
                     if r.day == day.first_day and r.customer == "c2")  # fmt: skip
        jobs = sum(1 for t in tasks if month.start <= datetime.fromtimestamp(t.ended_us / 10**6, UTC) < month.end)
        assert counter(engine, tenant, "cost-all") == cost(month) and cost(month) > 0
        assert counter(engine, tenant, "cost-c1") == cost(week, "c1")
        assert counter(engine, tenant, "tokens-c2") == tokens
        assert counter(engine, tenant, "jobs-all") == jobs and jobs > 0
