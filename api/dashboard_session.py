"""The dashboard's sign-in: a read-scoped API key, exchanged once for a signed session cookie.

The cookie holds `<key id>.<expiry>.<nonce>` and an HMAC-SHA256 of it under a key derived from
the server secret, never the API key: a stolen cookie cannot be turned into a key, and each
request checks that the key it came from is still active and still has the read scope, so
revoking the key signs its sessions out. Cookies are HttpOnly, SameSite=Lax, Secure over https.

Forms carry a CSRF token: the HMAC of a random value kept in its own HttpOnly cookie (a signed
double-submit cookie), checked together with the Origin header when the browser sends one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select
from starlette.requests import Request
from starlette.responses import Response

from metering.core.tables import api_keys, tenants
from metering.core.tenants import Principal, Tenant

SESSION_COOKIE = "tm_dashboard"
CSRF_COOKIE = "tm_csrf"
SESSION_SECONDS = 8 * 3600
COOKIE_PATH = "/dashboard"


def _derived(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, f"taskmeter dashboard {purpose}".encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(secret: bytes, purpose: str, text: str) -> str:
    return _b64(hmac.new(_derived(secret, purpose), text.encode(), hashlib.sha256).digest())


@dataclass(frozen=True)
class DashboardSession:
    key_id: int
    expires: int  # unix seconds


def issue(principal: Principal, *, secret: bytes, now: datetime) -> str:
    body = f"{principal.key_id}.{int(now.timestamp()) + SESSION_SECONDS}.{secrets.token_urlsafe(12)}"
    return f"{body}.{_sign(secret, 'session', body)}"


def verify(token: str | None, *, secret: bytes, now: datetime) -> DashboardSession | None:
    if not token or token.count(".") != 3:
        return None
    body, _, signature = token.rpartition(".")
    if not hmac.compare_digest(signature, _sign(secret, "session", body)):
        return None
    key_id, expires, _ = body.split(".")
    if not (key_id.isdigit() and expires.isdigit()) or int(expires) <= now.timestamp():
        return None
    return DashboardSession(int(key_id), int(expires))


def principal_of(connection: Connection, session: DashboardSession) -> Principal | None:
    """The principal of a session's key, if the key is still active and may read."""
    row = connection.execute(
        select(api_keys.c.id, api_keys.c.scopes, api_keys.c.revoked_at, tenants.c.id.label("tenant_id"), tenants.c.name,
               tenants.c.timezone, tenants.c.currency)
        .join(tenants, tenants.c.id == api_keys.c.tenant_id)
        .where(api_keys.c.id == session.key_id)
    ).one_or_none()  # fmt: skip
    if row is None or row.revoked_at is not None:
        return None
    principal = Principal(
        Tenant(row.tenant_id, row.name, row.timezone, row.currency), row.id, frozenset(row.scopes.split(","))
    )
    return principal if principal.allows("read") else None


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str, *, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )


def clear_cookie(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, httponly=True, samesite="lax", secure=is_https(request))


# --- CSRF --------------------------------------------------------------------------------------------


def csrf_seed(request: Request) -> tuple[str, bool]:
    """The CSRF cookie's value, and whether it is new (to be set on the response)."""
    seed = request.cookies.get(CSRF_COOKIE, "")
    if len(seed) >= 16 and seed.replace("-", "").replace("_", "").isalnum():
        return seed, False
    return secrets.token_urlsafe(24), True


def csrf_token(seed: str, *, secret: bytes) -> str:
    return _sign(secret, "csrf", seed)


def csrf_valid(request: Request, submitted: str, *, secret: bytes) -> bool:
    seed = request.cookies.get(CSRF_COOKIE)
    if not seed or not submitted or not hmac.compare_digest(submitted, csrf_token(seed, secret=secret)):
        return False
    origin = request.headers.get("origin")
    if origin is not None:
        expected = f"{request.url.scheme}://{request.url.netloc}"
        return origin == expected
    return True
