"""When a tenant's months may be closed, and which months a run must close, oldest first.

A month may be closed once it has ended in the tenant's time zone and the grace period for late
events has passed: at `period.end + grace` exactly, not a microsecond before. A worker that was
down for a while closes every month it missed, in order, resuming after its bookmark.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from metering.core.periods import Period, parse_month, period_of
from metering.core.tables import task_usage, tenants
from metering.core.tenants import Tenant


def closable_through(now: datetime, timezone: str, grace: timedelta) -> Period:
    """The newest month that may be closed at `now` (aware): the one before the month that
    `now - grace` falls in."""
    return period_of(now - grace, timezone).previous()


def is_closable(period: Period, now: datetime, grace: timedelta) -> bool:
    return now >= period.end + grace


def months_to_close(last_closed: str | None, first: Period, through: Period) -> list[Period]:
    """The months after the bookmark `last_closed` (or from `first` when there is none) up to and
    including `through`."""
    month = parse_month(last_closed, first.timezone).next() if last_closed else first
    months = []
    while month.first_day <= through.first_day:
        months.append(month)
        month = month.next()
    return months


def first_month(session: Session | Connection, tenant: Tenant) -> Period:
    """The tenant's first month that may need an invoice: of its creation or of its earliest
    event, whichever comes first (events can be backfilled)."""
    created = session.execute(select(tenants.c.created_at).where(tenants.c.id == tenant.id)).scalar_one()
    if created.tzinfo is None:  # SQLite hands back naive UTC
        created = created.replace(tzinfo=UTC)
    first_us = session.execute(
        select(func.min(task_usage.c.first_event_us)).where(task_usage.c.tenant_id == tenant.id)
    ).scalar_one()
    earliest = created
    if first_us is not None:
        earliest = min(earliest, datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=first_us))
    return period_of(earliest, tenant.timezone)
