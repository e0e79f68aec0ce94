"""GET /v1/audit: the tenant's audit log of admin actions, newest first (admin keys only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import AdminScope, SessionDep
from api.errors import responses
from metering.core import audit

router = APIRouter(tags=["audit"])


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str  # "key:<prefix>" (an API call) or "cli:<os user>" (the command line)
    key_id: int | None
    action: str  # plan.save, customer.assign, credit_note.create, config.load, key.create, ...
    target: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_before: int | None  # pass as `before` for the page after this one; null at the end


@router.get("/v1/audit", response_model=AuditPage, responses=responses())
def get_audit_log(
    principal: AdminScope,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="only entries older than this entry id")] = None,
) -> AuditPage:
    """Who did what to which target, and when: plans, customers' plans, credit notes, config
    loads, API keys created, revoked and rotated."""
    rows = audit.entries(session, principal.tenant.id, limit=limit, before=before)
    return AuditPage(
        entries=[AuditEntry(**row) for row in rows],
        next_before=rows[-1]["id"] if len(rows) == limit else None,
    )
