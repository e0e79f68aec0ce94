"""Annotated dependencies: the session (commits in one place), the caller, the scopes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from time import monotonic
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.ingest_log import KnownKeys
from api.settings import Settings
from metering.core import audit
from metering.core.db import is_unavailable, unit_of_work
from metering.core.errors import Forbidden, NotFound, Unauthorized
from metering.core.tenants import Principal, authenticate, hash_key

# Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in its
# thread pool, one hand-off per dependency per request.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_session(request: Request) -> Iterator[Session]:
    """The request's unit of work: commit when the handler returns, roll back when it raises.

    Used with scope="function" so the commit happens before the response is sent: a client
    never sees 200 for a write that failed to commit.
    """
    with unit_of_work(request.app.state.engine) as session:
        yield session


async def get_now() -> datetime:
    return datetime.now(UTC)


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
NowDep = Annotated[datetime, Depends(get_now)]


def get_principal(request: Request, now: NowDep) -> Principal:
    """The caller, from `Authorization: Bearer <key>`; then the key's rate limit (api.ratelimit)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"})
    settings: Settings = request.app.state.settings
    # Its own short connection: authentication never holds the request's transaction open.
    # One SELECT needs no transaction: autocommit spares the BEGIN and the ROLLBACK, two of a
    # PostgreSQL read's nine round trips.
    secret = settings.secret_key.get_secret_value().encode()
    known: KnownKeys | None = request.app.state.known_keys
    try:
        with request.app.state.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            principal = authenticate(connection, key.strip(), secret=secret, now=now)
    except Unauthorized as exc:
        exc.headers = {"WWW-Authenticate": "Bearer"}
        raise
    except Exception as exc:
        # Through the ingest log, ingestion outlives the database: a key seen working lately
        # still authenticates (api.ingest_log.KnownKeys).
        recalled = None
        if known is not None and is_unavailable(exc):
            recalled = known.recall(hash_key(key.strip(), secret))
        if recalled is None:
            raise
        principal = recalled
    else:
        if known is not None:
            known.remember(hash_key(key.strip(), secret), principal)
    request.app.state.rate_limiter.check(principal.key_id)
    return principal


PRINCIPAL_TTL = 1.0
"""Seconds a key's principal is reused by `cached_principal` (so a revoked key may still be
answered by the routes that use it for this long)."""


async def cached_principal(request: Request, now: NowDep) -> Principal:
    """`get_principal` for a hot read-only route (`POST /v1/authorize`), without I/O on the
    event loop: a key that authenticated in the last `PRINCIPAL_TTL` seconds is answered from
    memory (its rate limit still applies); otherwise `get_principal` runs in the thread pool."""
    from starlette.concurrency import run_in_threadpool

    key = request.headers.get("authorization", "").partition(" ")[2].strip()
    cache: dict[str | bytes, tuple[Principal, float]] = request.app.state.principals
    secret = request.app.state.settings.secret_key.get_secret_value().encode()
    digest = hash_key(key, secret) if key else ""
    found = cache.get(digest)
    if found is not None and monotonic() - found[1] < PRINCIPAL_TTL:
        request.app.state.rate_limiter.check(found[0].key_id)
        return found[0]
    principal = await run_in_threadpool(get_principal, request, now)
    if len(cache) > 10_000:
        cache.clear()
    cache[digest] = (principal, monotonic())
    return principal


def require(scope: str):  # type: ignore[no-untyped-def]
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.allows(scope):
            raise Forbidden(f"this key lacks the {scope!r} scope")
        return principal

    return check


def require_any(*scopes: str):  # type: ignore[no-untyped-def]
    """Any one of `scopes`; a `verdict` key (bound to one customer) passes only where it is named,
    and the route then limits it to its customer (`Principal.customer`)."""

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not any(principal.allows(scope) for scope in scopes):
            raise Forbidden(f"this key lacks the {' or '.join(repr(s) for s in scopes)} scope")
        return principal

    return check


IngestScope = Annotated[Principal, Depends(require("ingest"))]
ReadScope = Annotated[Principal, Depends(require("read"))]
AdminScope = Annotated[Principal, Depends(require("admin"))]
# Where a verdict key may act, for its customer only: post task.accepted / task.rejected events,
# open disputes, read tasks, their events and invoices.
IngestOrVerdict = Annotated[Principal, Depends(require_any("ingest", "verdict"))]
ReadOrVerdict = Annotated[Principal, Depends(require_any("read", "verdict"))]
AdminOrVerdict = Annotated[Principal, Depends(require_any("admin", "verdict"))]


class AuditTrail:
    """Records the request's admin actions in the audit log, in the request's transaction."""

    def __init__(self, session: Session, principal: Principal, now: datetime) -> None:
        self.session, self.principal, self.now = session, principal, now

    def record(self, action: str, target: str, **detail: Any) -> None:
        audit.record(
            self.session, self.principal.tenant.id, actor=self.principal.actor, key_id=self.principal.key_id,
            action=action, target=target, detail=detail, at=self.now,
        )  # fmt: skip


def get_audit(principal: AdminScope, session: SessionDep, now: NowDep) -> AuditTrail:
    return AuditTrail(session, principal, now)


AuditDep = Annotated[AuditTrail, Depends(get_audit)]


def get_verdict_audit(principal: AdminOrVerdict, session: SessionDep, now: NowDep) -> AuditTrail:
    return AuditTrail(session, principal, now)


VerdictAuditDep = Annotated[AuditTrail, Depends(get_verdict_audit)]


def own_customer(principal: Principal, customer: str) -> None:
    """NotFound when a verdict key asks for another customer's data (as if it did not exist)."""
    if principal.customer is not None and principal.customer != customer:
        raise NotFound(f"no customer {customer!r}")
