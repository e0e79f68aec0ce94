"""Use cases that store nothing: plans compared on a month of usage, and quotes for a task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from metering.core.errors import InvalidInput
from metering.core.money import parse_decimal, quantize
from metering.core.periods import Period
from metering.core.tenants import Tenant
from metering.core.times import REPRESENTABLE_FROM, REPRESENTABLE_UNTIL, rfc3339
from metering.costs.prices import price_usage, settle_nanos
from metering.costs.ratecards import RateCardError
from metering.events.ingest import to_us
from metering.rollup import repository as usage_reads
from metering.rollup.pipeline import price_book
from pricing import open_month, outcomes_repository, repository
from pricing.compare import Comparison, ModelTokens, compare_plans, quote_task
from pricing.outcome_counts import TaskTypeOutcomes, count_grouped_outcomes, count_outcomes
from pricing.plans import CustomerPlan, PlanBook
from pricing.repository import last_day
from pricing.schemas import QuoteIn
from pricing.service import invalid, local_today
from pricing.tables import billing_periods


@dataclass(frozen=True)
class MonthComparison:
    period: Period
    currency: str
    target_margin: Decimal
    comparison: Comparison
    spend: list[dict[str, Any]]  # the month's usage per customer, actor and agent (`metering.rollup.repository.spend`)
    outcomes: list[TaskTypeOutcomes]  # per task type (`month_outcomes`)


def compare_month(
    session: Session,
    tenant: Tenant,
    period: Period,
    *,
    plans: Sequence[str] | None = None,
    customer: str | None = None,
    target_margin: object = "0.6",
    now: datetime | None = None,
) -> MonthComparison:
    """Every customer with usage in the month (or one customer) under its plan and `compare_with`
    plans, or under `plans`. Customers without a plan are compared only under named `plans`.
    `now` bounds settlement under outcome rules (default: the month's end)."""
    try:
        target = parse_decimal(target_margin)
    except ValueError as error:
        raise invalid("invalid comparison", [("target_margin", str(error))]) from None
    stored = repository.stored_plans(session, tenant.id)
    unknown = [p for p in plans or () if p not in stored.book.versions]
    if unknown:
        raise invalid("unknown plans", [(f"plans[{list(plans or ()).index(p)}]", f"unknown plan {p!r}") for p in unknown])
    tokens = repository.token_usage(session, tenant.id, period, customer)
    tasks = outcomes_repository.billed_tasks(session, tenant.id, period, customer, now=now, timezone=tenant.timezone)
    names = set(tokens["customer"]) | set(tasks["customer"]) | ({customer} if customer else set())
    assigned = repository.assignments_on(session, tenant.id, last_day(period), customers_=names)
    lineup = [assigned[c].as_customer_plan() if c in assigned else None for c in sorted(names)]
    orphans = [c for c, entry in zip(sorted(names), lineup, strict=True) if entry is None]
    if orphans and not plans:
        detail = [{"field": "customer", "message": f"{c!r} has no plan: assign one, or name the plans to compare"} for c in orphans]
        raise InvalidInput("usage of customers without a plan", detail=detail)
    entries = [e or CustomerPlan(id=c, plan=(plans or [""])[0]) for c, e in zip(sorted(names), lineup, strict=True)]
    comparison = compare_plans(
        month=period.first_day, customers=entries, plans=stored.book, token_usage=tokens, tasks=tasks,
        currency=tenant.currency, tz=tenant.timezone, target_margin=target, only_plans=plans or None,
        task_model_usage=repository.completed_task_usage(session, tenant.id, period, customer),
    )  # fmt: skip
    if orphans:  # compared under the named plans, billed under none
        by_customer = comparison.by_customer
        by_customer.loc[by_customer["customer"].isin(orphans), "billed"] = False
    spend = usage_reads.spend(session, tenant.id, first_day=period.first_day, end_day=period.next_first_day, customer=customer)
    outcomes = month_outcomes(session, tenant, period, customer=customer, now=now)
    return MonthComparison(period, tenant.currency, target, comparison, spend, outcomes)


def month_outcomes(
    session: Session, tenant: Tenant, period: Period, *, customer: str | None = None, now: datetime | None = None,
    figures: pd.DataFrame | None = None,
) -> list[TaskTypeOutcomes]:
    """The month's outcomes per task type (`pricing.outcome_counts`), up to `now` (default: the
    month's end); billed as the month's invoices bill (a closed month: the plans as it was closed).
    `compare` (CLI, API) and the dashboard show this. Counted from the per customer-month figures
    where they stand for the month's tasks (`pricing.open_month.usable`: no outcome rules, no
    dispute accepted in an open month, no plan term that needs each task's end) and no task's
    end or reopening lies between `now` and the month's end; else from the tasks. `figures`: the
    month's as already read under the plans stored now (`pricing.open_month.usable_figures`)."""
    closed = session.execute(
        select(billing_periods.c.plans_as_of, billing_periods.c.assignments_as_of).where(
            billing_periods.c.tenant_id == tenant.id, billing_periods.c.period == period.label
        )
    ).one_or_none()
    stored = repository.stored_plans(session, tenant.id, as_of=closed.plans_as_of if closed else None)
    now = now or period.end
    disputed = outcomes_repository.disputes_opened(session, tenant.id, period, customer)

    def assigned(names: set[str]) -> dict[str, str]:
        found = repository.assignments_on(session, tenant.id, last_day(period), as_of=closed.assignments_as_of if closed else None,
                                          customers_=sorted(names))  # fmt: skip
        return {c: a.plan for c, a in found.items()}

    bound = min(to_us(period.end), to_us(now) + 1)
    if figures is not None and closed is not None:  # billed under the plans as they were at the close
        figures = None
    usable = figures is not None or open_month.usable(session, tenant.id, period, stored.book, customer)
    if usable and not open_month.times_after(session, tenant.id, period, bound, customer):
        rows = figures if figures is not None else open_month.figures(session, tenant.id, period, customer)
        done = rows[(rows["status"] == "completed").to_numpy()]
        completed = done.groupby(["customer", "task_type"], sort=True, as_index=False)["tasks"].sum()
        completed["task_type"] = completed["task_type"].where(completed["task_type"] != "", None)
        changed = open_month.reopened_and_rejected(session, tenant.id, period, customer)
        return count_grouped_outcomes(completed, changed, disputed, period=period, now=now, plans=stored.book,
                                      customers=assigned(set(completed["customer"])), currency=tenant.currency)  # fmt: skip
    tasks = outcomes_repository.month_outcome_tasks(session, tenant.id, period, customer, timezone=tenant.timezone)
    return count_outcomes(tasks, disputed, period=period, now=now, plans=stored.book, customers=assigned(set(tasks["customer"])),
                          currency=tenant.currency)  # fmt: skip


def outcomes_view(rows: Sequence[TaskTypeOutcomes]) -> list[dict[str, Any]]:
    """The outcome rows for JSON and CSV: the price per settled job with 6 decimals (rounded
    once, like compare's other per-task prices), the billed amount exact."""
    return [
        {**row.as_dict(), "price_per_settled_job": None if row.price_per_settled_job is None else quantize(row.price_per_settled_job, 6)}
        for row in rows
    ]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def comparison_view(result: MonthComparison) -> dict[str, Any]:
    c = result.comparison
    return {
        "month": result.period.label,
        "currency": result.currency,
        "target_margin": result.target_margin,
        "customers": _records(c.by_customer),
        "task_types": _records(c.by_task_type),
        "models": _records(c.by_model),
        "tenant": _records(c.tenant),
        "spend": result.spend,
        "outcomes": outcomes_view(result.outcomes),
    }


@dataclass(frozen=True)
class TaskUsage:
    """A hypothetical task's usage of one model, as events report it: `input_tokens` includes
    cache reads and writes (`billable()` takes them out)."""

    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    def billable(self) -> ModelTokens:
        uncached = self.input_tokens - self.cache_read_tokens - self.cache_write_tokens
        return ModelTokens(self.provider, self.model, uncached, self.output_tokens, self.cache_read_tokens, self.cache_write_tokens)


def quote(
    session: Session,
    tenant: Tenant,
    *,
    usage: Sequence[TaskUsage],
    task_type: str | None,
    outcome: str,
    plans: Sequence[str] | None,
    at: datetime,
    units_before: int = 0,
) -> dict[str, Any]:
    """What one more task would cost under each plan in force at `at`, with its provider cost
    from the tenant's prices. Stores nothing."""
    if at.tzinfo is None or not REPRESENTABLE_FROM <= at < REPRESENTABLE_UNTIL:
        window = f"{rfc3339(REPRESENTABLE_FROM)} to {rfc3339(REPRESENTABLE_UNTIL)}"
        raise invalid("invalid quote", [("body.at", f"needs a UTC offset and a time from {window}")])
    for index, item in enumerate(usage):
        if item.cache_read_tokens + item.cache_write_tokens > item.input_tokens:
            raise invalid("invalid usage", [(f"body.usage[{index}]", "cache tokens exceed input_tokens")])
        if item.cache_write_1h_tokens > item.cache_write_tokens:
            raise invalid("invalid usage", [(f"body.usage[{index}].cache_write_1h_tokens", "exceeds cache_write_tokens, which includes it")])
    stored = repository.stored_plans(session, tenant.id)
    book: PlanBook = stored.book
    day = local_today(at, tenant.timezone)
    ids = list(plans) if plans else [p for p in sorted(book.versions) if _starts(book, p) <= day]  # those in force
    problems = [(f"body.plans[{i}]", f"unknown plan {p!r}") for i, p in enumerate(ids) if p not in book.versions]
    if problems:
        raise invalid("unknown plans", problems)
    versions = [book.at(p, day) for p in ids]
    cost, unpriced = _provider_cost(session, tenant, usage, at)
    quotes = quote_task(versions, tokens=[u.billable() for u in usage], task_type=task_type, outcome=outcome, provider_cost_nanos=cost,
                        currency=tenant.currency, units_before=units_before)  # fmt: skip
    names = ", ".join(f"{m['provider']}/{m['model']}" for m in unpriced)
    reason = f"unpriced usage: no price for {names} (add it under prices: or models: in the tenant config)"
    return {
        "at": at,
        "task_type": task_type,
        "outcome": outcome,
        "units_before": units_before,
        "unpriced_models": unpriced,
        "quotes": [
            {"plan": q.plan, "version": stored.version_number(v.id, v.effective_from), "effective_from": v.effective_from,
             "type": v.type, "currency": q.currency, "amount": q.amount, "amount_exact": q.amount_exact,
             **({"provider_cost": q.provider_cost, "margin": q.margin} if not unpriced else
                {"provider_cost": None, "margin": None, "reason": reason})}
            for q, v in zip(quotes, versions, strict=True)
        ],
    }  # fmt: skip


def quote_request(session: Session, tenant: Tenant, body: QuoteIn, *, now: datetime) -> dict[str, Any]:
    """`quote` for a request (`POST /v1/quotes`, `taskmeter quote`): priced at `body.at`, else `now`."""
    usage = [TaskUsage(**item.model_dump()) for item in body.usage]
    return quote(
        session, tenant, usage=usage, task_type=body.task_type, outcome=body.outcome, plans=body.plans,
        at=body.at or now, units_before=body.units_before,
    )  # fmt: skip


def _starts(book: PlanBook, plan_id: str) -> date:
    return book.history(plan_id)[0].effective_from or date.min


def _provider_cost(session: Session, tenant: Tenant, usage: Sequence[TaskUsage], at: datetime) -> tuple[int, list[dict[str, str]]]:
    if not usage:
        return 0, []
    book, _ = price_book(session.connection(), tenant.id)
    frame = pd.DataFrame({
        "provider": [u.provider for u in usage], "model": [u.model for u in usage],
        "time_us": pd.array([to_us(at)] * len(usage), dtype="int64"),
        **{c: pd.array([getattr(u, c) for u in usage], dtype="int64")
           for c in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens")},
    })  # fmt: skip
    try:
        priced = price_usage(frame, book)
    except (RateCardError, ValueError) as error:
        raise InvalidInput("cannot price the usage", detail=[{"field": "body.usage", "message": str(error)}]) from None
    nanos = int(settle_nanos(int(priced["cost_nanos"].sum()), int(priced["cost_rem"].sum())))
    missing = frame.loc[~priced["priced"].to_numpy(), ["provider", "model"]].drop_duplicates()
    return nanos, [{"provider": p, "model": m} for p, m in missing.itertuples(index=False)]
