"""The month of a tenant that the monthly CSVs (DESIGN.md, "The monthly CSVs") and the dashboard
both show: its customers, invoices and plan comparison, and their rows as the files' text
(`reports.monthly` writes the files, `reports.dashboard` shows the same cells).

What the files hold:
- `customers`: per customer with usage, tasks or an invoice in the month. Token columns and
  `provider_cost` are the month's usage (its tenant-local days); `tasks_completed`, `_failed`,
  `_cancelled` count the tasks whose terminal event lies in the month (what per-job plans bill);
  `tasks_open` the tasks with an event in the month that had not ended by its end. `amount_due`
  is the customer's invoice total (finalized for a closed month, the draft for an open one; empty
  when the customer has usage but no plan) and `margin` is amount_due − provider_cost, rounded
  to the currency's minor unit (empty when the invoice is in another currency than the tenant's
  provider costs). `jobs_billed` counts the completed tasks the month's invoice bills: with
  outcome rules those that settled in the month (a task completed on Jan 31 that settles on
  Feb 3 counts in February), else those completed in it, tasks whose dispute was accepted in an
  open month left out; `jobs_pending` the tasks completed before the month's end that had not
  settled by it (0 without rules).
- `invoice-lines`: the lines of those invoices, by invoice number and line (drafts have no number
  yet); `period` is the month a line bills: the month itself, or for a late-usage adjustment the
  closed month it corrects.
- `tasks`: every task with an event in the month (usage, or its first or last event, start or end
  in it), by task, with the month's share of its usage. Each task's cost is rounded cumulatively
  within its customer (the customer's rounded running total minus the previous one), so that the
  column adds up to the customers file to the micro-unit; each differs from its own rounding by
  less than one micro-unit. `status` is the task's status when the report is made.
- `comparison`: per customer and plan (its own, then the plans it is compared with), the month
  rated by `pricing.compare`; `provider_cost` is the customers file's, `margin` is rounded to the
  minor unit, `margin_pct` is a fraction with 4 decimals (0.4235 is 42.35 %).
- `spend`: per customer, actor and agent of the month's usage events (empty actor or agent where
  the events named none), by those three: `tasks` (distinct tasks with usage of that actor and
  agent in the month), usage events, input and output tokens and `provider_cost`, rounded
  cumulatively within the customer as in the tasks file, so that a customer's rows add up to its
  `provider_cost` in the customers file to the micro-unit.

Read them inside one snapshot of the database (`begin_snapshot`), so that the files and the
dashboard agree with each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from metering.core.db import begin_snapshot as begin_snapshot  # where the reports' callers import it
from metering.core.money import quantize, round_money, to_minor
from metering.core.periods import Period
from metering.core.tenants import Tenant
from pricing import open_month, outcomes_repository
from pricing import repository as pricing_repository
from pricing.assembly import Usage as BilledUsage
from pricing.compare import compare_plans
from pricing.plans import PlanBook
from pricing.repository import Assignment, last_day
from pricing.usage import task_counts, token_days_matter
from reports import repository
from reports.billed import MonthInvoices, month_invoices
from reports.cells import (
    bool_text,
    cost_decimal,
    cost_text,
    decimal_text,
    micro_units,
    minor_decimal,
    minor_text,
)
from reports.csvwriter import Batch
from reports.repository import InvoiceRecord, TaskCounts, Usage
from reports.tasks import scan_tasks


@dataclass(frozen=True)
class CustomerMonth:
    """One row of the customers file."""

    customer: str
    plan: str
    currency: str
    counts: TaskCounts
    usage: Usage
    amount_due_minor: int | None  # None: usage but no plan, nothing rated
    margin_minor: int | None
    invoice: InvoiceRecord | None
    jobs_billed: int = 0  # completed tasks the month bills (settled in it)
    jobs_pending: int = 0  # completed before the month's end, settling after it

    @property
    def provider_cost_micros(self) -> int:
        return micro_units(self.usage.cost_nanos, self.usage.cost_rem)


@dataclass(frozen=True)
class ComparisonRow:
    customer: str
    plan: str
    billed: bool
    currency: str
    revenue_minor: int
    provider_cost_micros: int
    margin_minor: int
    margin_pct: Decimal | None
    tasks_completed: int
    revenue_per_completed_task: Decimal | None
    break_even_job_price: Decimal | None
    plan_type: str  # per_token, per_job


@dataclass(frozen=True)
class MonthSummary:
    """The per-customer part of a month: customers and their invoices."""

    tenant: Tenant
    period: Period
    invoices: MonthInvoices
    customers: tuple[CustomerMonth, ...]
    customer: str | None = None  # the one customer asked for, if any

    @property
    def closed(self) -> bool:
        return self.invoices.closed


def month_summary(session: Session, tenant: Tenant, period: Period, *, customer: str | None = None,
                  closed: set[str] | None = None, counts: dict[str, TaskCounts] | None = None,
                  billed: pd.DataFrame | None = None, rating: RatingInput | None = None) -> MonthSummary:  # fmt: skip
    """The customers file's rows. `counts`: the task counts of the tasks file (`TaskScan`),
    counted here by reading the month's tasks when not given; `billed`: the tasks the month
    bills (`RatingInput.ended`), read here when not given; `rating`: the month's usage as read
    for its comparison (`rating_input`), which an open month's drafts rate and the usage columns
    sum, read here when not given."""
    invoices = month_invoices(session, tenant, period, closed=closed, customer=customer, usage=rating.usage if rating else None)
    if rating is not None:
        usage = repository.customer_usage_of(rating.usage_rows)
    else:
        usage = repository.customer_usage(session, tenant.id, period, customer)
    if counts is None:
        counts = scan_tasks(session, tenant, period, customer=customer).counts
    jobs_billed, jobs_pending = _settlement_counts(session, tenant, period, customer, billed)
    billed_invoices = invoices.by_customer()
    unrated = set(invoices.unrated)
    names = sorted(set(usage) | set(counts) | set(billed_invoices) | set(jobs_billed) | set(jobs_pending))
    assigned = pricing_repository.assignments_on(session, tenant.id, last_day(period), customers_=names)
    book = pricing_repository.stored_plans(session, tenant.id).book if assigned else None
    rows = []
    for name in names:
        invoice = billed_invoices.get(name)
        plan = invoice.plan if invoice else (assigned[name].plan if name in assigned else "")
        if invoice is not None:
            currency = invoice.currency
        elif book is not None and plan in book.versions:
            currency = book.history(plan)[-1].currency or tenant.currency
        else:
            currency = tenant.currency
        amount = invoice.total_minor if invoice else (None if name in unrated or not plan else 0)
        month_usage = usage.get(name, Usage())
        margin = None
        if amount is not None and currency == tenant.currency:
            cost = cost_decimal(micro_units(month_usage.cost_nanos, month_usage.cost_rem))
            margin = to_minor(round_money(minor_decimal(amount, currency) - cost, currency), currency)
        rows.append(
            CustomerMonth(
                name, plan, currency, counts.get(name, TaskCounts()), month_usage, amount, margin, invoice,
                jobs_billed.get(name, 0), jobs_pending.get(name, 0),
            )
        )
    return MonthSummary(tenant, period, invoices, tuple(rows), customer)


def _settlement_counts(session: Session, tenant: Tenant, period: Period, customer: str | None,
                       billed: pd.DataFrame | None) -> tuple[dict[str, int], dict[str, int]]:  # fmt: skip
    """Per customer: the completed tasks the month bills, and those its end left awaiting
    settlement (none without outcome rules)."""
    if billed is None:
        billed = outcomes_repository.billed_tasks(session, tenant.id, period, customer, timezone=tenant.timezone)
    done = (billed["status"] == "completed").to_numpy()
    pending = outcomes_repository.pending_at_end(session, tenant.id, period, customer, timezone=tenant.timezone)
    return _tally(billed["customer"][done], task_counts(billed)[done]), _tally(pending["customer"], task_counts(pending))


def _tally(names: pd.Series, tasks: np.ndarray) -> dict[str, int]:
    """Tasks per customer, each row counting as the tasks it stands for (`TASK_COUNT`)."""
    sums = pd.Series(tasks, index=names.to_numpy(dtype=object)).groupby(level=0).sum()
    return {str(k): int(v) for k, v in sums.items()}


@dataclass(frozen=True)
class RatingInput:
    """The month as `pricing.compare` reads it: token usage, ended tasks, and the customers with
    a plan (usage of customers without one is left out: nothing to rate it under); and the same
    usage of every customer, which an open month's drafts rate (`month_summary`)."""

    tokens: pd.DataFrame
    tasks: pd.DataFrame  # as they bill; grouped (`pricing.usage.TASK_COUNT`) when from the figures
    assigned: dict[str, Assignment]
    book: PlanBook | None
    ended: pd.DataFrame  # every task that ended in the month, with or without a plan
    usage: BilledUsage  # token usage and billed tasks of every customer, with or without a plan
    usage_rows: pd.DataFrame  # the month's usage as read (`pricing.repository.month_usage`)


def rating_input(session: Session, tenant: Tenant, period: Period, *, customer: str | None = None,
                 ended: pd.DataFrame | None = None, figures: pd.DataFrame | None = None) -> RatingInput:  # fmt: skip
    """The month's usage, read once for its comparison, its drafts and its view: its token usage
    summed over the month's days unless rating needs them (`pricing.usage.token_days_matter`).
    `ended`: the month's ended tasks when already read (`TaskScan.ended`); `figures`: the month's
    per customer-month figures when they stand for its tasks (`pricing.open_month.usable_figures`):
    the tasks are then rated as groups, and `ended` is the groups unless given."""
    plans = pricing_repository.stored_plans(session, tenant.id).book
    rows = pricing_repository.month_usage(session, tenant.id, period, customer, by_day=token_days_matter(plans, period.first_day))
    tokens = pricing_repository.rating_tokens(rows)
    if outcomes_repository.rule_book(session, tenant.id) or (ended is None and figures is None):
        # with rules, tasks bill when they settle (and the figures never stand for them)
        ended = billed = outcomes_repository.billed_tasks(session, tenant.id, period, customer, timezone=tenant.timezone)
    elif figures is not None:  # no rules, no disputes (`usable`): the ended tasks are what the month bills
        billed = open_month.billed_groups(figures, period)
        ended = billed if ended is None else ended
    else:  # as `billed_tasks` gives them: no task whose dispute was accepted in an open month
        ended = billed = outcomes_repository.drop_disputed(session, tenant.id, ended, customer)
    usage = BilledUsage(tokens, billed)
    tasks = billed
    names = usage.customers
    assigned = pricing_repository.assignments_on(session, tenant.id, last_day(period), customers_=names)
    if names - set(assigned):
        tokens = tokens[tokens["customer"].isin(list(assigned))].reset_index(drop=True)
        tasks = tasks[tasks["customer"].isin(list(assigned))].reset_index(drop=True)
    return RatingInput(tokens, tasks, assigned, plans if assigned else None, ended, usage, rows)


def month_comparison(
    tenant: Tenant, period: Period, month: RatingInput, costs: dict[str, int]
) -> list[ComparisonRow]:
    """Each customer with a plan and usage, under its plan and the plans it is compared with.
    `costs`: provider cost per customer in micro-units (the customers file's)."""
    if not month.assigned or month.book is None:
        return []
    book, assigned = month.book, month.assigned
    result = compare_plans(
        month=period.first_day, customers=[assigned[c].as_customer_plan() for c in sorted(assigned)], plans=book,
        token_usage=month.tokens, tasks=month.tasks, currency=tenant.currency, tz=tenant.timezone, aggregates=False,
    )  # fmt: skip
    rows = []
    for record in result.by_customer.to_dict("records"):
        currency = record["currency"]
        revenue = Decimal(record["revenue"])
        cost = costs.get(record["customer"], 0)
        margin = revenue - cost_decimal(cost)
        rows.append(ComparisonRow(
            customer=record["customer"], plan=record["plan"], billed=bool(record["billed"]), currency=currency,
            revenue_minor=to_minor(revenue, currency), provider_cost_micros=cost,
            margin_minor=to_minor(round_money(margin, currency), currency),
            margin_pct=quantize(margin / revenue, 4) if revenue else None,
            tasks_completed=int(record["tasks_completed"]),
            revenue_per_completed_task=_decimal_or_none(record["revenue_per_completed_task"]),
            break_even_job_price=_decimal_or_none(record["break_even_job_price"]),
            plan_type=book.history(record["plan"])[0].type,
        ))  # fmt: skip
    lineup = {c: [assigned[c].plan, *assigned[c].compare_with] for c in assigned}
    rows.sort(
        key=lambda r: (
            r.customer,
            lineup[r.customer].index(r.plan) if r.plan in lineup[r.customer] else 99,
            r.plan,
        )
    )
    return rows


def _decimal_or_none(value: Any) -> Decimal | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return Decimal(value)


# --- the files, as batches of text ----------------------------------------------------------------


def customer_batches(summary: MonthSummary) -> Iterator[Batch]:
    rows = summary.customers
    yield {
        "customer": [r.customer for r in rows],
        "plan": [r.plan for r in rows],
        "currency": [r.currency for r in rows],
        "tasks_completed": [str(r.counts.completed) for r in rows],
        "tasks_failed": [str(r.counts.failed) for r in rows],
        "tasks_cancelled": [str(r.counts.cancelled) for r in rows],
        "tasks_open": [str(r.counts.open) for r in rows],
        "input_tokens": [str(r.usage.input_tokens) for r in rows],
        "output_tokens": [str(r.usage.output_tokens) for r in rows],
        "cache_read_tokens": [str(r.usage.cache_read_tokens) for r in rows],
        "cache_write_tokens": [str(r.usage.cache_write_tokens) for r in rows],
        "reasoning_tokens": [str(r.usage.reasoning_tokens) for r in rows],
        "provider_cost": [cost_text(r.provider_cost_micros) for r in rows],
        "amount_due": [
            "" if r.amount_due_minor is None else minor_text(r.amount_due_minor, r.currency) for r in rows
        ],
        "margin": ["" if r.margin_minor is None else minor_text(r.margin_minor, r.currency) for r in rows],
        "jobs_billed": [str(r.jobs_billed) for r in rows],
        "jobs_pending": [str(r.jobs_pending) for r in rows],
    }


def spend_batches(rows: Sequence[Any]) -> Iterator[Batch]:
    """The spend file's rows (`reports.repository.spend`, ordered by customer)."""
    costs: list[str] = []
    customer, nanos, rem, shown = None, 0, 0, 0
    for row in rows:
        if row.customer != customer:
            customer, nanos, rem, shown = row.customer, 0, 0, 0
        nanos, rem = nanos + int(row.cost_nanos), rem + int(row.cost_rem)
        running = micro_units(nanos, rem)
        costs.append(cost_text(running - shown))
        shown = running
    yield {
        "customer": [r.customer for r in rows],
        "actor": [r.actor for r in rows],
        "agent": [r.agent for r in rows],
        "tasks": [str(r.tasks) for r in rows],
        "usage_events": [str(r.usage_events) for r in rows],
        "input_tokens": [str(r.input_tokens) for r in rows],
        "output_tokens": [str(r.output_tokens) for r in rows],
        "provider_cost": costs,
    }


def invoice_line_batches(invoices: MonthInvoices) -> Iterator[Batch]:
    lines = [(invoice, line) for invoice in invoices.invoices for line in invoice.lines]
    yield {
        "invoice": [invoice.number or "" for invoice, _ in lines],
        "customer": [invoice.customer for invoice, _ in lines],
        "period": [line.adjusts_period or invoice.period for invoice, line in lines],
        "line": [str(line.line_no) for _, line in lines],
        "description": [line.description for _, line in lines],
        "quantity": [line.quantity for _, line in lines],
        "unit_price": [line.unit_price for _, line in lines],
        "amount": [minor_text(line.amount_minor, invoice.currency) for invoice, line in lines],
        "currency": [invoice.currency for invoice, _ in lines],
    }


def comparison_batches(rows: Sequence[ComparisonRow]) -> Iterator[Batch]:
    yield {
        "customer": [r.customer for r in rows],
        "plan": [r.plan for r in rows],
        "billed": [bool_text(r.billed) for r in rows],
        "revenue": [minor_text(r.revenue_minor, r.currency) for r in rows],
        "provider_cost": [cost_text(r.provider_cost_micros) for r in rows],
        "margin": [minor_text(r.margin_minor, r.currency) for r in rows],
        "margin_pct": [decimal_text(r.margin_pct) for r in rows],
        "tasks_completed": [str(r.tasks_completed) for r in rows],
        "revenue_per_completed_task": [decimal_text(r.revenue_per_completed_task) for r in rows],
        "break_even_job_price": [decimal_text(r.break_even_job_price) for r in rows],
    }


def costs_of(summary: MonthSummary) -> dict[str, int]:
    return {row.customer: row.provider_cost_micros for row in summary.customers}
