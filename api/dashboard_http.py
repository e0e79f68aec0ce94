"""What the dashboard's routes share: security headers, HTML responses and redirects, the
signed-in principal and its key's rate limit (`SignedInPage`, the pages' dependency), CSRF
tokens, the not-found and 429 pages."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import unquote, urlencode, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy import Engine

from api import dashboard_session as auth
from api.settings import Settings
from metering.core.errors import RateLimited
from metering.core.tenants import Principal, Tenant
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
    """The principal of the request's session, None when signed out; its key's rate limit applies
    (`RateLimited`, rendered by `DashboardRoute`)."""
    session = auth.verify(
        request.cookies.get(auth.SESSION_COOKIE), secret=secret(request), now=datetime.now(UTC)
    )
    if session is None:
        return None
    with engine(request).connect() as connection:
        principal = auth.principal_of(connection, session)
    if principal is not None:
        take_token(request, principal)
    return principal


def take_token(request: Request, principal: Principal) -> None:
    """The API's per-key limiter (`api.ratelimit`): one bucket per key for the API and the dashboard."""
    request.app.state.rate_limiter.check(principal.key_id)


class SignInFirst(Exception):
    """A page was asked for without a valid session: `DashboardRoute` sends the browser to sign in."""


@dataclass(frozen=True)
class SignedIn:
    """A page request of a signed-in browser: its principal (whose key's rate limit was taken)
    and the CSRF token of the page's forms."""

    request: Request
    principal: Principal
    seed: tuple[str, bool]
    csrf: str

    @property
    def tenant(self) -> Tenant:
        return self.principal.tenant

    @property
    def chrome(self) -> dict[str, str]:
        """What every signed-in page shows around its content."""
        return {"tenant": self.tenant.name, "csrf": self.csrf, "version": VERSION}

    def html(self, body: str, status: int = 200) -> HTMLResponse:
        return html(self.request, body, status, seed=self.seed)

    def not_found(self, message: str) -> HTMLResponse:
        return not_found(self.request, message, self.tenant)


def signed_in_page(request: Request) -> SignedIn:
    principal = signed_in(request)
    if principal is None:
        raise SignInFirst
    seed, token = csrf(request)
    return SignedIn(request, principal, seed, token)


SignedInPage = Annotated[SignedIn, Depends(signed_in_page)]


class DashboardRoute(APIRoute):
    """A dashboard route: a signed-out browser is sent to sign in, and a key past its rate limit
    gets a 429 page with `Retry-After`, as the API gets its JSON 429."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handle(request)
            except SignInFirst:
                return to_sign_in(request)
            except RateLimited as exc:
                return too_many_requests(request, exc)

        return guarded


def too_many_requests(request: Request, error: RateLimited) -> HTMLResponse:
    seconds = int(error.headers["Retry-After"])
    response = html(request, pages.too_many_requests(seconds, version=VERSION), 429)
    response.headers.update(error.headers)
    return response


def to_sign_in(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(request, "/dashboard/sign-in?" + urlencode({"next": target}))


HOME = "/dashboard"


def safe_next(value: str) -> str:
    """Where sign-in may send the browser: `value` as a path of this site's dashboard, with its
    dot segments resolved (percent-encoded ones too, as browsers resolve them) and its empty
    segments dropped, else `/dashboard`. No scheme or host, backslash, control character or
    encoded slash passes; the query is kept, a fragment is not."""
    if not value or "\\" in value or not value.isprintable():
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return HOME
    segments: list[str] = []
    for raw in parts.path.split("/"):
        plain = _unquoted(raw)
        if "/" in plain or "\\" in plain or not plain.isprintable():
            return HOME
        if plain == "..":
            if segments:
                segments.pop()
        elif plain not in ("", "."):
            segments.append(raw)
    path = "/" + "/".join(segments)
    if path != HOME and not path.startswith(HOME + "/"):
        return HOME
    return f"{path}?{parts.query}" if parts.query else path


def _unquoted(text: str) -> str:
    """`text` percent-decoded until nothing is left to decode (`%252e` is `.` too)."""
    while "%" in text and (decoded := unquote(text)) != text:
        text = decoded
    return text


def csrf(request: Request) -> tuple[tuple[str, bool], str]:
    seed = auth.csrf_seed(request)
    return seed, auth.csrf_token(seed[0], secret=secret(request))


def not_found(request: Request, message: str, tenant: Tenant | None = None) -> HTMLResponse:
    seed, token = csrf(request)
    body = pages.not_found(message, version=VERSION, tenant=tenant.name if tenant else "", csrf=token)
    return html(request, body, 404, seed=seed)
