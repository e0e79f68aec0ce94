"""An open month's tasks from the per customer-month figures (`customer_months`, kept current by
the rollup: `metering.rollup.month_figures`) instead of every task row of the month.

Rating a month needs, of its ended tasks, per customer: how many completed tasks of each task
type, how many failed or cancelled, and their provider cost (`pricing.rating`, `pricing.compare`).
The figures hold exactly that, summed; `billed_groups` gives it as grouped tasks
(`pricing.usage.TASK_COUNT`: a row per customer, task type and status, counted as its tasks), so
that every count and every cost sum that rating makes is the per-task one. What the figures
cannot give falls back to the task rows (`usable` says when):

- outcome rules: a task bills when it settles, which depends on the time of the read;
- disputes accepted in an open month: those tasks are taken out by name;
- a figure whose sum passed int64 (`too_large`: kept as zero);
- a per-job plan whose version changes inside the month (a task's prices are those of the
  version in force at its end, which the figures do not keep), or with an included allowance
  and no tiers (the free tasks are the month's first by end time).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import ROUND_FLOOR

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, literal_column, or_, select
from sqlalchemy.orm import Session

from metering.core.periods import Period
from metering.core.tables import customer_months, task_usage
from metering.core.tenants import Tenant
from metering.costs.prices import REM_PER_NANO, settle_nanos
from metering.events.ingest import to_us
from metering.rollup import month_figures
from pricing import outcomes_repository
from pricing.plans import PerJobPlan, Plan, PlanBook
from pricing.repository import fetch_columns, stored_plans
from pricing.usage import TASK_COLUMNS, TASK_COUNT


def usable(session: Session, tenant_id: int, period: Period, book: PlanBook | None, customer: str | None = None) -> bool:
    """Whether the month's ended tasks can be read from the figures (see the module)."""
    if outcome_rules(session, tenant_id) or outcomes_repository.disputed_tasks(session, tenant_id, customer):
        return False
    if too_large(session, tenant_id, period, customer):
        return False
    if book is None:
        return True
    for plan_id in book.versions:
        history = book.history(plan_id)
        if not isinstance(history[-1], PerJobPlan):
            continue
        if any(p.effective_from and period.first_day < p.effective_from <= period.last_day for p in history):
            return False
        if any(p.included and not p.tiers for p in history):
            return False
    return True


def usable_figures(session: Session, tenant_id: int, period: Period, customer: str | None = None) -> pd.DataFrame | None:
    """The month's `figures` when they stand for its ended tasks (`usable`, under the plans
    stored now), else None."""
    book = stored_plans(session, tenant_id).book
    return figures(session, tenant_id, period, customer) if usable(session, tenant_id, period, book, customer) else None


def too_large(session: Session, tenant_id: int, period: Period, customer: str | None = None) -> bool:
    """Whether a figure of the month (of the customer) passed int64: kept as zero
    (`metering.rollup.kept_sums`), so its tasks are read instead."""
    c = customer_months.c
    # `too_large > 0` as a literal: the partial index's own condition, which a planner matches only so.
    query = select(c.month).where(c.tenant_id == tenant_id, c.month == period.label, c.too_large > literal_column("0"))
    if customer is not None:
        query = query.where(c.customer == customer)
    return session.execute(query.limit(1)).first() is not None


def outcome_rules(session: Session, tenant_id: int) -> bool:
    return bool(outcomes_repository.rule_book(session, tenant_id))


def later_tasks(session: Session, tenant_id: int, period: Period, customer: str | None = None) -> bool:
    """Whether a task of the tenant (or customer) ended, or had its last event, after the month."""
    c = customer_months.c
    query = select(c.month).where(c.tenant_id == tenant_id, c.month > period.label)
    if customer is not None:
        query = query.where(c.customer == customer)
    return session.execute(query.limit(1)).first() is not None


def figures(session: Session, tenant_id: int, period: Period, customer: str | None = None) -> pd.DataFrame:
    """The month's rows of `customer_months`: customer, task_type ('' for none), status, bucket,
    tasks, usage_events, input_tokens, output_tokens, cost_nanos (whole tasks, settled)."""
    c = customer_months.c
    names = ("customer", "task_type", "status", "bucket", "tasks", "usage_events", "input_tokens", "output_tokens", "cost_nanos")
    query = select(*[c[n] for n in names]).where(c.tenant_id == tenant_id, c.month == period.label)
    if customer is not None:
        query = query.where(c.customer == customer)
    return fetch_columns(session, query, names, texts=names[:3])


def billed_groups(rows: pd.DataFrame, period: Period) -> pd.DataFrame:
    """The figures' ended tasks as grouped tasks (`TASK_COLUMNS` + `TASK_COUNT`, see the module):
    one row per customer, task type and status, ending at the month's start (their prices'
    version is the month's: `usable`), named `<customer>#<n>`."""
    ended = rows[rows["status"] != "open"]
    groups = ended.groupby(["customer", "task_type", "status"], sort=True, as_index=False)[["tasks", "cost_nanos"]].sum()
    groups = groups[groups["tasks"] > 0].reset_index(drop=True)
    kind = groups["task_type"].to_numpy(dtype=object, copy=True)
    kind[kind == ""] = None  # no task type
    customer = groups["customer"].to_numpy(dtype=object)
    frame = pd.DataFrame({
        "customer": customer,
        "task": np.array([f"{c}#{i}" for i, c in enumerate(customer.tolist())], dtype=object),
        "task_type": kind,
        "status": groups["status"].to_numpy(dtype=object),
        "ended_at": pd.to_datetime(np.full(len(groups), to_us(period.start), dtype=np.int64), unit="us", utc=True).as_unit("ns"),
        "provider_cost_nanos": groups["cost_nanos"].to_numpy(dtype=np.int64),
        TASK_COUNT: groups["tasks"].to_numpy(dtype=np.int64),
    })  # fmt: skip
    return frame[[*TASK_COLUMNS, TASK_COUNT]]


def job_price_edges(plans: Iterable[Plan]) -> list[int]:
    """Bucket edges for the figures (`metering.rollup.month_figures.set_edges`): just above every
    per-job price of `plans` (every version), in nanos, so that whether a task costs more than its
    job price (the dashboard's losing tasks) is the same for all of a bucket's tasks."""
    prices = {price for plan in plans if isinstance(plan, PerJobPlan) for price in (plan.prices or {}).values()}
    # A task's cost is whole nanos: it exceeds a price p exactly when it reaches floor(p) + 1.
    return sorted(int(p.scaleb(9).to_integral_value(rounding=ROUND_FLOOR)) + 1 for p in prices)


def keep_edges(session: Session, tenant: Tenant, *, now: datetime) -> bool:
    """Put the figures' bucket edges on the job prices of the plans stored now (`job_price_edges`),
    rewriting the tenant's figures when they move. Returns whether they did."""
    book = stored_plans(session, tenant.id).book
    edges = job_price_edges(plan for history in book.versions.values() for plan in history)
    return month_figures.set_edges(session.connection(), tenant.id, tenant.timezone, edges, now=now)


def figure_edges(session: Session, tenant_id: int) -> np.ndarray:
    """The edges of the figures' cost buckets as the session sees them (`month_figures.edges_of`)."""
    return month_figures.edges_of(session.connection(), tenant_id)


def times_after(session: Session, tenant_id: int, period: Period, bound_us: int, customer: str | None = None) -> bool:
    """Whether a task of the tenant (or customer) ended or was reopened in [bound, the month's end):
    its outcome counts up to a `now` inside the month depend on that time (events dated ahead)."""
    t = task_usage.c
    end = to_us(period.end)
    for time in (t.ended_us, t.reopened_us):
        query = select(t.task).where(t.tenant_id == tenant_id, time >= bound_us, time < end)
        if customer is not None:
            query = query.where(t.customer == customer)
        if session.execute(query.limit(1)).first() is not None:
            return True
    return False


def reopened_and_rejected(session: Session, tenant_id: int, period: Period, customer: str | None = None) -> dict[str | None, tuple[int, int]]:
    """Per task type (None: none), the tasks reopened in the month (their latest reopening) and
    those rejected that failed in it: the few tasks `pricing.outcome_counts` counts beside the
    figures (through the partial indexes of migration 0021)."""
    t = task_usage.c
    start, end = to_us(period.start), to_us(period.end)
    mine = [t.tenant_id == tenant_id] if customer is None else [t.tenant_id == tenant_id, t.customer == customer]
    reopened = select(t.task_type, func.count()).where(*mine, t.reopened_us >= start, t.reopened_us < end).group_by(t.task_type)
    # `rejected > 0` as a literal: the partial index's own condition, which a planner matches only so.
    rejected = select(t.task_type, func.count()).where(
        *mine, t.rejected > literal_column("0"), t.ended_us >= start, t.ended_us < end, t.status == "failed"
    ).group_by(t.task_type)
    out: dict[str | None, tuple[int, int]] = {}
    for kind, n in session.execute(reopened).all():
        out[kind] = (int(n), 0)
    for kind, n in session.execute(rejected).all():
        out[kind] = (out.get(kind, (0, 0))[0], int(n))
    return out


def tasks_above(session: Session, tenant_id: int, period: Period, ranges: list[tuple[int, int]], customers: list[str]) -> pd.DataFrame:
    """The month's completed tasks of `customers` whose settled cost lies in one of `ranges`
    ([low, high) in nanos): customer, task_type ('' for none), cost (settled nanos). For the few
    cost buckets that a job price cuts in two (a price the figures' edges do not know yet)."""
    t = task_usage.c
    # settled = nanos + rem // R + (0 or 1) >= low  needs  nanos + rem // R + 1 >= low.
    within = or_(*(and_(t.cost_nanos < high, t.cost_nanos + t.cost_rem // REM_PER_NANO + 1 >= low) for low, high in ranges))
    query = select(t.customer, func.coalesce(t.task_type, ""), t.cost_nanos, t.cost_rem).where(
        t.tenant_id == tenant_id, t.ended_us >= to_us(period.start), t.ended_us < to_us(period.end), t.status == "completed",
        t.customer.in_(customers), within,
    )  # fmt: skip
    frame = pd.DataFrame(session.execute(query).all(), columns=["customer", "task_type", "cost_nanos", "cost_rem"])
    cost = settle_nanos(frame["cost_nanos"].to_numpy(dtype=np.int64), frame["cost_rem"].to_numpy(dtype=np.int64))
    return pd.DataFrame({"customer": frame["customer"], "task_type": frame["task_type"], "cost": cost})
