"""The dashboard's month snapshots: a tenant's month (all customers) computed once, kept in
`report_snapshots`, and read as long as it is current.

A snapshot is current when nothing it was computed from has changed: the `fingerprint` (provider
prices, plans, plan assignments, outcome rules, disputes, whether the month and the one before are
closed, the month's invoices) is the same, and the rollup has not moved past its watermark, or
only for less than a short time (`MAX_AGE`: figures of an open month a minute old, of a closed one
a quarter of an hour old, are shown with their time while a newer snapshot is made). Its outcomes
count up to the time it was computed: in a month still open whose outcomes move with time
(`timed`: settlement windows, or tasks dated ahead), a snapshot of an earlier minute is aging.
`write_month` stores one for every month it writes, so months closed by the scheduler open at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.orm import Session

from metering.core.db import unit_of_work
from metering.core.periods import Period
from metering.core.tables import rollup_state
from metering.core.tenants import Tenant
from metering.events.ingest import to_us
from pricing import open_month, outcomes_repository
from pricing.tables import customer_plans, disputes, invoices, outcome_rule_versions, plan_versions
from reports import repository
from reports.dashboard import FORMAT, MonthView, SeriesPoint, month_view, window
from reports.month_data import begin_snapshot
from reports.tables import report_snapshots

MAX_AGE = {False: timedelta(seconds=60), True: timedelta(minutes=15)}  # by closed
Freshness = Literal["fresh", "aging", "stale", "missing"]


@dataclass(frozen=True)
class Snapshot:
    period: str
    fingerprint: str
    watermark_seq: int
    computed_at: datetime
    payload: str

    def view(self) -> MonthView:
        return MonthView.from_json(json.loads(self.payload))


def fingerprint(session: Session, tenant: Tenant, period: Period, closed: set[str]) -> str:
    """What a month's figures depend on besides the rollup's usage (cheap: a few indexed reads)."""
    prices = session.execute(
        select(rollup_state.c.price_version).where(rollup_state.c.tenant_id == tenant.id)
    ).scalar()
    plans = session.execute(
        select(func.max(plan_versions.c.id)).where(plan_versions.c.tenant_id == tenant.id)
    ).scalar()
    assigned = session.execute(
        select(func.max(customer_plans.c.id)).where(customer_plans.c.tenant_id == tenant.id)
    ).scalar()
    count, newest, total = session.execute(
        select(func.count(), func.max(invoices.c.id), func.sum(invoices.c.total_minor)).where(
            invoices.c.tenant_id == tenant.id,
            invoices.c.period == period.label,
            invoices.c.status == "finalized",
        )
    ).one()
    rules = session.execute(
        select(func.max(outcome_rule_versions.c.version)).where(outcome_rule_versions.c.tenant_id == tenant.id)
    ).scalar()
    seen = session.execute(
        select(func.count(), func.max(disputes.c.id), func.count(disputes.c.resolved_at)).where(disputes.c.tenant_id == tenant.id)
    ).one()
    state = "closed" if period.label in closed else "open"
    previous = "closed" if period.previous().label in closed else "open"
    return (f"f{FORMAT}|{prices or ''}|p{plans or 0}|a{assigned or 0}|r{rules or 0}|d{seen[0]}:{seen[1] or 0}:{seen[2]}|{state}|{previous}|"
            f"i{count}:{newest or 0}:{total or 0}")  # fmt: skip


def timed(session: Session, tenant: Tenant, period: Period, *, now: datetime) -> bool:
    """Whether the month's outcomes move with time at `now`: it has not ended, and the tenant has
    outcome rules (settlement windows pass) or a task of the month ends or is reopened later."""
    if now >= period.end:
        return False
    return bool(outcomes_repository.rule_book(session, tenant.id)) or open_month.times_after(session, tenant.id, period, to_us(now) + 1)


def load(session: Session, tenant_id: int, label: str) -> Snapshot | None:
    s = report_snapshots.c
    row = session.execute(
        select(s.period, s.fingerprint, s.watermark_seq, s.computed_at, s.payload).where(
            s.tenant_id == tenant_id, s.period == label, s.format == FORMAT
        )
    ).one_or_none()
    return (
        None
        if row is None
        else Snapshot(row.period, row.fingerprint, int(row.watermark_seq), row.computed_at, row.payload)
    )


def freshness(
    snapshot: Snapshot | None, current: str, watermark: int, *, closed: bool, now: datetime, timed: bool = False
) -> Freshness:
    """`timed`: the month's outcomes move with time (`timed`), so a snapshot of an earlier minute
    is not fresh."""
    if snapshot is None:
        return "missing"
    if snapshot.fingerprint != current:
        return "stale"
    computed = (
        snapshot.computed_at
        if snapshot.computed_at.tzinfo
        else snapshot.computed_at.replace(tzinfo=now.tzinfo)
    )
    if snapshot.watermark_seq == watermark and not (timed and computed.replace(second=0, microsecond=0) < now.replace(second=0, microsecond=0)):
        return "fresh"
    return "aging" if now - computed < MAX_AGE[closed] else "stale"


def store(session: Session, tenant: Tenant, view: MonthView, current: str, *, now: datetime) -> None:
    """Keep a month's view (the caller commits)."""
    s = report_snapshots.c
    session.execute(delete(report_snapshots).where(s.tenant_id == tenant.id, s.period == view.period))
    session.execute(
        insert(report_snapshots).values(
            tenant_id=tenant.id, period=view.period, format=FORMAT, fingerprint=current,
            watermark_seq=view.watermark_seq, computed_at=now, currency=view.currency,
            revenue_minor=view.revenue_minor, cost_micros=view.cost_micros,
            payload=json.dumps(view.to_json(), separators=(",", ":"), sort_keys=True),
        )
    )  # fmt: skip


def refresh(engine: Engine, tenant: Tenant, period: Period, *, now: datetime) -> MonthView:
    """Compute the month (all customers) from one snapshot of the database, and keep it."""
    with Session(engine) as session:
        try:
            begin_snapshot(session)
            current = fingerprint(session, tenant, period, repository.closed_months(session, tenant.id))
            view = month_view(session, tenant, period, now=now)
        finally:
            session.rollback()
    with unit_of_work(engine) as session:
        store(session, tenant, view, current, now=now)
    return view


def tenant_series(session: Session, tenant: Tenant, period: Period) -> tuple[list[SeriesPoint], list[Period]]:
    """The 12 months ending with `period` from their snapshots, and the months with data that
    have none yet (to be computed)."""
    months = window(period)
    s = report_snapshots.c
    rows = session.execute(
        select(s.period, s.revenue_minor, s.cost_micros).where(
            s.tenant_id == tenant.id, s.period.in_([m.label for m in months]), s.format == FORMAT
        )
    ).all()
    kept = {r.period: r for r in rows}
    first = repository.first_day(session, tenant.id)
    points, missing = [], []
    for month in months:
        if month.label in kept:
            row = kept[month.label]
            points.append(SeriesPoint(month.label, "ready", int(row.revenue_minor), int(row.cost_micros)))
        elif first is None or month.next_first_day <= first:
            points.append(SeriesPoint(month.label, "empty"))
        else:
            points.append(SeriesPoint(month.label, "pending"))
            missing.append(month)
    return points, missing
