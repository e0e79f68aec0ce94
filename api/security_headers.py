"""Security headers on every response; a header a route set itself (the dashboard's strict
Content-Security-Policy, its Referrer-Policy) is kept.

- `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, `X-Frame-Options: DENY`;
- a Content-Security-Policy: `default-src 'none'; frame-ancestors 'none'` on anything that is
  not HTML (JSON, CSV: nothing in them may load or run), `frame-ancestors 'none'` on HTML pages
  without a policy of their own (the dashboard and the API docs, `api.routers.docs`, set theirs:
  this origin only);
- `Cache-Control: no-store` on answers to requests carrying an API key, unless set;
- `Strict-Transport-Security` when the request came over https.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
CSP_DATA = "default-src 'none'; frame-ancestors 'none'"
CSP_HTML = "frame-ancestors 'none'"
HSTS = "max-age=31536000"


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with_key = "authorization" in Headers(scope=scope)
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in ALWAYS.items():
                    headers.setdefault(name, value)
                html = headers.get("content-type", "").startswith("text/html")
                headers.setdefault("Content-Security-Policy", CSP_HTML if html else CSP_DATA)
                if with_key:
                    headers.setdefault("Cache-Control", "no-store")
                if https:
                    headers.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, send_with_headers)
