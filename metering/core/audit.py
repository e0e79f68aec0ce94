"""The audit log of admin actions: who (an API key's prefix, or the command line's OS user),
what, when, on which target, with a few details. Rows are only ever added, in the transaction
of the action itself: an action that rolls back leaves no entry, and none is lost.

Details never hold keys, hashes or secrets: callers pass ids, prefixes, counts and names.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, ForeignKey, Index, Integer, String, Table, Text, insert, select
from sqlalchemy.orm import Session

from metering.core.tables import BigId, metadata

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),  # "key:<prefix>" or "cli:<os user>"
    Column("key_id", Integer, ForeignKey("api_keys.id")),  # the API key, for actions over the API
    Column("action", String(64), nullable=False),  # "plan.save", "key.rotate", ...
    Column("target", String(300), nullable=False),  # "plan:jobs", "customer:acme", "key:<prefix>"
    Column("detail", Text, nullable=False),  # JSON object
    Index("ix_audit_log_tenant_id_id", "tenant_id", "id"),
)


def record(
    session: Session,
    tenant_id: int,
    *,
    actor: str,
    action: str,
    target: str,
    at: datetime,
    key_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.execute(
        insert(audit_log).values(
            tenant_id=tenant_id, at=at, actor=actor[:128], key_id=key_id, action=action, target=target[:300],
            detail=json.dumps(detail or {}, default=str, sort_keys=True),
        )
    )  # fmt: skip


def entries(session: Session, tenant_id: int, *, limit: int, before: int | None = None) -> list[dict[str, Any]]:
    """The tenant's entries, newest first; `before` (an entry id) pages back."""
    query = select(audit_log).where(audit_log.c.tenant_id == tenant_id)
    if before is not None:
        query = query.where(audit_log.c.id < before)
    rows = session.execute(query.order_by(audit_log.c.id.desc()).limit(limit))
    return [
        {"id": r.id, "at": r.at if r.at.tzinfo else r.at.replace(tzinfo=UTC), "actor": r.actor, "key_id": r.key_id,
         "action": r.action, "target": r.target, "detail": json.loads(r.detail)}
        for r in rows
    ]  # fmt: skip
