"""Request size limits on every body: each POST/PUT/PATCH route of the route table, with a
declared Content-Length past `max_body_bytes` and with a chunked body past it, is answered 413
naming the limit, before authentication; a body at the limit goes through."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterator

import pytest

from api.settings import Settings
from tests.conftest import LiveServer
from tests.security.conftest import flat_routes, throwaway_app

LIMIT = 4096
WRITES = sorted(
    (method, re.sub(r"{(\w+)(?::\w+)?}", "1", route.path))
    for route in flat_routes(throwaway_app())
    for method in route.methods & {"POST", "PUT", "PATCH", "DELETE"}
)


@pytest.fixture
def server(server_for: Callable[[Settings], LiveServer], settings: Settings) -> LiveServer:
    return server_for(settings.model_copy(update={"max_body_bytes": LIMIT}))


def chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


def test_the_route_table_has_writes() -> None:
    assert ("POST", "/v1/events") in WRITES and ("PUT", "/v1/customers/1") in WRITES and len(WRITES) >= 8


@pytest.mark.parametrize(("method", "path"), WRITES, ids=[f"{m} {p}" for m, p in WRITES])
class TestEveryBody:
    def test_a_declared_length_past_the_limit_is_413(self, server: LiveServer, method: str, path: str) -> None:
        with server.client() as client:
            response = client.request(method, path, content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert response.json() == {
            "error": "payload_too_large",
            "message": "the request body passes the limit of 4,096 bytes; send smaller requests",
            "detail": {"max_body_bytes": LIMIT},
        }

    def test_a_chunked_body_past_the_limit_is_413(self, server: LiveServer, method: str, path: str) -> None:
        with server.client() as client:
            response = client.request(method, path, content=chunks(LIMIT * 3), headers={"content-type": "application/json"})
        assert response.status_code == 413 and response.json()["detail"] == {"max_body_bytes": LIMIT}

    def test_a_body_at_the_limit_goes_through(self, server: LiveServer, method: str, path: str) -> None:
        with server.client() as client:
            sized = client.request(method, path, content=b"x" * LIMIT, headers={"content-type": "application/json"})
            streamed = client.request(method, path, content=chunks(LIMIT), headers={"content-type": "application/json"})
        assert sized.status_code != 413 and streamed.status_code != 413
        assert sized.status_code == streamed.status_code  # the same answer, however the body came


def test_every_operation_with_a_body_declares_400_and_413() -> None:
    schema = throwaway_app().openapi()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                assert {"400", "413"} <= set(operation["responses"]), f"{method.upper()} {path}"


def test_a_chunked_body_within_the_limit_is_handed_on_whole(server: LiveServer, tenant, make_key) -> None:  # type: ignore[no-untyped-def]
    events = b'[{"id": "c1", "type": "task.started", "time": "2026-11-20T10:00:00Z", "customer": "acme", "task": "t"}]'
    with server.client(make_key(tenant)) as client:
        response = client.post("/v1/events", content=iter([events[:20], events[20:]]), headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.json()["accepted"] == 1


@pytest.mark.parametrize("path", ["/v1/events", "/v1/otlp/v1/traces"])
def test_the_limit_holds_after_inflating_a_gzip_body(server: LiveServer, tenant, make_key, path: str) -> None:  # type: ignore[no-untyped-def]
    bomb = gzip.compress(b" " * (LIMIT * 200))
    assert len(bomb) < LIMIT
    with server.client(make_key(tenant)) as client:
        response = client.post(path, content=bomb, headers={"content-type": "application/json", "content-encoding": "gzip"})
        other = client.post(path, content=b"{}", headers={"content-type": "application/json", "content-encoding": "br"})
    assert response.status_code == 413 and response.json()["detail"] == {"max_body_bytes": LIMIT}
    assert other.status_code == 415 and other.json()["error"] == "unsupported_media_type"
