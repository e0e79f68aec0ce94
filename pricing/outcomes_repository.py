"""Queries of outcome truth: the tenant's outcome rule versions, and the tasks a month bills once
settlement (`pricing.outcomes`) is applied. Every query is scoped by tenant.

`billed_tasks` is what rating reads for a month (`pricing.usage.TASK_COLUMNS`): without rules it
is `pricing.repository.ended_tasks` as it always was; with rules a completed task is billed in the
tenant-local month in which it settles (its `ended_at` is then the settlement instant), a failed
or cancelled one in the month it ended. `pending_tasks` are the completed tasks not settled by
`now`: the upcoming invoice shows them apart; `pending_at_end` those a month's end left waiting
(the monthly CSVs count them).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from metering.core.periods import Period
from metering.core.tables import task_usage
from metering.costs.prices import settle_nanos
from metering.events.ingest import to_us
from pricing import repository
from pricing.outcomes import RuleBook, RuleVersion, rules_from_definition, settle
from pricing.tables import disputes, outcome_rule_versions
from pricing.usage import TASK_COLUMNS

_NULLABLE = ("ended_us", "completed_us", "accepted_us", "reopened_us")
_SQL_COLUMNS = (
    "customer",
    "task",
    "task_type",
    "status",
    *_NULLABLE,
    "cost_nanos",
    "cost_rem",
    "reopened",
    "rejected",
)
_TEXTS = ("customer", "task", "task_type", "status")
OUTCOME_TASK_COLUMNS = (*TASK_COLUMNS, "settled_us", "rule_version")


# --- rule versions ------------------------------------------------------------------------------


def rule_book(session: Session, tenant_id: int) -> RuleBook:
    """Every stored version of the tenant's rules; for one start date the newest counts."""
    rows = session.execute(
        select(outcome_rule_versions)
        .where(outcome_rule_versions.c.tenant_id == tenant_id)
        .order_by(outcome_rule_versions.c.version)
    ).all()
    newest: dict[date | None, RuleVersion] = {}
    for row in rows:
        newest[row.effective_from] = RuleVersion(
            row.version, row.effective_from, rules_from_definition(row.definition)
        )
    return RuleBook(tuple(sorted(newest.values(), key=lambda v: v.effective_from or date.min)))


def add_rule_version(
    session: Session, tenant_id: int, definition: str, effective_from: date | None, *, now: datetime
) -> int:
    number = (
        session.execute(
            select(func.coalesce(func.max(outcome_rule_versions.c.version), 0)).where(
                outcome_rule_versions.c.tenant_id == tenant_id
            )
        ).scalar_one()
        + 1
    )
    session.execute(
        outcome_rule_versions.insert().values(
            tenant_id=tenant_id,
            version=number,
            effective_from=effective_from,
            definition=definition,
            created_at=now,
        )
    )
    return int(number)


# --- tasks --------------------------------------------------------------------------------------


def _read(session: Session, where: list[ColumnElement[bool]]) -> pd.DataFrame:
    columns = [
        func.coalesce(task_usage.c[n], -1).label(n) if n in _NULLABLE else task_usage.c[n]
        for n in _SQL_COLUMNS
    ]
    data = repository.fetch_columns(session, select(*columns).where(*where), _SQL_COLUMNS, texts=_TEXTS)
    for name in _NULLABLE:
        values = data[name].to_numpy(dtype=np.int64)
        data[name] = pd.arrays.IntegerArray(np.maximum(values, 0), values < 0)
    return data


def settled_frame(data: pd.DataFrame, book: RuleBook, timezone: str) -> pd.DataFrame:
    """`data` (tasks as stored) with `settled_us` and `rule_version` (`pricing.outcomes.settle`)."""
    settled = settle(data, book, timezone)
    return data.assign(
        settled_us=settled["settled_us"].to_numpy(), rule_version=settled["rule_version"].to_numpy()
    )


def task_frame(session: Session, tenant_id: int, task: str) -> pd.DataFrame:
    """One task as stored (empty when there is none), for `settled_frame`."""
    return _read(session, [task_usage.c.tenant_id == tenant_id, task_usage.c.task == task])


def disputed_tasks(session: Session, tenant_id: int, customer: str | None = None) -> set[str]:
    """Tasks whose dispute was accepted while their month was open: no invoice bills them."""
    where = [
        disputes.c.tenant_id == tenant_id,
        disputes.c.status == "accepted",
        disputes.c.invoice_id.is_(None),
    ]
    if customer is not None:
        where.append(disputes.c.customer == customer)
    return set(session.execute(select(disputes.c.task).where(*where)).scalars())


def drop_disputed(session: Session, tenant_id: int, frame: pd.DataFrame, customer: str | None = None) -> pd.DataFrame:
    """`frame` (tasks with a `task` column) without the tasks `disputed_tasks` lists."""
    return _without(frame, disputed_tasks(session, tenant_id, customer))


def _without(frame: pd.DataFrame, tasks: set[str]) -> pd.DataFrame:
    if not tasks or frame.empty:
        return frame
    return frame.loc[~frame["task"].isin(list(tasks)).to_numpy()].reset_index(drop=True)


def billed_tasks(
    session: Session,
    tenant_id: int,
    period: Period,
    customer: str | None = None,
    *,
    now: datetime | None = None,
    timezone: str = "UTC",
) -> pd.DataFrame:
    """The tasks a month bills, as `pricing.usage.TASK_COLUMNS` (+ `settled_us`, `rule_version`
    when the tenant has rules). `now` (default: the month's end) bounds settlement: a window that
    has not passed yet does not bill."""
    book = rule_book(session, tenant_id)
    disputed = disputed_tasks(session, tenant_id, customer)
    if not book:
        return _without(repository.ended_tasks(session, tenant_id, period, customer), disputed)
    start, end = to_us(period.start), to_us(period.end)
    bound = min(end, to_us(now) + 1) if now is not None else end
    reach = start - int(book.longest_window().total_seconds()) * 1_000_000
    t = task_usage.c
    where = [
        t.tenant_id == tenant_id,
        or_(
            and_(t.ended_us >= start, t.ended_us < end),
            and_(t.completed_us >= reach, t.completed_us < end),
            and_(t.accepted_us >= start, t.accepted_us < end),
        ),
    ]
    if customer is not None:
        where.append(t.customer == customer)
    data = settled_frame(_without(_read(session, where), disputed), book, timezone)
    settled = data["settled_us"].to_numpy(dtype=np.int64, na_value=-1)
    ended = data["ended_us"].to_numpy(dtype=np.int64, na_value=-1)
    status = data["status"].to_numpy(dtype=object)
    ruled_completed = settled >= 0
    other = ~ruled_completed & np.isin(status, ("failed", "cancelled"))
    at = np.where(ruled_completed, settled, np.where(other, ended, -1))
    keep = (ruled_completed | other) & (at >= start) & (at < bound)
    data = data.loc[keep].reset_index(drop=True)
    at = at[keep]
    data["status"] = np.where(ruled_completed[keep], "completed", data["status"].to_numpy(dtype=object))
    data["ended_at"] = pd.to_datetime(at, unit="us", utc=True).as_unit("ns")
    data["provider_cost_nanos"] = settle_nanos(data["cost_nanos"], data["cost_rem"])
    return data[list(OUTCOME_TASK_COLUMNS)]


def pending_tasks(
    session: Session, tenant_id: int, customer: str | None = None, *, now: datetime, timezone: str
) -> pd.DataFrame:
    """Completed tasks that have not settled by `now` (a window still running, or awaiting
    acceptance), as `settled_frame` gives them; empty without rules."""
    return _pending(session, tenant_id, customer, to_us(now), timezone=timezone)


def pending_at_end(
    session: Session, tenant_id: int, period: Period, customer: str | None = None, *, timezone: str
) -> pd.DataFrame:
    """Completed tasks whose latest completion lies before the month's end and which had not
    settled by it: a later month bills them (or none, if they are reopened or rejected first).
    As `settled_frame` gives them; empty without rules."""
    end = to_us(period.end)
    return _pending(session, tenant_id, customer, end - 1, timezone=timezone, completed_before=end)


def _pending(
    session: Session, tenant_id: int, customer: str | None, at: int, *, timezone: str,
    completed_before: int | None = None,
) -> pd.DataFrame:  # fmt: skip
    book = rule_book(session, tenant_id)
    if not book:
        return pd.DataFrame(columns=[*_SQL_COLUMNS, "settled_us", "rule_version"])
    t = task_usage.c
    recent = t.completed_us >= at - int(book.longest_window().total_seconds()) * 1_000_000
    where = [
        t.tenant_id == tenant_id,
        t.status == "completed",
        or_(recent, t.accepted_us.is_(None), t.accepted_us < t.completed_us, t.accepted_us > at)
        if book.needs_acceptance()
        else recent,
    ]
    if completed_before is not None:
        where.append(t.completed_us < completed_before)
    if customer is not None:
        where.append(t.customer == customer)
    data = settled_frame(
        _without(_read(session, where), disputed_tasks(session, tenant_id, customer)), book, timezone
    )
    settled = data["settled_us"].to_numpy(dtype=np.int64, na_value=-1)
    waiting = (settled < 0) | (settled > at)
    return data.loc[waiting & data["rule_version"].notna().to_numpy()].reset_index(drop=True)


def month_outcome_tasks(
    session: Session, tenant_id: int, period: Period, customer: str | None = None, *, timezone: str
) -> pd.DataFrame:
    """The tasks a month's outcome counts (`pricing.outcome_counts.OUTCOME_INPUT`) may count: those
    completed in the month or in the windows before it (and, with `require_acceptance`, any still
    awaiting acceptance), or accepted, reopened or ended in it; settled, and marked `excluded`
    when an accepted dispute took them off an open month's bill."""
    book = rule_book(session, tenant_id)
    start, end = to_us(period.start), to_us(period.end)
    reach = start - int(book.longest_window().total_seconds()) * 1_000_000
    t = task_usage.c
    touched: list[ColumnElement[bool]] = [
        and_(t.completed_us >= reach, t.completed_us < end),
        and_(t.accepted_us >= start, t.accepted_us < end),
        and_(t.reopened_us >= start, t.reopened_us < end),
        and_(t.ended_us >= start, t.ended_us < end),
    ]
    if book.needs_acceptance():
        touched.append(
            and_(t.status == "completed", t.completed_us < end, or_(t.accepted_us.is_(None), t.accepted_us < t.completed_us))
        )
    where = [t.tenant_id == tenant_id, or_(*touched)]
    if customer is not None:
        where.append(t.customer == customer)
    data = settled_frame(_read(session, where), book, timezone)
    excluded = disputed_tasks(session, tenant_id, customer)
    return data.assign(excluded=data["task"].isin(list(excluded)).to_numpy(dtype=bool))


def disputes_opened(session: Session, tenant_id: int, period: Period, customer: str | None = None) -> pd.DataFrame:
    """The disputes opened in the month (`pricing.outcome_counts.DISPUTE_INPUT`), with their task's type."""
    d, t = disputes.c, task_usage.c
    where = [d.tenant_id == tenant_id]
    if customer is not None:
        where.append(d.customer == customer)
    rows = session.execute(
        select(d.task, t.task_type, d.opened_at)
        .select_from(disputes.outerjoin(task_usage, and_(t.tenant_id == d.tenant_id, t.task == d.task)))
        .where(*where)
    ).all()
    start, end = to_us(period.start), to_us(period.end)
    opened = [(r.task, r.task_type, to_us(_utc(r.opened_at))) for r in rows]
    kept = [row for row in opened if start <= row[2] < end]
    return pd.DataFrame(kept, columns=["task", "task_type", "opened_us"]).astype({"opened_us": "int64"})


def _utc(moment: datetime) -> datetime:
    """A stored instant as aware UTC (SQLite gives it back naive)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
