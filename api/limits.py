"""What every request may carry, checked before any route, dependency or authentication sees it.

- A body longer than `max_body_bytes` is answered 413, naming the limit. A declared
  `Content-Length` past the limit is refused without reading the body. A body without one
  (`Transfer-Encoding: chunked`) is read here, counting, and refused as soon as it passes the
  limit; otherwise it is handed on whole. With a `Content-Length` the server itself never
  delivers more bytes than declared, so those bodies stream through untouched.
- A path or query with a NUL character is answered 422: PostgreSQL cannot store one in text
  (SQLite could), and both databases must answer alike.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or "\x00" in unquote_plus(scope["query_string"].decode("latin-1")):
            detail = [{"field": "path" if "\x00" in scope["path"] else "query", "message": "must not contain NUL characters"}]
            await error_response(422, "invalid", "request validation failed", detail)(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if declared.strip().isdigit() and int(declared) > self.limit:
                await self._too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body at all
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "payload_too_large",
            f"the request body passes the limit of {self.limit:,} bytes; send smaller requests",
            {"max_body_bytes": self.limit},
            {"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over the body read already, then listens to the client again."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
