"""Jobs counted at settlement: a tenant with outcome rules (`pricing.outcomes`) bills a job in
the tenant-local month in which it settles, so its `jobs` budgets (and the jobs part of its
`billed` budgets) count a completed task when it settles, in the period holding that instant,
not when it completes. A task awaiting settlement (its `settle_after` window running, or an
acceptance required and not given) counts nothing yet; one reopened, rejected, failed or
cancelled first never counts as completed (a failed or cancelled one still counts the plan's
`failed` price under `billed`, at its failure, as without rules). Settlement is final: a later
reopening does not take a settled job back.

Settling needs no event (a window elapses), so ingestion counts no job for such a tenant
(`metering.spend.counters`, `budget_state.jobs_at_settlement`) and `settle_counters` recounts the open
periods of its jobs and billed budgets from the stored events (`metering.spend.recount`): after each
scheduled rollup (`api.scheduler`), after a budget is put, and whenever the config changes. A
jobs budget of such a tenant lags settlement by at most the rollup interval.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from metering.core.db import upsert
from metering.core.tables import events
from metering.core.tenants import Tenant
from metering.events.ingest import to_us
from metering.spend import counters as spend
from metering.spend import recount
from metering.spend.budget_tables import budget_state
from metering.spend.budgets import MONEY_MEASURES
from pricing import outcomes_repository
from pricing.outcomes import SETTLE_INPUT, US, RuleBook, settle

_STATUS = {
    "task.completed": "completed", "task.failed": "failed", "task.cancelled": "cancelled",
    "task.reopened": "open", "task.rejected": "failed",
}  # fmt: skip
_OUTCOME_TYPES = (*_STATUS, "task.accepted")
_CHUNK = 400


def mark(session: Session, tenant: Tenant, book: RuleBook) -> bool:
    """Record whether the tenant's jobs count at settlement (it has outcome rules)."""
    flag = bool(book)
    upsert(
        session.connection(), budget_state, {"tenant_id": tenant.id, "generation": 0, "jobs_at_settlement": flag},
        key=("tenant_id",), update={"jobs_at_settlement": flag},
    )  # fmt: skip
    return flag


def recount_after_change(session: Session, tenant: Tenant, *, now: datetime) -> None:
    """After prices, aliases, plans or rules changed (`pricing.budget_billing.refresh`): the
    money and jobs budgets' open periods recounted, jobs at settlement when the tenant has rules."""
    book = outcomes_repository.rule_book(session, tenant.id)
    mark(session, tenant, book)
    spend.bump_generation(session.connection(), tenant.id)
    provider = settled_jobs(book, tenant.timezone, now=now) if book else None
    recount.recount(session.connection(), tenant.id, now=now, measures=(*MONEY_MEASURES, "jobs"), jobs=provider)


def settle_counters(session: Session, tenant: Tenant, *, now: datetime) -> bool:
    """Recount the jobs and billed budgets of a tenant with outcome rules (jobs settled by `now`);
    False (nothing done) for a tenant without rules or without such budgets."""
    state = spend.tenant_budgets(session.connection(), tenant.id)
    if not state.jobs_at_settlement or not state.index.measures() & {"jobs", "billed"}:
        return False
    book = outcomes_repository.rule_book(session, tenant.id)
    recount.recount(
        session.connection(), tenant.id, now=now, measures=("jobs", "billed"),
        jobs=settled_jobs(book, tenant.timezone, now=now),
    )  # fmt: skip
    return True


def settled_jobs(book: RuleBook, timezone: str, *, now: datetime) -> recount.JobOutcomes:
    """The jobs to count (`metering.spend.recount.JobOutcomes`): each task settled by `now`, as
    completed at its settlement; each failed or cancelled one that never settled, at its end."""
    now_us = to_us(now)
    window_us = int(book.longest_window().total_seconds()) * US

    def provide(connection: Connection, tenant_id: int, since_us: int) -> Iterator[spend.Outcome]:
        # A task settling since `since_us` completed at most the longest window before, or was
        # accepted since: it has an outcome event since then.
        e = events
        tasks = sorted(
            connection.execute(
                select(e.c.task).distinct().where(
                    e.c.tenant_id == tenant_id, e.c.type.in_(_OUTCOME_TYPES), e.c.time_us >= since_us - window_us
                )
            ).scalars()
        )  # fmt: skip
        for start in range(0, len(tasks), _CHUNK):
            yield from _settled(connection, tenant_id, tasks[start : start + _CHUNK], book, timezone, now_us)

    return provide


@dataclass
class _Task:
    """What settlement reads of one task's outcome events (as the rollup's task row)."""

    status: str = "open"
    ended_us: int | None = None
    completed_us: int | None = None
    accepted_us: int | None = None
    reopened_us: int | None = None
    task_type: str | None = None
    deciding: Any = None  # the event that decided the status
    completion: Any = None  # the latest task.completed

    def see(self, row: Any) -> None:
        at = row.time_us
        if row.task_type is not None:
            self.task_type = row.task_type
        if row.type in _STATUS and (self.ended_us is None or at >= self.ended_us):
            self.status, self.ended_us, self.deciding = _STATUS[row.type], at, row
        if row.type == "task.completed" and (self.completed_us is None or at >= self.completed_us):
            self.completed_us, self.completion = at, row
        elif row.type == "task.accepted" and (self.accepted_us is None or at >= self.accepted_us):
            self.accepted_us = at
        elif row.type == "task.reopened" and (self.reopened_us is None or at >= self.reopened_us):
            self.reopened_us = at

    def outcome(self, status: str, at: int, row: Any) -> spend.Outcome:
        task_type = row.task_type if row.task_type is not None else self.task_type
        return spend.Outcome(status, at, row.customer, row.actor, row.agent, task_type)


def _settled(
    connection: Connection, tenant_id: int, tasks: list[str], book: RuleBook, timezone: str, now_us: int
) -> Iterator[spend.Outcome]:
    e = events
    rows = connection.execute(
        select(e.c.task, e.c.type, e.c.time_us, e.c.customer, e.c.actor, e.c.agent, e.c.task_type)
        .where(e.c.tenant_id == tenant_id, e.c.task.in_(tasks), e.c.type.in_(_OUTCOME_TYPES))
        .order_by(e.c.seq)
    ).all()
    seen: dict[str, _Task] = {}
    for row in rows:  # in seq order: on a tie in time the one stored later decides, as the rollup
        seen.setdefault(row.task, _Task()).see(row)
    if not seen:
        return
    names = sorted(seen)
    frame = pd.DataFrame([{c: getattr(seen[n], c) for c in SETTLE_INPUT} for n in names], index=names)
    settled = settle(frame, book, timezone)["settled_us"]
    for name in names:
        task, when = seen[name], settled[name]
        if not pd.isna(when) and int(when) <= now_us:
            yield task.outcome("completed", int(when), task.completion or task.deciding)
        elif task.status in ("failed", "cancelled") and task.ended_us is not None:
            yield task.outcome(task.status, task.ended_us, task.deciding)
