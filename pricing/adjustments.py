"""Late usage: what a closed month should have billed, against what it did bill.

A closed month is re-rated with the usage known now, under what billed it (each customer's plan
on that month's invoice, or the assignment in force then; the plan versions as they were at its
close). Per customer and line kind, the difference from every finalized line billed for that
month so far (its own lines plus earlier adjustments) becomes an adjustment line on the invoice
being made, naming the month: positive or negative, exact in minor units. Once finalized, the
adjustment counts as billed, so nothing is billed twice and nothing is dropped.

Credit notes are manual corrections of an invoice, not usage: they are not part of what was
billed for a month here (or late usage would bill a credited amount again).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from metering.errors import InvalidInput
from metering.money import minor_unit, money_str
from metering.periods import Period, parse_month
from metering.tenants import Tenant
from pricing import outcomes_repository, repository
from pricing.rating import LineKind, rate_month
from pricing.repository import RollupState, last_day
from pricing.tables import billing_periods, invoice_lines, invoices

KIND_LABELS: dict[str, str] = {  # a StrEnum member is its text
    LineKind.TOKENS: "token usage",
    LineKind.MARKUP: "provider cost (cost-plus)",
    LineKind.JOBS: "completed tasks",
    LineKind.JOBS_FAILED: "failed or cancelled tasks",
    LineKind.TIER: "tiered usage",
    LineKind.TIER_FLAT: "tier flat fees",
    LineKind.PLATFORM_FEE: "platform fee",
    LineKind.MINIMUM: "minimum charge top-up",
}


def to_minor(amount: Decimal, currency: str) -> int:
    """A rounded amount in the currency's minor unit (exact: raises if it is not rounded)."""
    scaled = amount.scaleb(minor_unit(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} is not rounded to {currency}'s minor unit")
    return int(scaled)


def from_minor(minor: int, currency: str) -> Decimal:
    places = minor_unit(currency)
    return Decimal(money_str(Decimal(int(minor)).scaleb(-places), places))


@dataclass(frozen=True)
class Line:
    """An invoice line as billed: rounded `amount` (what is paid), exact `amount_exact`."""

    kind: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount_exact: Decimal
    amount: Decimal
    plan: str | None
    plan_version: int | None
    adjusts_period: str | None = None


@dataclass(frozen=True)
class Adjustments:
    lines: dict[str, list[Line]]  # per customer
    currency: dict[str, str]  # per customer: the currency the adjusted months were billed in
    checked: list[str]  # the closed months compared (now reconciled up to the rollup state)


def closed_periods(session: Session, tenant_id: int, before: str | None = None) -> list[Any]:
    query = select(billing_periods).where(billing_periods.c.tenant_id == tenant_id)
    if before is not None:
        query = query.where(billing_periods.c.period < before)
    return list(session.execute(query.order_by(billing_periods.c.period)).all())


def late_adjustments(
    session: Session, tenant: Tenant, before: Period, state: RollupState, *, customer: str | None = None
) -> Adjustments:
    """Adjustment lines for every closed month before `before` whose usage changed since it was
    last reconciled (an event touched one of its tasks, or the provider prices changed)."""
    result = Adjustments(defaultdict(list), {}, [])
    for row in closed_periods(session, tenant.id, before.label):
        result.checked.append(row.period)
        month = parse_month(row.period, tenant.timezone)
        changed = row.reconciled_price_version != state.price_version or repository.touched_since(
            session, tenant.id, row.reconciled_seq, month.start, month.end
        )
        if changed:
            _adjust_month(session, tenant, month, row, result, customer=customer)
    return result


def _billed(session: Session, tenant_id: int, period: str, customer: str | None) -> tuple[dict[tuple[str, str], int], dict[str, Any]]:
    """Minor units billed for a month per (customer, kind), and the month's invoices by customer."""
    live = [invoices.c.tenant_id == tenant_id, invoices.c.status == "finalized"]
    if customer is not None:
        live.append(invoices.c.customer == customer)
    own = session.execute(select(invoices).where(*live, invoices.c.period == period)).all()
    for_month = or_(
        (invoices.c.period == period) & invoice_lines.c.adjusts_period.is_(None), invoice_lines.c.adjusts_period == period
    )
    rows = session.execute(
        select(invoices.c.customer, invoice_lines.c.kind, func.sum(invoice_lines.c.amount_minor))
        .select_from(invoice_lines.join(invoices, invoices.c.id == invoice_lines.c.invoice_id))
        .where(*live, for_month)
        .group_by(invoices.c.customer, invoice_lines.c.kind)
    ).all()
    return {(c, k): int(n) for c, k, n in rows}, {r.customer: r for r in own}


def _adjust_month(session: Session, tenant: Tenant, month: Period, row: Any, out: Adjustments, *, customer: str | None) -> None:
    billed, billed_invoices = _billed(session, tenant.id, month.label, customer)
    stored = repository.stored_plans(session, tenant.id, as_of=row.plans_as_of)
    tokens = repository.token_usage(session, tenant.id, month, customer)
    tasks = outcomes_repository.billed_tasks(session, tenant.id, month, customer, timezone=tenant.timezone)
    names = set(billed_invoices) | set(tokens["customer"]) | set(tasks["customer"])
    if not names:
        return
    then = repository.assignments_on(session, tenant.id, last_day(month), as_of=row.assignments_as_of, customers_=names)
    now = repository.assignments_on(session, tenant.id, last_day(month), customers_=names)
    plans: dict[str, str] = {}
    for name in names:
        if name in billed_invoices:
            plans[name] = billed_invoices[name].plan
        elif (assignment := then.get(name) or now.get(name)) is not None:
            plans[name] = assignment.plan
    if orphans := sorted(names - set(plans)):
        detail = [{"field": "customer", "message": f"{c!r} has usage in {month.label} but no plan"} for c in orphans]
        raise InvalidInput(f"late usage of {month.label} by customers without a plan", detail=detail)

    rated = rate_month(
        month=month.first_day, customers=plans, plans=stored.book, token_usage=tokens, tasks=tasks,
        currency=tenant.currency, tz=tenant.timezone,
    )  # fmt: skip
    now_billed: dict[tuple[str, str], int] = defaultdict(int)
    currency = {name: (billed_invoices[name].currency if name in billed_invoices else tenant.currency) for name in names}
    for line in rated.lines:
        currency[line.customer] = line.currency
        now_billed[(line.customer, str(line.kind))] += to_minor(line.amount, line.currency)
    for name, kind in sorted(billed.keys() | now_billed.keys()):
        before, after = billed.get((name, kind), 0), now_billed.get((name, kind), 0)
        if before == after:
            continue
        money = currency[name]
        delta = from_minor(after - before, money)
        label = KIND_LABELS.get(kind, kind)
        text = (
            f"Adjustment for {month.label}, usage reported after the month closed: {label} "
            f"(billed {from_minor(before, money)}, now {from_minor(after, money)})"
        )
        out.lines[name].append(Line(kind, text, Decimal(1), delta, delta, delta, plans[name], None, month.label))
        if out.currency.setdefault(name, money) != money:
            raise InvalidInput(f"late usage of {name!r} is billed in both {out.currency[name]} and {money}")
