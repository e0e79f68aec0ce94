"""The dashboard's sign-in and sign-out (a read-scoped key exchanged for a signed session
cookie, `api.dashboard_session`), and its static files (one stylesheet, one script, an icon)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from api import dashboard_http as web
from api import dashboard_session as auth
from metering.core.errors import Unauthorized
from metering.core.tenants import Principal, authenticate
from reports import pages
from reports.html import STATIC

router = APIRouter(include_in_schema=False, route_class=web.DashboardRoute)  # under /dashboard (api.routers.dashboard)

# --- sign-in -------------------------------------------------------------------------------------------


@router.get("/sign-in")
def sign_in_page(request: Request, next: str = "/dashboard") -> Response:  # noqa: A002 - the query's name
    if web.signed_in(request) is not None:
        return web.redirect(request, web.safe_next(next))
    seed, token = web.csrf(request)
    return web.html(
        request, pages.sign_in(csrf=token, version=web.VERSION, next_url=web.safe_next(next)), seed=seed
    )


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    form = await _form(request)
    seed, token = web.csrf(request)
    next_url = web.safe_next(form.get("next", ""))

    def again(error: str, status: int) -> HTMLResponse:
        return web.html(
            request,
            pages.sign_in(csrf=token, version=web.VERSION, error=error, next_url=next_url),
            status,
            seed=seed,
        )

    if not auth.csrf_valid(request, form.get("csrf", ""), secret=web.secret(request)):
        return again("This sign-in form has expired. Please try again.", 400)
    try:
        principal = await run_in_threadpool(_authenticate, request, form.get("key", "").strip())
    except Unauthorized:
        return again("This API key is not valid.", 401)
    web.take_token(request, principal)  # as the API does, before the scope is checked
    if not principal.allows("read"):
        return again("This API key lacks the read scope.", 403)
    response = web.redirect(request, next_url)
    cookie = auth.issue(principal, secret=web.secret(request), now=datetime.now(UTC))
    auth.set_cookie(response, request, auth.SESSION_COOKIE, cookie, max_age=auth.SESSION_SECONDS)
    return response


def _authenticate(request: Request, key: str) -> Principal:
    with web.engine(request).connect() as connection:
        return authenticate(connection, key, secret=web.secret(request))


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > 8192:
        return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10).items()}


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    form = await _form(request)
    await run_in_threadpool(web.signed_in, request)  # a signed-in key's rate limit applies
    if not auth.csrf_valid(request, form.get("csrf", ""), secret=web.secret(request)):
        return web.html(
            request, pages.not_found("This form has expired; reload the page.", version=web.VERSION), 400
        )
    response = web.redirect(request, "/dashboard/sign-in")
    auth.clear_cookie(response, request, auth.SESSION_COOKIE)
    return response


# --- static files -----------------------------------------------------------------------------------------


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    resource = STATIC / name
    if "/" in name or suffix not in web.STATIC_TYPES or not resource.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    headers = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
    return Response(resource.read_bytes(), media_type=web.STATIC_TYPES[suffix], headers=headers)
