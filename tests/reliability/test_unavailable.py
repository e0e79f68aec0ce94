"""A database that is down, restarting or saturated is the server's passing trouble: every such
error becomes 503 with Retry-After (clients retry), never 500, whichever layer raises it — the
driver inside SQLAlchemy, the driver used directly (PostgreSQL COPY), or SQLAlchemy's pool."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import httpx
import psycopg
import pytest
import sqlalchemy.exc

from metering.core.db import is_unavailable
from metering.events import ingest
from tests.factories import make_event


def _wrapped_disconnect() -> Exception:
    return sqlalchemy.exc.OperationalError("INSERT ...", {}, psycopg.OperationalError("server closed the connection unexpectedly"))


def _raw_copy_failure() -> Exception:
    return psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")


def _admin_shutdown() -> Exception:
    return psycopg.errors.AdminShutdown("terminating connection due to administrator command")


def _pool_exhausted() -> Exception:
    return sqlalchemy.exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached, connection timed out, timeout 30.00")


def _invalidated_interface_error() -> Exception:
    return sqlalchemy.exc.InterfaceError(
        "SELECT 1", {}, psycopg.InterfaceError("the connection is lost"), connection_invalidated=True
    )


def _sqlite_locked() -> Exception:
    return sqlalchemy.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))


@pytest.mark.parametrize(
    "failure",
    [_wrapped_disconnect, _raw_copy_failure, _admin_shutdown, _pool_exhausted, _invalidated_interface_error, _sqlite_locked],
)
def test_database_trouble_answers_503_with_retry_after(
    api: httpx.Client, monkeypatch: pytest.MonkeyPatch, failure: Callable[[], Exception]
) -> None:
    def fail(*args: object, **kwargs: object) -> int:
        raise failure()

    monkeypatch.setattr(ingest, "_insert_ignoring_conflicts", fail)
    answer = api.post("/v1/events", json=[make_event()])
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) > 0
    assert answer.json()["error"] == "unavailable"


def test_a_programming_error_is_still_a_500(api: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> int:
        raise sqlalchemy.exc.ProgrammingError("SELECT nope", {}, Exception("relation does not exist"))

    monkeypatch.setattr(ingest, "_insert_ignoring_conflicts", fail)
    assert api.post("/v1/events", json=[make_event()]).status_code == 500


@pytest.mark.parametrize(
    "failure",
    [
        lambda: sqlalchemy.exc.OperationalError("SELECT sum(...)", {}, sqlite3.OperationalError("integer overflow")),
        lambda: sqlalchemy.exc.DataError("SELECT a + b", {}, psycopg.errors.NumericValueOutOfRange("bigint out of range")),
    ],
    ids=["sqlite", "postgresql"],
)
def test_a_sum_past_int64_is_a_409_not_a_retry(api: httpx.Client, monkeypatch: pytest.MonkeyPatch, failure: Callable[[], Exception]) -> None:
    """Retrying never makes such a sum: SQLite's overflow is an OperationalError, not trouble."""

    def fail(*args: object, **kwargs: object) -> int:
        raise failure()

    monkeypatch.setattr(ingest, "_insert_ignoring_conflicts", fail)
    answer = api.post("/v1/events", json=[make_event()])
    assert (answer.status_code, answer.json()["error"]) == (409, "usage_too_large")
    assert "retry-after" not in answer.headers
    assert not is_unavailable(failure())
