"""Tenants and their API keys.

A key reads `tm_<prefix>_<secret>`. Only the prefix (to find the row) and an HMAC-SHA256 of the
whole key under the server's secret are stored; the key itself is shown once, when created. The
presented key's hash is compared in constant time (`hmac.compare_digest`).

A key is revoked from its `revoked_at` on. Rotation creates a new key with the same scopes and
sets the old key's `revoked_at` to now, or to the end of a grace period while clients move over.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, CursorResult, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from metering.core.errors import Conflict, InvalidInput, NotFound, Unauthorized
from metering.core.tables import api_keys, tenants

SCOPES = ("ingest", "read", "admin", "verdict")  # verdict: bound to one customer (`customer`), alone
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_KEY = re.compile(r"tm_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})")


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    timezone: str
    currency: str


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant of the key and what the key may do."""

    tenant: Tenant
    key_id: int
    scopes: frozenset[str]
    prefix: str = ""  # the key's public part: names the caller in the audit log
    customer: str | None = None  # a `verdict` key's customer: it acts for that customer only

    @property
    def actor(self) -> str:
        return f"key:{self.prefix}"

    def allows(self, scope: str) -> bool:
        # admin may do everything; the other scopes are independent.
        return scope in self.scopes or "admin" in self.scopes


def create_tenant(
    session: Session, name: str, *, timezone: str = "UTC", currency: str = "USD", now: datetime
) -> Tenant:
    errors = []
    if not _NAME.fullmatch(name):
        errors.append({"field": "name", "message": "must be 1-64 of a-z, 0-9, '-', '_', starting with a letter or digit"})
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        errors.append({"field": "timezone", "message": f"{timezone!r} is not an IANA time zone"})
    if not re.fullmatch(r"[A-Z]{3}", currency):
        errors.append({"field": "currency", "message": f"{currency!r} is not an ISO 4217 code such as USD"})
    if errors:
        raise InvalidInput("invalid tenant", detail=errors)
    try:
        with session.begin_nested():
            tenant_id = session.execute(
                insert(tenants)
                .values(name=name, timezone=timezone, currency=currency, created_at=now)
                .returning(tenants.c.id)
            ).scalar_one()
    except IntegrityError:
        raise Conflict(f"tenant {name!r} already exists") from None
    return Tenant(tenant_id, name, timezone, currency)


def get_tenant(session: Session | Connection, name: str) -> Tenant:
    row = session.execute(select(tenants).where(tenants.c.name == name)).one_or_none()
    if row is None:
        raise NotFound(f"no tenant named {name!r}")
    return Tenant(row.id, row.name, row.timezone, row.currency)


def list_tenants(session: Session | Connection) -> list[Tenant]:
    rows = session.execute(select(tenants).order_by(tenants.c.id))
    return [Tenant(r.id, r.name, r.timezone, r.currency) for r in rows]


def parse_scopes(text: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = scopes - set(SCOPES)
    if not scopes or unknown:
        raise InvalidInput(
            "invalid scopes", detail=[{"field": "scopes", "message": f"choose from {', '.join(SCOPES)}"}]
        )
    return scopes


def key_prefix(key: str) -> str:
    """The public part of a key (what `keys revoke` and `keys rotate` take, and the audit log shows)."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match else ""


def hash_key(key: str, secret: bytes) -> bytes:
    return hmac.new(secret, key.encode(), hashlib.sha256).digest()


def create_api_key(
    session: Session,
    tenant: Tenant,
    scopes: frozenset[str],
    *,
    secret: bytes,
    now: datetime,
    name: str = "",
    customer: str | None = None,
) -> tuple[str, int]:
    """Create a key; returns the key (shown once) and its id. A `verdict` key is bound to one
    `customer` and has no other scope (DESIGN.md "Outcome truth")."""
    if "verdict" in scopes and (scopes != {"verdict"} or not customer):
        message = "a verdict key names its --customer and has no other scope" if customer else "a verdict key needs --customer"
        raise InvalidInput("invalid scopes", detail=[{"field": "scopes", "message": message}])
    if customer is not None and "verdict" not in scopes:
        raise InvalidInput("invalid key", detail=[{"field": "customer", "message": "only a verdict key is bound to a customer"}])
    if customer is not None and (not 0 < len(customer) <= 256 or "\x00" in customer):
        raise InvalidInput("invalid key", detail=[{"field": "customer", "message": "must be 1-256 characters, no NUL"}])
    prefix = secrets.token_hex(6)
    key = f"tm_{prefix}_{secrets.token_urlsafe(32)}"
    key_id = session.execute(
        insert(api_keys)
        .values(
            tenant_id=tenant.id,
            prefix=prefix,
            key_hash=hash_key(key, secret),
            scopes=",".join(sorted(scopes)),
            name=name or ",".join(sorted(scopes)),
            created_at=now,
            customer=customer,
        )
        .returning(api_keys.c.id)
    ).scalar_one()
    return key, key_id


def revoke_api_key(session: Session, tenant: Tenant, prefix: str, *, now: datetime) -> None:
    """Revoke a key now (also one still in the grace period of a rotation)."""
    still_working = or_(api_keys.c.revoked_at.is_(None), api_keys.c.revoked_at > now)
    # Session.execute is typed as returning a Result; an UPDATE's is a CursorResult (rowcount).
    result = cast(
        CursorResult[Any],
        session.execute(
            update(api_keys)
            .where(api_keys.c.tenant_id == tenant.id, api_keys.c.prefix == prefix, still_working)
            .values(revoked_at=now)
        ),
    )
    if result.rowcount == 0:
        raise NotFound(f"no active key {prefix!r} for tenant {tenant.name!r}")


def rotate_api_key(
    session: Session, tenant: Tenant, prefix: str, *, secret: bytes, now: datetime, grace: timedelta = timedelta(0)
) -> tuple[str, int, datetime]:
    """Replace an active key by a new one with the same scopes and name; the old key stops
    working at `now + grace`. Returns the new key (shown once), its id, and when the old one ends."""
    if grace < timedelta(0):
        raise InvalidInput("invalid grace period", detail=[{"field": "grace", "message": "must not be negative"}])
    old = session.execute(
        select(api_keys.c.id, api_keys.c.scopes, api_keys.c.name, api_keys.c.customer).where(
            api_keys.c.tenant_id == tenant.id, api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None)
        )
    ).one_or_none()
    if old is None:
        raise NotFound(f"no active key {prefix!r} for tenant {tenant.name!r}")
    key, key_id = create_api_key(
        session, tenant, frozenset(old.scopes.split(",")), secret=secret, now=now, name=old.name, customer=old.customer
    )
    ends = now + grace
    session.execute(update(api_keys).where(api_keys.c.id == old.id).values(revoked_at=ends))
    return key, key_id, ends


def is_revoked(revoked_at: datetime | None, now: datetime | None) -> bool:
    """Whether a key with this `revoked_at` is revoked at `now`; without a `now`, a revocation
    scheduled for later (a rotation's grace period) counts as done."""
    if revoked_at is None:
        return False
    if now is None:
        return True
    return (revoked_at if revoked_at.tzinfo else revoked_at.replace(tzinfo=UTC)) <= now  # SQLite: naive UTC


def authenticate(
    connection: Session | Connection, key: str, *, secret: bytes, now: datetime | None = None
) -> Principal:
    """The principal of a presented key, or `Unauthorized` (one message for every failure).

    `now` lets a rotated key work until its grace period ends; without it, it stops at rotation."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise Unauthorized("invalid API key")
    row = connection.execute(
        select(api_keys, tenants.c.name, tenants.c.timezone, tenants.c.currency)
        .join(tenants, tenants.c.id == api_keys.c.tenant_id)
        .where(api_keys.c.prefix == match.group(1))
    ).one_or_none()
    if row is None or not hmac.compare_digest(row.key_hash, hash_key(key, secret)) or is_revoked(row.revoked_at, now):
        raise Unauthorized("invalid API key")
    tenant = Tenant(row.tenant_id, row.name, row.timezone, row.currency)
    scopes = frozenset(row.scopes.split(","))
    return Principal(tenant=tenant, key_id=row.id, scopes=scopes, prefix=row.prefix, customer=row.customer)
