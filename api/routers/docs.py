"""The interactive API reference: Swagger UI at /docs and ReDoc at /redoc, served by this server
alone. Their JavaScript and CSS are the dist files that the `fastapi-offline` package ships (no CDN,
nothing committed by hand); the two small scripts that start them are files of `api/static`, so
the pages carry a Content-Security-Policy that allows this origin only and no inline script.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from reports.html import e

router = APIRouter(include_in_schema=False)

ASSETS = "/docs/assets"
# name -> where the file is; both packages' files are installed with taskmeter.
FILES: dict[str, Traversable] = {
    "swagger-ui-bundle.js": files("fastapi_offline") / "static" / "swagger-ui-bundle.js",
    "swagger-ui.css": files("fastapi_offline") / "static" / "swagger-ui.css",
    "redoc.standalone.js": files("fastapi_offline") / "static" / "redoc.standalone.js",
    "swagger-init.js": files("api") / "static" / "swagger-init.js",
    "redoc-init.js": files("api") / "static" / "redoc-init.js",
    "favicon.svg": files("reports") / "static" / "favicon.svg",  # the dashboard's
}


@cache
def _content(name: str) -> bytes:
    return FILES[name].read_bytes()


# A digest of the files for cache-busting URLs: an upgraded package is fetched anew.
VERSION = hashlib.sha256(b"".join(_content(name) for name in sorted(FILES))).hexdigest()[:10]
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Same origin only, no inline script. Swagger UI draws its icons as data: images.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")  # fmt: skip
# /redoc only: ReDoc's styled-components insert <style> elements at run time (inline styles, not
# scripts) and its search runs in a worker made from a blob of its own bundle. Its footer's logo
# from cdn.redoc.ly is blocked like anything else from elsewhere.
CSP_REDOC = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'") + "; worker-src blob:"
HEADERS = {"Referrer-Policy": "same-origin", "Cache-Control": "no-cache"}


def _page(title: str, root_id: str, openapi_url: str, scripts: tuple[str, ...], css: str = "") -> str:
    style = f'<link rel="stylesheet" href="{ASSETS}/{css}?v={VERSION}">' if css else ""
    tags = "".join(f'<script src="{ASSETS}/{name}?v={VERSION}" defer></script>' for name in scripts)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<link rel="icon" href="{ASSETS}/favicon.svg?v={VERSION}" type="image/svg+xml">
{style}{tags}
</head>
<body>
<div id="{root_id}" data-openapi-url="{e(openapi_url)}"></div>
</body>
</html>
"""


def _openapi_url(request: Request) -> str:
    return request.scope.get("root_path", "") + (request.app.openapi_url or "/openapi.json")


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    body = _page(f"{request.app.title} · API reference", "swagger-ui", _openapi_url(request),
                 ("swagger-ui-bundle.js", "swagger-init.js"), "swagger-ui.css")  # fmt: skip
    return HTMLResponse(body, headers={**HEADERS, "Content-Security-Policy": CSP})


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    body = _page(f"{request.app.title} · API reference", "redoc", _openapi_url(request),
                 ("redoc.standalone.js", "redoc-init.js"))  # fmt: skip
    return HTMLResponse(body, headers={**HEADERS, "Content-Security-Policy": CSP_REDOC})


@router.get(ASSETS + "/{name}")
def asset(name: str) -> Response:
    if name not in FILES:
        return Response("not found", status_code=404, media_type="text/plain")
    media_type = TYPES[name[name.rfind(".") :]]
    return Response(_content(name), media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
