"""Queries of the pricing domain: a month of the metering rollup as rating frames, and the
stored plans and customer assignments. Every query is scoped by tenant.

The month frames follow `pricing.rating`'s contracts. Token usage comes from `usage_daily` (the
tenant-local days of the month; `input_tokens` becomes BILLABLE input, without cache reads and
writes); tasks from `task_usage` (those whose terminal event lies in the month, open ones
excluded). Provider costs are settled once per row to whole nano-units, half up
(`metering.costs.prices.settle_nanos`). Months are read as columns (Arrow on PostgreSQL, the DB-API
cursor on SQLite), never as an ORM row per value: a million tasks in a few seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import BigInteger, ColumnElement, Select, case, cast, func, select
from sqlalchemy.orm import Session

from metering.core.db import read_frame, without_index
from metering.core.periods import Period
from metering.core.tables import rollup_state, task_usage, task_usage_detail, usage_daily, usage_months
from metering.costs.prices import REM_PER_NANO, settle_nanos
from metering.events.ingest import to_us
from metering.rollup import usage_months as month_usage_sums
from pricing.plans import CustomerPlan, Plan, PlanBook, plan_from_definition
from pricing.tables import customer_plans, customers, plan_versions, plans
from pricing.usage import TASK_COLUMNS, TOKEN_USAGE_COLUMNS, summable

_TOKEN_SQL_COLUMNS = ("customer", "day", "provider", "model", "input_tokens", "output_tokens",
                      "cache_read_tokens", "cache_write_tokens", "cost_nanos", "cost_rem", "unpriced_events")  # fmt: skip
_TASK_SQL_COLUMNS = ("customer", "task", "task_type", "status", "ended_us", "cost_nanos", "cost_rem")
_DETAIL_SQL_COLUMNS = ("customer", "task", "provider", "model", "input_tokens", "output_tokens",
                       "cache_read_tokens", "cache_write_tokens", "cost_nanos", "cost_rem")  # fmt: skip
TASK_MODEL_COLUMNS = ("customer", "task", "provider", "model", "input_tokens", "output_tokens",
                      "cache_read_tokens", "cache_write_tokens", "provider_cost_nanos")  # fmt: skip


def last_day(period: Period) -> date:
    return period.next_first_day - timedelta(days=1)


# --- the rollup, as rating frames ---------------------------------------------------------------


def _fetch(session: Session, query: Select[Any], names: Sequence[str], *, texts: Sequence[str] = ()) -> pd.DataFrame:
    """The rows of `query` as columns (`metering.core.db.read_frame`): on PostgreSQL through a
    connection of its own; under the billing lock (`pricing.invoices`) the rollup cannot commit,
    so it sees what the session sees."""
    return read_frame(session.connection(), query, names, texts=texts, days=("day",))


def fetch_columns(session: Session, query: Select[Any], names: Sequence[str], *, texts: Sequence[str] = ()) -> pd.DataFrame:
    """`_fetch` for the other repositories of pricing (`pricing.outcomes_repository`)."""
    return _fetch(session, query, names, texts=texts)


def token_usage(session: Session, tenant_id: int, period: Period, customer: str | None = None) -> pd.DataFrame:
    """`usage_daily` of the month's tenant-local days, as `TOKEN_USAGE_COLUMNS`."""
    where = [usage_daily.c.tenant_id == tenant_id, usage_daily.c.day >= period.first_day, usage_daily.c.day < period.next_first_day]
    if customer is not None:
        where.append(usage_daily.c.customer == customer)
    query = select(*[usage_daily.c[n] for n in _TOKEN_SQL_COLUMNS]).where(*where)
    data = _fetch(session, query, _TOKEN_SQL_COLUMNS, texts=("customer", "provider", "model"))
    billable = data["input_tokens"] - data["cache_read_tokens"] - data["cache_write_tokens"]
    data = data.assign(input_tokens=billable, provider_cost_nanos=settle_nanos(data["cost_nanos"], data["cost_rem"]))
    return data[list(TOKEN_USAGE_COLUMNS)]


MONTH_USAGE_KEYS = ("customer", "day", "provider", "model", "actor", "agent")
MONTH_USAGE_MEASURES = month_usage_sums.SUMS
_USAGE_TEXTS = ("customer", "provider", "model", "actor", "agent")


def month_usage(session: Session, tenant_id: int, period: Period, customer: str | None = None, *, by_day: bool = True) -> pd.DataFrame:
    """`usage_daily` of the month's tenant-local days, read once for what a month's view or
    reports make of it (`rating_tokens`, and the reports' usage per customer and per person):
    `MONTH_USAGE_KEYS`, the raw `MONTH_USAGE_MEASURES` (input with its cache tokens, cost as nanos
    and remainder) and `provider_cost_nanos`, each daily row's cost settled to nanos as rating
    reads it, and `unpriced_tokens`, the input and output tokens of the daily rows with unpriced
    events. Not `by_day`: summed over the month per customer, model, actor and agent (a few rows
    per customer instead of one a day), `day` the month's first (for rating when its days do not
    matter: `pricing.usage.token_days_matter`), read from the sums the rollup keeps
    (`usage_months`, `metering.rollup.usage_months`): what `summed_days` sums of the days."""
    if by_day:
        u = usage_daily.c
        where = [u.tenant_id == tenant_id, u.day >= period.first_day, u.day < period.next_first_day]
        if customer is not None:
            where.append(u.customer == customer)
        names = (*MONTH_USAGE_KEYS, *MONTH_USAGE_MEASURES)
        data = _fetch(session, select(*[u[n] for n in names]).where(*where), names, texts=_USAGE_TEXTS)
        unpriced = (data["input_tokens"] + data["output_tokens"]).where(data["unpriced_events"] > 0, 0)
        return data.assign(provider_cost_nanos=settle_nanos(data["cost_nanos"], data["cost_rem"]), unpriced_tokens=unpriced)
    m = usage_months.c
    where = [m.tenant_id == tenant_id, m.month == period.label]
    if customer is not None:
        where.append(m.customer == customer)
    summed = (*_USAGE_TEXTS, *MONTH_USAGE_MEASURES, "provider_cost_nanos", "unpriced_tokens", "too_large")
    data = _fetch(session, select(*[m[n] for n in summed]).where(*where), summed, texts=_USAGE_TEXTS)
    if data["too_large"].any():  # a sum past int64 (kept as zero): summed from the days, as it was
        try:
            return summed_days(session, tenant_id, period, customer)
        except OverflowError:  # a sum the database cannot make: rating sums the days exactly itself
            return month_usage(session, tenant_id, period, customer, by_day=True)
    data = data.assign(day=pd.Timestamp(period.first_day).as_unit("ns"))
    return data[[*MONTH_USAGE_KEYS, *MONTH_USAGE_MEASURES, "provider_cost_nanos", "unpriced_tokens"]]


def summed_days(session: Session, tenant_id: int, period: Period, customer: str | None = None) -> pd.DataFrame:
    """`month_usage` (not by day) summed from the month's daily rows in SQL, as it was read before
    `usage_months` kept the sums: what the table must equal (the tests compare them), and what a
    month with a sum past int64 is read as. Not cast to bigint: a sum the database makes past
    int64 (PostgreSQL's are numeric) comes back whole; one it cannot make (SQLite's integer
    overflow) raises `OverflowError`."""
    u = usage_daily.c
    where = [u.tenant_id == tenant_id, u.day >= period.first_day, u.day < period.next_first_day]
    if customer is not None:
        where.append(u.customer == customer)
    # Each row's cost settled (half up, as `settle_nanos`), then summed: the sum rating makes of the rows.
    settled = u.cost_nanos + (u.cost_rem + REM_PER_NANO // 2) // REM_PER_NANO
    unpriced = case((u.unpriced_events > 0, u.input_tokens + u.output_tokens), else_=0)
    sums = [func.sum(u[n]).label(n) for n in MONTH_USAGE_MEASURES]
    keys = [u[n] for n in _USAGE_TEXTS]
    query = select(*keys, *sums, func.sum(settled).label("provider_cost_nanos"),
                   func.sum(unpriced).label("unpriced_tokens")).where(*where).group_by(*keys)  # fmt: skip
    data = _fetch(session, query, (*_USAGE_TEXTS, *MONTH_USAGE_MEASURES, "provider_cost_nanos", "unpriced_tokens"), texts=_USAGE_TEXTS)
    data = data.assign(day=pd.Timestamp(period.first_day).as_unit("ns"))
    return data[[*MONTH_USAGE_KEYS, *MONTH_USAGE_MEASURES, "provider_cost_nanos", "unpriced_tokens"]]


def rating_tokens(usage: pd.DataFrame) -> pd.DataFrame:
    """`month_usage`'s rows as rating's token usage (`TOKEN_USAGE_COLUMNS`), one row per
    customer, day, provider and model (billable input: without cache reads and writes)."""
    billable = usage["input_tokens"] - usage["cache_read_tokens"] - usage["cache_write_tokens"]
    data = usage.assign(input_tokens=billable)
    sums = [c for c in TOKEN_USAGE_COLUMNS if TOKEN_USAGE_COLUMNS[c] == "int"]
    keys = ["customer", "day", "provider", "model"]
    # Several actors or agents of one customer, day and model: one row (rating sums them the same),
    # unless a sum could pass int64 (rating sums such rows exactly itself).
    if data.duplicated(keys).any() and all(summable(data[c]).dtype != object for c in sums):
        data = data.groupby(keys, sort=False, as_index=False)[sums].sum()
        data = data.astype({name: usage[name].dtype for name in ("customer", "provider", "model")})  # as read
    return data[list(TOKEN_USAGE_COLUMNS)].reset_index(drop=True)


def ended_tasks(session: Session, tenant_id: int, period: Period, customer: str | None = None) -> pd.DataFrame:
    """Tasks whose terminal event lies in the month, as `TASK_COLUMNS` (the task's whole cost)."""
    start, end = to_us(period.start), to_us(period.end)
    ended: ColumnElement[int] = task_usage.c.ended_us
    if customer is None and _most_of_the_tasks(session, tenant_id, start, end):
        # Reading most of the table through the ended_us index visits its rows in random order:
        # a plain scan is 2.5x faster on SQLite (which keeps no statistics to choose it itself).
        ended = without_index(ended)
    where = [task_usage.c.tenant_id == tenant_id, ended >= start, ended < end, task_usage.c.status != "open"]
    if customer is not None:
        where.append(task_usage.c.customer == customer)
    query = select(*[task_usage.c[n] for n in _TASK_SQL_COLUMNS]).where(*where)
    data = _fetch(session, query, _TASK_SQL_COLUMNS, texts=("customer", "task", "task_type", "status"))
    data["ended_at"] = pd.to_datetime(data["ended_us"].to_numpy(), unit="us", utc=True).as_unit("ns")
    data["provider_cost_nanos"] = settle_nanos(data["cost_nanos"], data["cost_rem"])
    return data[list(TASK_COLUMNS)]


def _most_of_the_tasks(session: Session, tenant_id: int, start_us: int, end_us: int) -> bool:
    of_tenant = select(func.count()).where(task_usage.c.tenant_id == tenant_id)
    ended = of_tenant.where(task_usage.c.ended_us >= start_us, task_usage.c.ended_us < end_us)
    in_month = int(session.execute(ended).scalar_one())
    return in_month > 10_000 and 3 * in_month > int(session.execute(of_tenant).scalar_one())


def completed_task_usage(session: Session, tenant_id: int, period: Period, customer: str | None = None) -> pd.DataFrame:
    """Usage by model of the tasks completed in the month (all of each task's usage), for the
    per-model cost and tokens per completed job of `pricing.compare`."""
    ended = [
        task_usage.c.tenant_id == tenant_id,
        task_usage.c.status == "completed",
        task_usage.c.ended_us >= to_us(period.start),
        task_usage.c.ended_us < to_us(period.end),
    ]
    if customer is not None:
        ended.append(task_usage.c.customer == customer)
    d = task_usage_detail
    sums = [cast(func.sum(d.c[n]), BigInteger).label(n) for n in _DETAIL_SQL_COLUMNS[4:]]
    query = (
        select(task_usage.c.customer, d.c.task, d.c.provider, d.c.model, *sums)
        .select_from(d.join(task_usage, (task_usage.c.tenant_id == d.c.tenant_id) & (task_usage.c.task == d.c.task)))
        .where(*ended)
        .group_by(task_usage.c.customer, d.c.task, d.c.provider, d.c.model)
    )
    data = _fetch(session, query, _DETAIL_SQL_COLUMNS, texts=("customer", "task", "provider", "model"))
    billable = data["input_tokens"] - data["cache_read_tokens"] - data["cache_write_tokens"]
    data = data.assign(input_tokens=billable, provider_cost_nanos=settle_nanos(data["cost_nanos"], data["cost_rem"]))
    return data[list(TASK_MODEL_COLUMNS)]


@dataclass(frozen=True)
class RollupState:
    watermark_seq: int
    price_version: str


def rollup_position(session: Session, tenant_id: int) -> RollupState:
    row = session.execute(
        select(rollup_state.c.watermark_seq, rollup_state.c.price_version).where(rollup_state.c.tenant_id == tenant_id)
    ).one_or_none()
    return RollupState(0, "") if row is None else RollupState(int(row.watermark_seq), row.price_version)


def touched_since(session: Session, tenant_id: int, seq: int, start: datetime, end: datetime) -> bool:
    """Whether a task with events in [start, end) was changed by an event after `seq`."""
    query = (
        select(task_usage.c.task)
        .where(
            task_usage.c.tenant_id == tenant_id,
            task_usage.c.last_seq > seq,
            task_usage.c.first_event_us < to_us(end),
            task_usage.c.last_event_us >= to_us(start),
        )
        .limit(1)
    )
    return session.execute(query).first() is not None


# --- plans --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredVersion:
    id: int
    plan_id: str
    version: int
    effective_from: date | None
    created_at: datetime
    plan: Plan


@dataclass(frozen=True)
class StoredPlans:
    """A tenant's plans: every stored version, and the book of the versions in force (for each
    plan and start date, the newest version)."""

    rows: tuple[StoredVersion, ...]
    book: PlanBook

    @property
    def newest_id(self) -> int:
        return max((row.id for row in self.rows), default=0)

    def version_number(self, plan_id: str, effective_from: date | None) -> int | None:
        numbers = [r.version for r in self.rows if r.plan_id == plan_id and r.effective_from == effective_from]
        return max(numbers, default=None)

    def current(self) -> list[StoredVersion]:
        """The versions in the book, by plan then start date."""
        newest: dict[tuple[str, date | None], StoredVersion] = {}
        for row in self.rows:
            newest[(row.plan_id, row.effective_from)] = row
        return sorted(newest.values(), key=lambda r: (r.plan_id, r.effective_from or date.min))


def stored_plans(session: Session, tenant_id: int, *, as_of: int | None = None) -> StoredPlans:
    """The tenant's plans; with `as_of`, as they were when `plan_versions.id` was at most that
    (a plan created later is taken as it is now)."""
    rows = session.execute(
        select(plan_versions).where(plan_versions.c.tenant_id == tenant_id).order_by(plan_versions.c.plan_id, plan_versions.c.version)
    ).all()
    if as_of is not None:
        known_then = {r.plan_id for r in rows if r.id <= as_of}
        rows = [r for r in rows if r.id <= as_of or r.plan_id not in known_then]
    stored = tuple(
        StoredVersion(r.id, r.plan_id, r.version, r.effective_from, r.created_at, plan_from_definition(r.definition, r.effective_from))
        for r in rows
    )
    newest: dict[tuple[str, date | None], Plan] = {}
    for row in stored:
        newest[(row.plan_id, row.effective_from)] = row.plan
    return StoredPlans(stored, PlanBook.of(newest.values()))


def add_plan_version(session: Session, tenant_id: int, plan: Plan, definition: str, *, now: datetime) -> int:
    """Store a new version of a plan (creating the plan); returns its version number."""
    number = session.execute(
        select(func.coalesce(func.max(plan_versions.c.version), 0)).where(
            plan_versions.c.tenant_id == tenant_id, plan_versions.c.plan_id == plan.id
        )
    ).scalar_one() + 1
    if number == 1:
        session.execute(plans.insert().values(tenant_id=tenant_id, plan_id=plan.id, type=plan.type, created_at=now, updated_at=now))
    else:
        session.execute(plans.update().where(plans.c.tenant_id == tenant_id, plans.c.plan_id == plan.id).values(updated_at=now))
    session.execute(
        plan_versions.insert().values(
            tenant_id=tenant_id, plan_id=plan.id, version=number, effective_from=plan.effective_from,
            definition=definition, created_at=now,
        )
    )  # fmt: skip
    return int(number)


# --- customers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    id: int
    customer: str
    plan: str
    compare_with: tuple[str, ...]
    effective_from: date | None
    created_at: datetime

    def as_customer_plan(self) -> CustomerPlan:
        return CustomerPlan(id=self.customer, plan=self.plan, compare_with=self.compare_with)


def _assignment(row: Any) -> Assignment:
    return Assignment(row.id, row.customer, row.plan, tuple(json.loads(row.compare_with)), row.effective_from, row.created_at)


def assignment_history(session: Session, tenant_id: int, customer: str) -> list[Assignment]:
    rows = session.execute(
        select(customer_plans)
        .where(customer_plans.c.tenant_id == tenant_id, customer_plans.c.customer == customer)
        .order_by(customer_plans.c.id)
    ).all()
    return [_assignment(r) for r in rows]


def in_force(history: Iterable[Assignment], day: date | None) -> Assignment | None:
    """The assignment in force on `day` (None: since always): the newest among the latest start."""
    found = [a for a in history if a.effective_from is None or (day is not None and a.effective_from <= day)]
    return max(found, key=lambda a: (a.effective_from or date.min, a.id), default=None)


def assignments_on(
    session: Session, tenant_id: int, day: date, *, as_of: int | None = None, customers_: Iterable[str] | None = None
) -> dict[str, Assignment]:
    """Per customer, the assignment in force on a tenant-local day (optionally as it was when
    `customer_plans.id` was at most `as_of`)."""
    query = select(customer_plans).where(customer_plans.c.tenant_id == tenant_id)
    if as_of is not None:
        query = query.where(customer_plans.c.id <= as_of)
    if customers_ is not None:
        query = query.where(customer_plans.c.customer.in_(list(customers_)))
    by_customer: dict[str, list[Assignment]] = {}
    for row in session.execute(query.order_by(customer_plans.c.id)):
        by_customer.setdefault(row.customer, []).append(_assignment(row))
    found = {c: in_force(history, day) for c, history in by_customer.items()}
    return {c: a for c, a in found.items() if a is not None}


def newest_assignment_id(session: Session, tenant_id: int) -> int:
    query = select(func.coalesce(func.max(customer_plans.c.id), 0)).where(customer_plans.c.tenant_id == tenant_id)
    return int(session.execute(query).scalar_one())


def get_customer(session: Session, tenant_id: int, customer: str) -> Any:
    return session.execute(
        select(customers).where(customers.c.tenant_id == tenant_id, customers.c.customer == customer)
    ).one_or_none()


def add_assignment(
    session: Session, tenant_id: int, assignment: CustomerPlan, effective_from: date | None, *, now: datetime
) -> None:
    """Record a plan assignment; the customer's row shows the newest one."""
    compare_with = json.dumps(list(assignment.compare_with))
    values = {"plan": assignment.plan, "compare_with": compare_with, "updated_at": now}
    if get_customer(session, tenant_id, assignment.id) is None:
        session.execute(customers.insert().values(tenant_id=tenant_id, customer=assignment.id, created_at=now, **values))
    else:
        session.execute(
            customers.update().where(customers.c.tenant_id == tenant_id, customers.c.customer == assignment.id).values(**values)
        )
    session.execute(
        customer_plans.insert().values(
            tenant_id=tenant_id, customer=assignment.id, plan=assignment.plan, compare_with=compare_with,
            effective_from=effective_from, created_at=now,
        )
    )  # fmt: skip


def customers_created_before(session: Session, tenant_id: int, moment: datetime, customer: str | None = None) -> set[str]:
    query = select(customers.c.customer).where(customers.c.tenant_id == tenant_id, customers.c.created_at < moment)
    if customer is not None:
        query = query.where(customers.c.customer == customer)
    return set(session.execute(query).scalars())


def has_usage(session: Session, tenant_id: int, customer: str) -> bool:
    query = select(task_usage.c.task).where(task_usage.c.tenant_id == tenant_id, task_usage.c.customer == customer).limit(1)
    return session.execute(query).first() is not None
