"""What the dashboard's routes share: security headers, HTML responses and redirects, the
signed-in principal, CSRF tokens, the not-found page."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import Engine

from api import dashboard_session as auth
from api.settings import Settings
from metering.tenants import Principal, Tenant
from reports import pages
from reports.html import static_version

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")  # fmt: skip
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
VERSION = static_version()


def secret(request: Request) -> bytes:
    settings: Settings = request.app.state.settings
    return settings.secret_key.get_secret_value().encode()


def engine(request: Request) -> Engine:
    return request.app.state.engine


def html(
    request: Request, body: str, status: int = 200, *, seed: tuple[str, bool] | None = None
) -> HTMLResponse:
    response = HTMLResponse(
        body, status_code=status, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"}
    )
    if seed is not None and seed[1]:
        auth.set_cookie(response, request, auth.CSRF_COOKIE, seed[0], max_age=None)
    return response


def redirect(request: Request, to: str) -> RedirectResponse:
    return RedirectResponse(to, status_code=303, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


def signed_in(request: Request) -> Principal | None:
    session = auth.verify(
        request.cookies.get(auth.SESSION_COOKIE), secret=secret(request), now=datetime.now(UTC)
    )
    if session is None:
        return None
    with engine(request).connect() as connection:
        return auth.principal_of(connection, session)


def to_sign_in(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(request, "/dashboard/sign-in?" + urlencode({"next": target}))


def safe_next(value: str) -> str:
    """Only a dashboard path of this site (no scheme, no `//host`)."""
    if (
        value.startswith("/dashboard")
        and not value.startswith("//")
        and "\\" not in value
        and "\n" not in value
    ):
        return value
    return "/dashboard"


def csrf(request: Request) -> tuple[tuple[str, bool], str]:
    seed = auth.csrf_seed(request)
    return seed, auth.csrf_token(seed[0], secret=secret(request))


def not_found(request: Request, message: str, tenant: Tenant | None = None) -> HTMLResponse:
    seed, token = csrf(request)
    body = pages.not_found(message, version=VERSION, tenant=tenant.name if tenant else "", csrf=token)
    return html(request, body, 404, seed=seed)
