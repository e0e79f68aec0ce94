"""One rendering of every error: `{"error": code, "message": text, "detail": ...}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from metering.core.db import UNAVAILABLE, is_overflow
from metering.core.errors import TaskmeterError, UsageTooLarge

log = logging.getLogger("taskmeter.api")


class ErrorBody(BaseModel):
    error: str
    message: str
    detail: Any = None


def error_response(status: int, error: str, message: str, detail: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": error, "message": message, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


def usage_too_large() -> UsageTooLarge:
    """A sum the database could not make (past 2**63 - 1): an answer, not a 503 to retry."""
    return UsageTooLarge(
        "a sum of usage exceeds 9,223,372,036,854,775,807, the most the database sums exactly "
        "(tokens, or provider cost in 1e-9 of the currency)"
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TaskmeterError)
    async def _taskmeter(_: Request, exc: TaskmeterError) -> JSONResponse:
        return error_response(exc.status_code, exc.error, exc.message, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"field": ".".join(str(p) for p in err["loc"]), "message": str(err["msg"]).removeprefix("Value error, ")}
            for err in exc.errors()
        ]
        return error_response(422, "invalid", "request validation failed", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), None, dict(exc.headers or {}))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _: ClientDisconnect) -> Response:
        # The client's trouble, not the server's: one line, no traceback, and no 500 (nobody is
        # left to answer; the status only names the case, as nginx's 499 does).
        log.warning("%s %s: the client disconnected before sending the whole body", request.method, request.url.path)
        return Response(status_code=499)

    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        if is_overflow(exc):
            return await _taskmeter(request, usage_too_large())
        # Lost connections, a restarting server, locked databases, a saturated pool: the server's
        # trouble, and passing: retry.
        log.warning("database unavailable: %s", (getattr(exc, "orig", None) or exc).__class__.__name__)
        return error_response(503, "unavailable", "the database is unavailable; retry later", None, {"Retry-After": "2"})

    for unavailable in UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_down)

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if is_overflow(exc):
            return await _taskmeter(request, usage_too_large())
        if exc.connection_invalidated:  # SQLAlchemy saw the connection drop, whatever the error class
            return await _database_down(request, exc)
        log.error("database error", exc_info=exc)
        return error_response(500, "internal", "internal error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error")


# Declared on routes so the OpenAPI schema lists every error a client can get.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed request"},
    401: {"model": ErrorBody, "description": "Missing or invalid API key"},
    403: {"model": ErrorBody, "description": "The key lacks the scope"},
    413: {"model": ErrorBody, "description": "Request body too large (the limit is in `detail`)"},
    415: {"model": ErrorBody, "description": "Content-Type or Content-Encoding not accepted (the accepted ones are named)"},
    422: {"model": ErrorBody, "description": "Invalid input, with the field and the reason"},
    429: {"model": ErrorBody, "description": "Rate limit of the API key exceeded; retry after Retry-After seconds"},
    503: {"model": ErrorBody, "description": "Database unavailable; retry after Retry-After seconds"},
}
BODY_ERRORS = (400, 413)  # every route that takes a body: malformed (not JSON), too large


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The errors of an authenticated route, and `codes` besides (`*BODY_ERRORS` for a body)."""
    base = {code: ERRORS[code] for code in (401, 403, 422, 429, 503)}
    for code in codes:
        base[code] = ERRORS.get(code, {"model": ErrorBody, "description": "Error"})
    return base
