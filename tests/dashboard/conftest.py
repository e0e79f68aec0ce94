"""Dashboard fixtures: the reports' scenario tenant (tests/reports/conftest.py), a live server,
and a browser-like HTTP client that signs in through the sign-in form."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx
import pytest

from tests.conftest import LiveServer
from tests.reports.conftest import Books, books, make_books, send_october, usage  # noqa: F401 - fixtures

CLOSE = datetime(2026, 11, 1, 1, tzinfo=UTC)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@contextmanager
def sign_in(server: LiveServer, key: str, **headers: str) -> Iterator[httpx.Client]:
    """A client with the session cookie of `key`, signed in through the form like a browser."""
    with httpx.Client(base_url=server.url, timeout=30, headers=headers) as client:
        page = client.get("/dashboard/sign-in")
        response = client.post(
            "/dashboard/sign-in", data={"csrf": csrf_of(page.text), "key": key, "next": "/dashboard"}
        )
        assert response.status_code == 303, response.text
        yield client


@pytest.fixture
def october_books(books: Books) -> Books:  # noqa: F811 - the fixture above
    """acme-ai's hand-built October, closed, and a little of November."""
    send_october(books)
    books.rollup()
    books.close("2026-10", now=CLOSE)
    books.send(usage("n1", "2026-11-03T00:00:00Z", customer="globex", input_tokens=100_000))
    books.rollup()
    return books


@pytest.fixture
def dashboard(
    live_server: LiveServer, october_books: Books, make_key: Callable[..., str]
) -> Iterator[httpx.Client]:
    with sign_in(live_server, make_key(october_books.tenant, "read")) as client:
        yield client
