"""Invoice assembly: a month's draft invoices from its usage, the plans and what was billed before.

Pure: no database, no clock. `pricing.invoices_repository` reads the inputs (`OpenMonth`,
`ClosedMonth`), `pricing.invoices` locks, assembles and writes.

- The month is rated under each customer's plan in force on its last day (`pricing.rating`):
  customers with usage, and customers that had a plan before the month ended once that plan is
  in force (platform fee, minimum charge).
- Late usage: a closed month whose usage changed since it was last reconciled is re-rated with
  the usage known now, under what billed it (each customer's plan on that month's invoice, or the
  assignment in force then; the plan versions as they were at its close). Per customer and line
  kind, the difference from every finalized line billed for that month so far (its own lines
  plus earlier adjustments) becomes an adjustment line naming the month: positive or negative,
  exact in minor units. Once finalized, the adjustment counts as billed, so nothing is billed
  twice and nothing is dropped. Credit notes are manual corrections of an invoice, not usage:
  they are not part of what was billed for a month here (or late usage would bill a credited
  amount again).

A customer that cannot be billed (usage but no plan; late usage in another currency) is not
drafted: the assembly lists it as a `Refusal`, and the use case decides (closing refuses the
month, a report lists the customer as unrated).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import pandas as pd

from metering.core.errors import InvalidInput
from metering.core.money import from_minor, to_minor
from metering.core.periods import Period
from metering.core.tenants import Tenant
from pricing.rating import LineKind, RatedMonth, rate_month

if TYPE_CHECKING:
    from pricing.repository import Assignment, StoredPlans

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
NUMBER_LENGTH = 64


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
    reason: str | None = None  # adjustment lines: `reason_code` of their reasons


@dataclass(frozen=True)
class Draft:
    customer: str
    period: str
    currency: str
    plan: str
    lines: tuple[Line, ...]
    outcome_versions: tuple[int, ...] = ()  # the outcome rule versions that settled its tasks

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), from_minor(0, self.currency))

    def plan_versions(self) -> dict[str, list[int]]:
        used: dict[str, set[int]] = defaultdict(set)
        for line in self.lines:
            if line.plan is not None and line.plan_version is not None:
                used[line.plan].add(line.plan_version)
        return {plan: sorted(versions) for plan, versions in sorted(used.items())}


def invoice_number(tenant: Tenant, period: Period, seq: int) -> str:
    """`INV-<tenant>-<yyyymm>-<seq>`; a tenant name too long for 64 characters is shortened and
    suffixed with `.<tenant id>` (names have no dots, so numbers stay unique)."""
    tail = f"-{period.first_day:%Y%m}-{seq:04d}"
    name = tenant.name
    if len("INV-") + len(name) + len(tail) > NUMBER_LENGTH:
        suffix = f".{tenant.id}"
        name = name[: NUMBER_LENGTH - len("INV-") - len(tail) - len(suffix)] + suffix
    return f"INV-{name}{tail}"


@dataclass(frozen=True)
class Usage:
    """A month of the rollup as rating frames (`pricing.usage` contracts)."""

    tokens: pd.DataFrame
    tasks: pd.DataFrame

    @property
    def customers(self) -> set[str]:
        return set(self.tokens["customer"].unique().tolist()) | set(self.tasks["customer"].unique().tolist())

    def without(self, customers: Iterable[str]) -> Usage:
        drop = list(customers)
        if not drop:
            return self
        return Usage(
            self.tokens[~self.tokens["customer"].isin(drop)], self.tasks[~self.tasks["customer"].isin(drop)]
        )


@dataclass(frozen=True)
class OpenMonth:
    """The month being invoiced, as read."""

    period: Period
    usage: Usage
    plans: StoredPlans
    assigned: dict[str, Assignment]  # in force on its last day: customers with usage or `known`
    known: set[str]  # customers created before the month ended


@dataclass(frozen=True)
class BilledInvoice:
    plan: str
    currency: str


class AdjustmentReason(StrEnum):
    """Why an adjustment line was made; stored with the line (`invoice_lines.adjustment_reason`)."""

    LATE_USAGE = "late_usage"  # usage of the month arrived after it closed
    REPRICING = "repricing"  # the provider prices changed (tenant prices, aliases, the snapshot)
    OUTCOME_CHANGE = "outcome_change"  # a task's outcome changed after the close
    DISPUTE = "dispute"  # an accepted dispute


REASON_TEXT: dict[str, str] = {
    AdjustmentReason.LATE_USAGE: "usage reported after the month closed",
    AdjustmentReason.REPRICING: "provider prices changed after the month closed",
    AdjustmentReason.OUTCOME_CHANGE: "task outcomes changed after the month closed",
    AdjustmentReason.DISPUTE: "disputed tasks",
}


def reason_code(reasons: Sequence[AdjustmentReason]) -> str:
    """One code for a line's reasons, joined with `+` in declaration order (`late_usage+repricing`)."""
    return "+".join(r.value for r in AdjustmentReason if r in reasons)


def reason_text(reasons: Sequence[AdjustmentReason]) -> str:
    return " and ".join(REASON_TEXT[r] for r in AdjustmentReason if r in reasons)


@dataclass(frozen=True)
class ClosedMonth:
    """A closed month whose usage changed since it was last reconciled, as read."""

    period: Period
    usage: Usage  # as known now
    plans: StoredPlans  # as they were at its close
    billed: dict[tuple[str, str], int]  # minor units billed per (customer, line kind) so far
    invoices: dict[str, BilledInvoice]  # its finalized invoices, by customer
    assigned_then: dict[str, Assignment]  # in force on its last day, as known at its close
    assigned_now: dict[str, Assignment]  # in force on its last day, as known now
    reasons: tuple[AdjustmentReason, ...] = (AdjustmentReason.LATE_USAGE,)  # why it is reconciled again


@dataclass(frozen=True)
class Refusal:
    """Customers that cannot be billed, and why (an `InvalidInput` for whoever must bill them)."""

    customers: tuple[str, ...]
    message: str
    detail: Any = None

    def error(self) -> InvalidInput:
        return InvalidInput(self.message, detail=self.detail)


@dataclass(frozen=True)
class Assembly:
    drafts: list[Draft]  # by customer; a customer with nothing to bill gets none
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def unrated(self) -> set[str]:
        return {name for refusal in self.refusals for name in refusal.customers}


def _in_force(plans: StoredPlans, plan: str, period: Period) -> bool:
    try:
        plans.book.at(plan, period.last_day)
    except InvalidInput:
        return False
    return True


def _rate(
    tenant: Tenant, period: Period, plans: dict[str, str], stored: StoredPlans, usage: Usage
) -> RatedMonth:
    """The month's usage rated under each customer's plan (customer → plan id)."""
    return rate_month(
        month=period.first_day, customers=plans, plans=stored.book, token_usage=usage.tokens, tasks=usage.tasks,
        currency=tenant.currency, tz=tenant.timezone,
    )  # fmt: skip


def _without_plan(names: Iterable[str], label: str, message: str) -> Refusal:
    orphans = tuple(sorted(names))
    detail = [{"field": "customer", "message": f"{c!r} has usage in {label} but no plan"} for c in orphans]
    return Refusal(orphans, message, detail)


def month_lines(
    tenant: Tenant, month: OpenMonth
) -> tuple[dict[str, str], dict[str, str], dict[str, list[Line]], list[Refusal]]:
    """The month rated: plan, currency and lines per customer billed for it."""
    period, users = month.period, month.usage.customers
    refusals = []
    if orphans := users - set(month.assigned):
        refusals.append(
            _without_plan(orphans, period.label, f"usage of customers without a plan in {period.label}")
        )
    # A customer without usage is billed (platform fee, minimum) only once its plan is in force.
    plans = {
        name: a.plan
        for name, a in month.assigned.items()
        if name in users or _in_force(month.plans, a.plan, period)
    }
    rated = _rate(tenant, period, plans, month.plans, month.usage.without(orphans))
    currency = {
        name: month.plans.book.history(plan)[-1].currency or tenant.currency for name, plan in plans.items()
    }
    lines: dict[str, list[Line]] = defaultdict(list)
    for line in rated.lines:
        version = month.plans.version_number(line.plan, line.version)
        lines[line.customer].append(
            Line(str(line.kind), line.description, line.quantity, line.unit_price, line.amount_exact, line.amount,
                 line.plan, version)
        )  # fmt: skip
    return plans, currency, lines, refusals


@dataclass(frozen=True)
class Adjustments:
    lines: dict[str, list[Line]]  # per customer
    currency: dict[str, str]  # per customer: the currency the adjusted months were billed in
    refusals: list[Refusal]


def late_adjustments(tenant: Tenant, months: Sequence[ClosedMonth]) -> Adjustments:
    """Adjustment lines for the late usage of closed months, oldest month first."""
    out = Adjustments(defaultdict(list), {}, [])
    refused: set[str] = set()
    for month in months:
        refused |= _adjust_month(tenant, month, out, refused)
    return out


def _adjust_month(tenant: Tenant, month: ClosedMonth, out: Adjustments, refused: set[str]) -> set[str]:
    label = month.period.label
    names = (set(month.invoices) | month.usage.customers) - refused
    plans: dict[str, str] = {}
    for name in names:
        if name in month.invoices:
            plans[name] = month.invoices[name].plan
        elif (assignment := month.assigned_then.get(name) or month.assigned_now.get(name)) is not None:
            plans[name] = assignment.plan
    new_refusals: set[str] = set()
    if orphans := names - set(plans):
        out.refusals.append(
            _without_plan(orphans, label, f"late usage of {label} by customers without a plan")
        )
        new_refusals |= orphans
    if not plans:
        return new_refusals
    rated = _rate(tenant, month.period, plans, month.plans, month.usage.without(refused | orphans))
    now_billed: dict[tuple[str, str], int] = defaultdict(int)
    currency = {
        name: (month.invoices[name].currency if name in month.invoices else tenant.currency) for name in plans
    }
    for line in rated.lines:
        currency[line.customer] = line.currency
        now_billed[(line.customer, str(line.kind))] += to_minor(line.amount, line.currency)
    billed = {key: minor for key, minor in month.billed.items() if key[0] in plans}
    for name, kind in sorted(billed.keys() | now_billed.keys()):
        before, after = billed.get((name, kind), 0), now_billed.get((name, kind), 0)
        if before == after or name in new_refusals:
            continue
        money = currency[name]
        delta = from_minor(after - before, money)
        text = (
            f"Adjustment for {label}, {reason_text(month.reasons)}: {KIND_LABELS.get(kind, kind)} "
            f"(billed {from_minor(before, money)}, now {from_minor(after, money)})"
        )
        if out.currency.setdefault(name, money) != money:
            out.refusals.append(
                Refusal((name,), f"late usage of {name!r} is billed in both {out.currency[name]} and {money}")
            )
            new_refusals.add(name)
            out.lines.pop(name, None)
            continue
        out.lines[name].append(
            Line(kind, text, Decimal(1), delta, delta, delta, plans[name], None, label, reason_code(month.reasons))
        )
    return new_refusals


def assemble(tenant: Tenant, month: OpenMonth, late: Sequence[ClosedMonth] = ()) -> Assembly:
    """The invoices of a month as they stand, by customer: the month's lines, then the
    adjustments for the late usage of `late` (the closed months to reconcile on this invoice)."""
    plans, currency, lines, refusals = month_lines(tenant, month)
    adjustments = late_adjustments(tenant, late)
    refusals += adjustments.refusals
    for name, extra in adjustments.lines.items():
        if name in currency and currency[name] != adjustments.currency[name]:
            message = f"{name!r}: late usage billed in {adjustments.currency[name]} cannot go on a {currency[name]} invoice"
            refusals.append(Refusal((name,), message))
            continue
        currency.setdefault(name, adjustments.currency[name])
        plans.setdefault(name, extra[0].plan or "")
        lines[name].extend(extra)
    unrated = {name for refusal in refusals for name in refusal.customers}
    rule_versions = _rule_versions(month.usage.tasks)
    drafts = [
        Draft(name, month.period.label, currency[name], plans[name], tuple(lines[name]), rule_versions.get(name, ()))
        for name in sorted(lines)
        if lines[name] and name not in unrated
    ]
    return Assembly(drafts, refusals)


def _rule_versions(tasks: pd.DataFrame) -> dict[str, tuple[int, ...]]:
    """Per customer, the outcome rule versions that settled its billed tasks (`rule_version`)."""
    if "rule_version" not in tasks or tasks.empty:
        return {}
    used = tasks.loc[tasks["rule_version"].notna(), ["customer", "rule_version"]].drop_duplicates()
    out: dict[str, set[int]] = defaultdict(set)
    for name, version in used.itertuples(index=False):
        out[name].add(int(version))
    return {name: tuple(sorted(versions)) for name, versions in out.items()}
