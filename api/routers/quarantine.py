"""The quarantine over HTTP: the tenant's events that the rollup set aside (`metering.rollup.quarantine`),
and an admin's two ways out: release (back through validation and ingestion) or drop."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from api.deps import AuditDep, NowDep, ReadScope, SessionDep, SettingsDep
from api.errors import responses
from metering.rollup import quarantine

router = APIRouter(tags=["quarantine"])
QuarantineId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class QuarantinedEvent(BaseModel):
    id: int  # the quarantine entry
    event_id: str
    seq: int  # its ingest sequence number while it was in `events`
    type: str
    time: str | None  # RFC 3339 UTC; null when no calendar can show it (before year 1, after 9999)
    time_us: int  # microseconds since the epoch, as stored
    customer: str
    task: str
    reason: str
    quarantined_at: datetime


class QuarantinePage(BaseModel):
    count: int  # all the tenant's quarantined events
    events: list[QuarantinedEvent]
    next_before: int | None  # pass as `before` for the page after this one; null at the end


class Released(BaseModel):
    id: int
    event_id: str
    released: bool
    accepted: int  # 1: stored again, the next rollup counts it
    duplicates: int  # 1: the same event had been sent again meanwhile


class Dropped(BaseModel):
    id: int
    event_id: str
    dropped: bool
    reason: str


@router.get("/v1/quarantine", response_model=QuarantinePage, responses=responses())
def get_quarantine(
    principal: ReadScope,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="only entries older than this entry id")] = None,
) -> QuarantinePage:
    """Events the rollup could not process, newest first, each with its reason: they are not
    billed until released. See RELIABILITY.md, "The quarantine"."""
    rows = quarantine.listing(session, principal.tenant.id, limit=limit, before=before)
    return QuarantinePage(
        count=quarantine.count(session, principal.tenant.id),
        events=[QuarantinedEvent(**row) for row in rows],
        next_before=rows[-1]["id"] if len(rows) == limit else None,
    )


@router.post("/v1/quarantine/{quarantine_id}/release", response_model=Released, responses=responses(404))
def release_quarantined(quarantine_id: QuarantineId, audit: AuditDep, settings: SettingsDep, now: NowDep) -> Released:
    """Send the event back through validation and ingestion (admin). Still invalid: 422 naming
    why, and it stays in quarantine."""
    tenant_id = audit.principal.tenant.id
    released = quarantine.release(audit.session, tenant_id, quarantine_id, now=now, window=settings.event_window)
    audit.record("quarantine.release", f"event:{released['event_id']}", quarantine_id=quarantine_id)
    return Released(**released)


@router.post("/v1/quarantine/{quarantine_id}/drop", response_model=Dropped, responses=responses(404))
def drop_quarantined(quarantine_id: QuarantineId, audit: AuditDep) -> Dropped:
    """Delete the event for good (admin); the audit log keeps who dropped it and why it was set aside."""
    dropped = quarantine.drop(audit.session, audit.principal.tenant.id, quarantine_id)
    audit.record("quarantine.drop", f"event:{dropped['event_id']}", quarantine_id=quarantine_id, reason=dropped["reason"])
    return Dropped(**dropped)
