"""Invoice assembly without a database: a month's drafts from its usage, the plans and what was
billed before (minimum charges, platform fees, late usage of closed months, currencies), with
exact Decimal amounts worked by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

from metering.core.errors import InvalidInput
from metering.core.money import from_minor, to_minor
from metering.core.periods import parse_month
from metering.core.tenants import Tenant
from pricing.assembly import Assembly, BilledInvoice, ClosedMonth, Draft, OpenMonth, Usage, assemble
from pricing.config import validate_config
from pricing.repository import Assignment, StoredPlans, StoredVersion
from tests.pricing.test_rating import task_frame, task_row, token_frame, token_row

TENANT = Tenant(1, "acme-ai", "UTC", "USD")
OCTOBER, SEPTEMBER = parse_month("2026-10", "UTC"), parse_month("2026-09", "UTC")
CREATED = datetime(2026, 8, 1, tzinfo=UTC)
JOBS = {"id": "jobs", "type": "per_job", "prices": {"default": "0.50"}}


def stored(*plans: dict[str, Any]) -> StoredPlans:
    """Plans as stored: version n of each plan in the order given."""
    book = validate_config({"plans": list(plans)}).plans
    rows = tuple(
        StoredVersion(i, plan.id, n, plan.effective_from, CREATED, plan)
        for i, (n, plan) in enumerate(
            ((n, p) for history in book.versions.values() for n, p in enumerate(history, start=1)), start=1
        )
    )
    return StoredPlans(rows, book)


def assigned(**plans: str) -> dict[str, Assignment]:
    return {
        customer: Assignment(i, customer, plan, (), None, CREATED)
        for i, (customer, plan) in enumerate(plans.items(), start=1)
    }


def usage(tokens: pd.DataFrame | None = None, tasks: pd.DataFrame | None = None) -> Usage:
    return Usage(token_frame() if tokens is None else tokens, task_frame() if tasks is None else tasks)


def month(
    plans: StoredPlans, *, used: Usage | None = None, known: tuple[str, ...] = (), **assignments: str
) -> OpenMonth:
    """October, with each customer's plan in force on its last day (`acme="jobs"`)."""
    return OpenMonth(OCTOBER, used or usage(), plans, assigned(**assignments), set(known))


def tasks_in(label: str, *customers: str, outcome: str = "completed") -> pd.DataFrame:
    return task_frame(
        *(
            task_row(customer=c, task=f"{c}-{i}", status=outcome, ended_at=f"{label}-10T12:00:00Z")
            for i, c in enumerate(customers)
        )
    )


def september(
    plans: StoredPlans,
    *,
    used: Usage,
    billed: dict[tuple[str, str], int],
    invoices: dict[str, BilledInvoice] | None = None,
    **assignments: str,
) -> ClosedMonth:
    then = assigned(**assignments)
    return ClosedMonth(SEPTEMBER, used, plans, billed, invoices or {}, then, then)


def lines(draft: Draft) -> list[tuple[str, Decimal, str | None]]:
    return [(line.kind, line.amount, line.adjusts_period) for line in draft.lines]


class TestMonthlyCharges:
    def test_a_minimum_charge_tops_up_the_usage(self) -> None:
        plans = stored(JOBS | {"prices": {"default": "60"}, "minimum": "100"})
        result = assemble(TENANT, month(plans, used=usage(tasks=tasks_in("2026-10", "acme")), acme="jobs"))
        [draft] = result.drafts
        assert lines(draft) == [("jobs", Decimal("60.00"), None), ("minimum", Decimal("40.00"), None)]
        assert draft.total == Decimal("100.00")
        assert (draft.customer, draft.period, draft.currency, draft.plan) == (
            "acme",
            "2026-10",
            "USD",
            "jobs",
        )
        assert draft.plan_versions() == {"jobs": [1]}

    def test_a_customer_without_usage_pays_the_platform_fee_once_the_plan_is_in_force(self) -> None:
        plans = stored(JOBS | {"platform_fee": "20"})
        result = assemble(TENANT, month(plans, known=("idle",), idle="jobs"))
        assert [(d.customer, lines(d), d.total) for d in result.drafts] == [
            ("idle", [("platform_fee", Decimal("20.00"), None)], Decimal("20.00"))
        ]

    def test_a_plan_that_starts_after_the_month_bills_nothing_for_it(self) -> None:
        plans = stored(JOBS | {"platform_fee": "20", "effective_from": "2026-11-01"})
        assert assemble(TENANT, month(plans, known=("idle",), idle="jobs")) == Assembly([], [])

    def test_zero_usage_and_no_monthly_charge_makes_no_invoice(self) -> None:
        assert assemble(TENANT, month(stored(JOBS), known=("acme",), acme="jobs")) == Assembly([], [])

    def test_amounts_are_exact_in_minor_units(self) -> None:
        plans = stored(JOBS | {"prices": {"default": "0.333"}})
        used = usage(tasks=tasks_in("2026-10", "acme", "acme", "acme"))
        [draft] = assemble(TENANT, month(plans, used=used, acme="jobs")).drafts
        assert draft.lines[0].amount_exact == Decimal("0.999")
        assert draft.lines[0].amount == Decimal("1.00")
        assert to_minor(draft.total, "USD") == 100


class TestCustomersWithoutAPlan:
    def test_are_refused_by_name_and_the_others_drafted(self) -> None:
        used = usage(tasks=tasks_in("2026-10", "acme", "stray"))
        result = assemble(TENANT, month(stored(JOBS), used=used, acme="jobs"))
        assert [(d.customer, d.total) for d in result.drafts] == [("acme", Decimal("0.50"))]
        assert result.unrated == {"stray"}
        error = result.refusals[0].error()
        assert isinstance(error, InvalidInput)
        assert error.message == "usage of customers without a plan in 2026-10"
        assert error.detail == [{"field": "customer", "message": "'stray' has usage in 2026-10 but no plan"}]


class TestLateUsage:
    def test_usage_of_a_closed_month_reported_late_is_an_adjustment_line(self) -> None:
        plans = stored(JOBS)
        late = september(
            plans,
            used=usage(tasks=tasks_in("2026-09", "acme", "acme", "acme")),
            billed={("acme", "jobs"): 50},
            invoices={"acme": BilledInvoice("jobs", "USD")},
            acme="jobs",
        )
        october = month(plans, used=usage(tasks=tasks_in("2026-10", "acme")), acme="jobs")
        [draft] = assemble(TENANT, october, [late]).drafts
        assert lines(draft) == [("jobs", Decimal("0.50"), None), ("jobs", Decimal("1.00"), "2026-09")]
        adjustment = draft.lines[1]
        assert adjustment.description == (
            "Adjustment for 2026-09, usage reported after the month closed: completed tasks (billed 0.50, now 1.50)"
        )
        assert (adjustment.quantity, adjustment.unit_price, adjustment.amount_exact) == (
            Decimal(1),
            Decimal("1.00"),
            Decimal("1.00"),
        )
        assert (adjustment.plan, adjustment.plan_version) == ("jobs", None)
        assert draft.total == Decimal("1.50")

    def test_what_was_billed_too_much_is_credited(self) -> None:
        plans = stored(JOBS)
        late = september(
            plans, used=usage(tasks=tasks_in("2026-09", "acme")), billed={("acme", "jobs"): 150}, acme="jobs"
        )
        [draft] = assemble(TENANT, month(plans, acme="jobs"), [late]).drafts
        assert lines(draft) == [("jobs", Decimal("-1.00"), "2026-09")]
        assert draft.total == Decimal("-1.00")

    def test_a_closed_month_billed_exactly_needs_no_adjustment(self) -> None:
        plans = stored(JOBS)
        late = september(
            plans, used=usage(tasks=tasks_in("2026-09", "acme")), billed={("acme", "jobs"): 50}, acme="jobs"
        )
        assert assemble(TENANT, month(plans, acme="jobs"), [late]) == Assembly([], [])

    def test_late_usage_without_a_plan_then_is_refused(self) -> None:
        plans = stored(JOBS)
        late = september(plans, used=usage(tasks=tasks_in("2026-09", "stray")), billed={})
        result = assemble(TENANT, month(plans, acme="jobs"), [late])
        assert result.drafts == [] and result.unrated == {"stray"}
        assert result.refusals[0].message == "late usage of 2026-09 by customers without a plan"


class TestCurrencies:
    def test_a_plan_currency_rounds_to_its_minor_unit(self) -> None:
        plans = stored({"id": "yen", "type": "per_job", "currency": "JPY", "prices": {"default": "12.5"}})
        [draft] = assemble(
            TENANT, month(plans, used=usage(tasks=tasks_in("2026-10", "acme")), acme="yen")
        ).drafts
        assert (draft.currency, lines(draft), draft.total) == (
            "JPY",
            [("jobs", Decimal("13"), None)],
            Decimal("13"),
        )
        assert to_minor(draft.total, "JPY") == 13

    def test_three_decimal_currencies_keep_three_decimals(self) -> None:
        assert from_minor(1234, "KWD") == Decimal("1.234")
        assert from_minor(-5, "USD") == Decimal("-0.05")
        with pytest.raises(ValueError, match="not rounded"):
            to_minor(Decimal("0.005"), "USD")

    def test_late_usage_billed_in_another_currency_cannot_join_the_invoice(self) -> None:
        plans = stored(JOBS)
        late = september(
            plans,
            used=usage(tasks=tasks_in("2026-09", "acme", "acme")),
            billed={("acme", "jobs"): 50},
            invoices={"acme": BilledInvoice("jobs", "USD")},
            acme="jobs",
        )
        euro = stored(JOBS | {"currency": "EUR"})
        october = month(euro, used=usage(tasks=tasks_in("2026-10", "acme")), acme="jobs")
        result = assemble(TENANT, october, [late])
        assert result.drafts == [] and result.unrated == {"acme"}
        assert result.refusals[0].message == "'acme': late usage billed in USD cannot go on a EUR invoice"


def test_token_usage_bills_every_class_of_the_month() -> None:
    plans = stored(
        {
            "id": "tokens",
            "type": "per_token",
            "rates": {"input": "6", "output": "30", "cache_read": "0.6", "cache_write": "7.5"},
        }
    )
    tokens = token_frame(
        token_row(day="2026-10-03", input_tokens=1_000_000, output_tokens=100_000, cache_read_tokens=500_000)
    )
    [draft] = assemble(TENANT, month(plans, used=usage(tokens=tokens), acme="tokens")).drafts
    # 6.00 + 3.00 + 0.30 = 9.30
    assert draft.total == Decimal("9.30")
    assert {line.kind for line in draft.lines} == {"tokens"}
    assert draft.period == "2026-10" and OCTOBER.last_day == date(2026, 10, 31)
