"""Error types. Every error a client can cause is a `TaskmeterError` with an HTTP status;
the API renders them all through one handler as `{"error": ..., "detail": ...}`."""

from __future__ import annotations

from typing import Any


class TaskmeterError(Exception):
    status_code = 400
    error = "bad_request"

    def __init__(self, message: str, *, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class MalformedBody(TaskmeterError):
    """A request body that cannot be read at all (a broken compressed stream)."""

    error = "malformed_body"


class Unauthorized(TaskmeterError):
    status_code = 401
    error = "unauthorized"


class Forbidden(TaskmeterError):
    status_code = 403
    error = "forbidden"


class NotFound(TaskmeterError):
    status_code = 404
    error = "not_found"


class Conflict(TaskmeterError):
    status_code = 409
    error = "conflict"


class UsageTooLarge(Conflict):
    """A sum of usage (tokens, or provider cost in nano-units) past 2**63 - 1, the most the
    rollup tables hold exactly: refused rather than wrapped around into a wrong amount."""

    error = "usage_too_large"


class PayloadTooLarge(TaskmeterError):
    status_code = 413
    error = "payload_too_large"


class UnsupportedMediaType(TaskmeterError):
    status_code = 415
    error = "unsupported_media_type"


class InvalidInput(TaskmeterError):
    status_code = 422
    error = "invalid"


class RateLimited(TaskmeterError):
    status_code = 429
    error = "rate_limited"


class Unavailable(TaskmeterError):
    status_code = 503
    error = "unavailable"
