"""Queries of the reports: a tenant-local month of the rollup and of the invoices. Every query is
scoped by tenant.

Sorting is by byte order on both databases (PostgreSQL's `C` collation, SQLite's default), so
that a rerun, or the other database, lists rows in the same order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd
from sqlalchemy import ColumnElement, and_, case, func, literal, or_, select
from sqlalchemy.orm import Session

from metering.core.db import byte_order, driver_rows
from metering.core.periods import Period
from metering.core.tables import rollup_state, task_usage, task_usage_detail, usage_daily
from metering.events.ingest import to_us
from metering.rollup.repository import cost_sums, summed_nanos
from pricing.tables import billing_periods, credit_notes, invoice_lines, invoices
from pricing.tables import customers as pricing_customers
from pricing.usage import summable

USAGE_MEASURES = ("usage_events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                  "reasoning_tokens", "cost_nanos", "cost_rem", "unpriced_events")  # fmt: skip
TASK_FIELDS = ("customer", "task", "task_type", "status", "started_us", "ended_us", *USAGE_MEASURES, "task_cost_nanos",
               "task_cost_rem")  # fmt: skip
STATUSES = ("completed", "failed", "cancelled", "open")


def _sums(table: Any) -> list[Any]:
    return [func.coalesce(func.sum(table.c[name]), 0).label(name) for name in USAGE_MEASURES]


# --- spend by actor and agent ---------------------------------------------------------------------

SPEND_FIELDS = ("customer", "actor", "agent", "tasks", "usage_events", "input_tokens", "output_tokens", "cost_nanos", "cost_rem")


@dataclass(frozen=True)
class SpendRow:
    customer: str
    actor: str  # '' where the events named none
    agent: str
    tasks: int
    usage_events: int
    input_tokens: int
    output_tokens: int
    cost_nanos: int  # exact: nanos + rem in 1e-15
    cost_rem: int


def _spend_rows(session: Session, query: Any) -> list[SpendRow]:
    rows = []
    for r in session.execute(query):
        got = r._mapping
        rows.append(SpendRow(
            customer=got.get("customer", ""), actor=r.actor, agent=r.agent, tasks=int(got.get("tasks", 0)),
            usage_events=int(r.usage_events), input_tokens=int(r.input_tokens), output_tokens=int(r.output_tokens),
            cost_nanos=summed_nanos(r), cost_rem=int(r.cost_rem),
        ))  # fmt: skip
    return rows


def spend(session: Session, tenant_id: int, period: Period) -> list[SpendRow]:
    """The month's usage per customer, actor and agent (`SPEND_FIELDS`; '' where the usage events
    named none), by those three in byte order. `tasks` counts the distinct tasks with a usage
    event of that customer, actor and agent in the month: a task two agents worked on counts
    for each."""
    d = task_usage_detail.c
    keys = (d.customer, d.actor, d.agent)
    sums = [func.sum(d[name]).label(name) for name in SPEND_FIELDS[4:7]]
    query = (
        select(*keys, func.count(func.distinct(d.task)).label("tasks"), *sums, *cost_sums(task_usage_detail))
        .where(d.tenant_id == tenant_id, d.day >= period.first_day, d.day < period.next_first_day)
        .group_by(*keys)
        .order_by(*(byte_order(session, key) for key in keys))
    )
    return _spend_rows(session, query)


def spend_by_person_of(usage: pd.DataFrame) -> list[SpendRow]:
    """The month's usage per actor and agent (of all customers, or one) from its usage as read
    once (`pricing.repository.month_usage`): actor, agent ('' where none was given), usage_events,
    input_tokens, output_tokens, cost_nanos, cost_rem."""
    if usage.empty:
        return []
    columns = ["usage_events", "input_tokens", "output_tokens", "cost_nanos", "cost_rem"]
    sums = usage[["actor", "agent"]].join(usage[columns].apply(summable)).groupby(["actor", "agent"], sort=False)[columns].sum()
    return [SpendRow("", actor, agent, 0, int(e), int(i), int(o), int(n), int(r))
            for (actor, agent), (e, i, o, n, r) in zip(sums.index.tolist(), sums.to_numpy().tolist(), strict=True)]  # fmt: skip


# --- billing periods ------------------------------------------------------------------------------


def closed_months(session: Session, tenant_id: int) -> set[str]:
    query = select(billing_periods.c.period).where(billing_periods.c.tenant_id == tenant_id)
    return set(session.execute(query).scalars())


# --- usage ----------------------------------------------------------------------------------------


@dataclass
class Usage:
    """Additive usage measures; cost exact as nanos + remainder in 1e-15."""

    usage_events: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nanos: int = 0
    cost_rem: int = 0
    unpriced_events: int = 0

    @classmethod
    def of(cls, row: Any) -> Usage:
        return cls(*(int(row._mapping[name]) for name in USAGE_MEASURES))


def customer_usage(
    session: Session, tenant_id: int, period: Period, customer: str | None = None
) -> dict[str, Usage]:
    """The month's usage per customer (of the usage events), from `usage_daily`."""
    where = [usage_daily.c.tenant_id == tenant_id, usage_daily.c.day >= period.first_day,
             usage_daily.c.day < period.next_first_day]  # fmt: skip
    if customer is not None:
        where.append(usage_daily.c.customer == customer)
    rows = session.execute(
        select(usage_daily.c.customer, *_sums(usage_daily)).where(*where).group_by(usage_daily.c.customer)
    )
    return {row.customer: Usage.of(row) for row in rows}


def customer_usage_of(usage: pd.DataFrame) -> dict[str, Usage]:
    """`customer_usage` from the month's usage as read once (`pricing.repository.month_usage`)."""
    if usage.empty:
        return {}
    sums = usage[["customer"]].join(usage[list(USAGE_MEASURES)].apply(summable)).groupby("customer", sort=False)[list(USAGE_MEASURES)].sum()
    return {name: Usage(*(int(v) for v in values)) for name, values in zip(sums.index.tolist(), sums.to_numpy().tolist(), strict=True)}


@dataclass
class TaskCounts:
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    open: int = 0


def ended_customers(session: Session, tenant_id: int, period: Period) -> set[str]:
    """Customers with a task whose terminal event lies in the month."""
    t = task_usage.c
    query = (
        select(t.customer)
        .distinct()
        .where(t.tenant_id == tenant_id, t.ended_us >= to_us(period.start), t.ended_us < to_us(period.end))
    )
    return set(session.execute(query).scalars())


def month_condition(period: Period) -> tuple[list[ColumnElement[bool]], ColumnElement[bool]]:
    """Tasks with an event in the month: a necessary WHERE (their events span the month) and the
    HAVING that decides (usage in the month, or their first or last event, start or end in it)."""
    start, end = to_us(period.start), to_us(period.end)
    t = task_usage.c
    where = [t.first_event_us < end, t.last_event_us >= start]
    within = or_(
        func.count(task_usage_detail.c.day) > 0,
        t.first_event_us >= start,
        t.last_event_us < end,
        and_(t.ended_us >= start, t.ended_us < end),
        and_(t.started_us >= start, t.started_us < end),
    )
    return where, within


def stream_tasks(
    session: Session, tenant_id: int, period: Period, *, customer: str | None = None, batch_size: int = 20_000
) -> Iterator[Sequence[Any]]:
    """Every task with an event in the month, by task, with the month's share of its usage and
    the whole task's cost (`TASK_FIELDS`), in batches from a server-side cursor. The order is the primary key's, so
    SQLite streams rows as it finds them, without sorting the month first (bounded memory)."""
    t, d = task_usage.c, task_usage_detail.c
    where, within = month_condition(period)
    where.append(t.tenant_id == tenant_id)
    if customer is not None:
        where.append(t.customer == customer)
    joined = task_usage.outerjoin(
        task_usage_detail,
        and_(
            d.tenant_id == t.tenant_id,
            d.task == t.task,
            d.day >= period.first_day,
            d.day < period.next_first_day,
        ),
    )
    keys = (t.customer, t.task, t.task_type, t.status, t.started_us, t.ended_us)
    query = (
        select(
            *keys,
            *_sums(task_usage_detail),
            t.cost_nanos.label("task_cost_nanos"),
            t.cost_rem.label("task_cost_rem"),
        )
        .select_from(joined)
        .where(*where)
        # By the primary key: SQLite groups and orders in its order, without a sort, and
        # PostgreSQL allows the table's other columns with it.
        .group_by(t.tenant_id, t.task)
        .having(within)
        .order_by(t.tenant_id, byte_order(session, t.task))
    )
    yield from _driver_rows(session, query, batch_size)


def _driver_rows(session: Session, query: Any, batch_size: int) -> Iterator[Sequence[Any]]:
    return driver_rows(session.connection(), query, batch_size=batch_size)


# --- invoices -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineRecord:
    line_no: int
    kind: str
    description: str
    quantity: str  # decimal text, as billed
    unit_price: str
    amount_minor: int
    adjusts_period: str | None


@dataclass(frozen=True)
class InvoiceRecord:
    id: int | None  # None: a draft
    number: str | None
    customer: str
    period: str
    status: str  # draft, finalized
    currency: str
    plan: str
    total_minor: int
    credited_minor: int = 0
    lines: tuple[LineRecord, ...] = field(default=())
    stripe_status: str | None = None  # None: not pushed (yet, or Stripe sync is off)
    stripe_error: str | None = None  # why the last push failed


def finalized_invoices(session: Session, tenant_id: int, label: str | None, customer: str | None = None, *,
                       invoice_id: int | None = None) -> list[InvoiceRecord]:  # fmt: skip
    """The month's finalized invoices with their lines, by invoice number (or one invoice by id,
    finalized or void)."""
    where = [invoices.c.tenant_id == tenant_id]
    if invoice_id is not None:
        if not 0 < invoice_id < 2**63:  # no such id, and a database integer cannot even hold it
            return []
        where += [invoices.c.id == invoice_id, invoices.c.status != "draft"]
    else:
        where += [invoices.c.period == label, invoices.c.status == "finalized"]
    if customer is not None:
        where.append(invoices.c.customer == customer)
    credited = (
        select(func.coalesce(func.sum(credit_notes.c.amount_minor), 0))
        .where(credit_notes.c.invoice_id == invoices.c.id)
        .scalar_subquery()
    )
    rows = session.execute(
        select(invoices, credited.label("credited"))
        .where(*where)
        .order_by(byte_order(session, invoices.c.number))
    ).all()
    lines: dict[int, list[LineRecord]] = defaultdict(list)
    if rows:
        found = session.execute(
            select(invoice_lines)
            .join(invoices, invoices.c.id == invoice_lines.c.invoice_id)
            .where(*where)
            .order_by(invoice_lines.c.invoice_id, invoice_lines.c.line_no)
        )
        for line in found:
            lines[line.invoice_id].append(
                LineRecord(line.line_no, line.kind, line.description, line.quantity, line.unit_price,
                           int(line.amount_minor), line.adjusts_period)
            )  # fmt: skip
    return [
        InvoiceRecord(r.id, r.number, r.customer, r.period, r.status, r.currency, r.plan, int(r.total_minor),
                      int(r.credited), tuple(lines[r.id]), r.stripe_status, r.stripe_error)
        for r in rows
    ]  # fmt: skip


def stripe_failures(session: Session, tenant_id: int) -> list[dict[str, Any]]:
    """The tenant's finalized invoices whose push to Stripe failed for good (retried only on
    demand: `taskmeter stripe sync --retry-failed`), oldest first."""
    rows = session.execute(
        select(invoices.c.id, invoices.c.number, invoices.c.customer, invoices.c.period, invoices.c.stripe_error)
        .where(invoices.c.tenant_id == tenant_id, invoices.c.status == "finalized", invoices.c.stripe_status == "failed")
        .order_by(invoices.c.id)
    ).all()
    return [dict(row._mapping) for row in rows]


def invoiced_totals(session: Session, tenant_id: int, labels: Sequence[str]) -> dict[tuple[str, str], int]:
    """Per (period, currency): the sum of finalized invoice totals."""
    rows = session.execute(
        select(invoices.c.period, invoices.c.currency, func.sum(invoices.c.total_minor))
        .where(
            invoices.c.tenant_id == tenant_id,
            invoices.c.period.in_(list(labels)),
            invoices.c.status == "finalized",
        )
        .group_by(invoices.c.period, invoices.c.currency)
    )
    return {(period, currency): int(total) for period, currency, total in rows}


# --- the dashboard's aggregates ---------------------------------------------------------------------


def monthly_cost(session: Session, tenant_id: int, first_day: date, end_day: date,
                 customer: str | None = None) -> dict[date, tuple[int, int]]:  # fmt: skip
    """(cost nanos, cost rem) per tenant-local month (by its first day) of days [first_day, end_day)."""
    u = usage_daily.c
    where = [u.tenant_id == tenant_id, u.day >= first_day, u.day < end_day]
    if customer is not None:
        where.append(u.customer == customer)
    out: dict[date, tuple[int, int]] = {}
    for day, nanos, rem in session.execute(
        select(u.day, func.sum(u.cost_nanos), func.sum(u.cost_rem)).where(*where).group_by(u.day)
    ):
        month = (day if isinstance(day, date) else date.fromisoformat(str(day))).replace(day=1)
        before = out.get(month, (0, 0))
        out[month] = (before[0] + int(nanos), before[1] + int(rem))
    return out


def first_day(session: Session, tenant_id: int, customer: str | None = None) -> date | None:
    """The tenant-local day of the first usage or invoice (of a customer, or of the tenant)."""
    u = usage_daily.c
    query = select(func.min(u.day)).where(u.tenant_id == tenant_id)
    invoiced = select(func.min(invoices.c.period)).where(invoices.c.tenant_id == tenant_id)
    if customer is not None:
        query = query.where(u.customer == customer)
        invoiced = invoiced.where(invoices.c.customer == customer)
    day = session.execute(query).scalar()
    period = session.execute(invoiced).scalar()
    found = [date.fromisoformat(str(day)) if day is not None and not isinstance(day, date) else day,
             date.fromisoformat(f"{period}-01") if period else None]  # fmt: skip
    return min((d for d in found if d is not None), default=None)


def watermark(session: Session, tenant_id: int) -> int:
    query = select(rollup_state.c.watermark_seq).where(rollup_state.c.tenant_id == tenant_id)
    return int(session.execute(query).scalar() or 0)


def unpriced_models_of(usage: pd.DataFrame) -> list[dict[str, Any]]:
    """Models the month's usage events named that have no price (their tasks are `unpriced`),
    from its usage as read once (`pricing.repository.month_usage`), by provider and model in byte
    order: events, customers, and the tokens of the daily rows with unpriced events."""
    rows = usage[(usage["unpriced_events"] > 0).to_numpy()]
    if rows.empty:
        return []
    sums = rows.groupby(["provider", "model"])[["unpriced_events", "unpriced_tokens"]].sum()
    customers = rows.groupby(["provider", "model"])["customer"].nunique()
    found = [{"provider": p, "model": m, "events": int(e), "customers": int(customers[(p, m)]), "tokens": int(t)}
             for (p, m), (e, t) in zip(sums.index.tolist(), sums.to_numpy().tolist(), strict=True)]  # fmt: skip
    return sorted(found, key=lambda row: (row["provider"].encode(), row["model"].encode()))


def cost_buckets(
    session: Session, tenant_id: int, period: Period, edges_nanos: Sequence[int], customer: str | None = None
) -> list[tuple[str | None, str, int, int, int]]:
    """Tasks that ended in the month, per (task type, status, bucket of whole-task provider
    cost): (task_type, status, bucket, tasks, cost nanos). Bucket i holds costs in
    [edges[i-1], edges[i]); bucket 0 those below edges[0]; the last, those from edges[-1]."""
    t = task_usage.c
    bucket = case(
        *((t.cost_nanos < edge, i) for i, edge in enumerate(edges_nanos)), else_=literal(len(edges_nanos))
    )
    where = [
        t.tenant_id == tenant_id,
        t.ended_us >= to_us(period.start),
        t.ended_us < to_us(period.end),
        t.status != "open",
    ]
    if customer is not None:
        where.append(t.customer == customer)
    rows = session.execute(
        select(t.task_type, t.status, bucket.label("bucket"), func.count(), func.sum(t.cost_nanos))
        .where(*where)
        .group_by(t.task_type, t.status, bucket)
    )
    return [(task_type, status, int(b), int(n), int(c)) for task_type, status, b, n, c in rows]


def task_row(session: Session, tenant_id: int, task: str) -> Any:
    return session.execute(
        select(task_usage).where(task_usage.c.tenant_id == tenant_id, task_usage.c.task == task)
    ).one_or_none()


def known_customers(session: Session, tenant_id: int) -> list[str]:
    """Customers with a plan, by name."""
    query = select(pricing_customers.c.customer).where(pricing_customers.c.tenant_id == tenant_id)
    return sorted(session.execute(query).scalars())
