"""How the ingestion routes read a body: its Content-Type (the documented ones, else 415), its
Content-Encoding (gzip, else 415), and a client that goes away halfway (one log line)."""

from __future__ import annotations

import gzip
import logging
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, func, select

from api.bodies import decoded
from metering.core.errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType
from metering.core.tables import events
from metering.core.tenants import Tenant
from tests.conftest import LiveServer
from tests.factories import make_event

ACCEPTED_TYPES = ["application/json", "application/cloudevents+json", "application/cloudevents-batch+json"]


def stored(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(events)).scalar_one())


def cloudevent(n: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"ce-{n}", "source": "agents", "type": "usage", "subject": "acme",
            "time": "2026-11-20T10:00:00Z", "data": {"task": "t", "provider": "acme-ai", "model": "acme-large",
            "input_tokens": 1, "output_tokens": 1}}  # fmt: skip


class TestContentTypes:
    def test_json_with_or_without_its_charset(self, api: httpx.Client, engine: Engine) -> None:
        for n, content_type in enumerate(["application/json", "Application/JSON; charset=utf-8"]):
            response = api.post("/v1/events", content=orjson.dumps([make_event(id=f"e{n}")]), headers={"Content-Type": content_type})
            assert response.status_code == 200 and response.json()["accepted"] == 1, content_type
        assert stored(engine) == 2

    def test_no_content_type_is_read_as_json(self, api: httpx.Client, engine: Engine) -> None:
        request = api.build_request("POST", "/v1/events", content=orjson.dumps([make_event(id="bare")]))
        assert "content-type" not in request.headers
        assert api.send(request).json()["accepted"] == 1 and stored(engine) == 1

    @pytest.mark.parametrize(
        "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/x-ndjson", "application/xml"]
    )
    def test_other_types_are_415_naming_the_accepted_ones(self, api: httpx.Client, engine: Engine, content_type: str) -> None:
        response = api.post("/v1/events", content=orjson.dumps([make_event()]), headers={"Content-Type": content_type})
        assert response.status_code == 415
        assert response.json()["error"] == "unsupported_media_type"
        assert response.json()["detail"] == {"accepted": ACCEPTED_TYPES}
        assert all(kind in response.json()["message"] for kind in ACCEPTED_TYPES)
        assert repr(content_type) in response.json()["message"]
        assert stored(engine) == 0

    def test_the_schema_declares_415(self, api: httpx.Client) -> None:
        operation = api.get("/openapi.json").json()["paths"]["/v1/events"]["post"]
        assert "415" in operation["responses"]
        assert sorted(operation["requestBody"]["content"]) == sorted(ACCEPTED_TYPES)


class TestGzip:
    def test_a_gzip_batch_is_stored(self, api: httpx.Client, engine: Engine) -> None:
        body = gzip.compress(orjson.dumps([make_event(id=f"g{n}") for n in range(50)]))
        response = api.post("/v1/events", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 50 and stored(engine) == 50

    def test_gzip_cloudevents(self, api: httpx.Client, engine: Engine) -> None:
        body = gzip.compress(orjson.dumps([cloudevent(1), cloudevent(2)]))
        headers = {"Content-Type": "application/cloudevents-batch+json", "Content-Encoding": "gzip"}
        assert api.post("/v1/events", content=body, headers=headers).json()["accepted"] == 2
        assert stored(engine) == 2

    @pytest.mark.parametrize("encoding", ["br", "zstd", "deflate", "compress", "gzip, br"])
    def test_other_encodings_are_415(self, api: httpx.Client, engine: Engine, encoding: str) -> None:
        response = api.post("/v1/events", content=b"[]", headers={"Content-Type": "application/json", "Content-Encoding": encoding})
        assert response.status_code == 415
        assert response.json()["detail"] == {"accepted_encodings": ["gzip"]}
        assert "gzip" in response.json()["message"]

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"[]", "not valid gzip"),
            (gzip.compress(b"[]" * 100)[:-12], "ends before its compressed stream does"),
            (gzip.compress(b"[]") + b"trailing", "8 bytes follow its compressed stream"),
            (gzip.compress(b"[") + gzip.compress(b"]"), "not several concatenated"),  # `cat a.gz b.gz`: not half of it
        ],
        ids=["not-gzip", "truncated", "trailing-garbage", "two-members"],
    )
    def test_a_broken_gzip_body_is_400_and_stores_nothing(self, api: httpx.Client, engine: Engine, body: bytes, message: str) -> None:
        response = api.post("/v1/events", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert response.status_code == 400 and response.json()["error"] == "malformed_body"
        assert message in response.json()["message"]
        assert stored(engine) == 0

    def test_the_limit_applies_after_inflation(self, api: httpx.Client, live_server: LiveServer) -> None:
        limit = live_server.app.state.settings.max_body_bytes
        bomb = gzip.compress(b" " * (limit + 1))
        assert len(bomb) < limit // 100
        response = api.post("/v1/events", content=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert response.status_code == 413
        assert response.json()["detail"] == {"max_body_bytes": limit}
        assert f"{limit:,} bytes" in response.json()["message"]
        at_limit = gzip.compress(b"[]".ljust(limit))
        assert api.post("/v1/events", content=at_limit, headers={"Content-Encoding": "gzip"}).status_code == 200


class TestDecoded:
    """`api.bodies.decoded`, shared by /v1/events and the OTLP route."""

    def test_a_bomb_is_refused_without_inflating_it(self) -> None:
        import tracemalloc

        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = bytes(1 << 20)
        bomb = b"".join(compressor.compress(zeros) for _ in range(512)) + compressor.flush()  # 512 MB inflated
        tracemalloc.start()
        try:
            with pytest.raises(PayloadTooLarge):
                decoded(bomb, "gzip", limit=1 << 20, accepted=("gzip",))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20  # a few times the limit, not the 512 MB

    def test_identity_and_none_pass_through(self) -> None:
        assert decoded(b"[]", "", limit=10, accepted=("gzip",)) == b"[]"
        assert decoded(b"[]", " Identity ", limit=10, accepted=("gzip",)) == b"[]"

    def test_deflate_only_where_accepted(self) -> None:
        assert decoded(zlib.compress(b"[1]"), "deflate", limit=10, accepted=("gzip", "deflate")) == b"[1]"
        with pytest.raises(UnsupportedMediaType):
            decoded(zlib.compress(b"[1]"), "deflate", limit=10, accepted=("gzip",))
        with pytest.raises(MalformedBody):
            decoded(zlib.compress(b"[1]") + b"x", "deflate", limit=10, accepted=("deflate",))

    def test_zero_padding_after_the_last_member_is_allowed(self) -> None:
        assert decoded(gzip.compress(b"[1]") + bytes(8), "gzip", limit=10, accepted=("gzip",)) == b"[1]"


class TestClientsThatGoAway:
    """A client that disconnects before its whole body is sent leaves one log line, no
    traceback, and no 500."""

    @pytest.fixture
    def records(self) -> Iterator[list[logging.LogRecord]]:
        found: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                found.append(record)

        handler = Keep(logging.DEBUG)
        loggers = [logging.getLogger(name) for name in ("taskmeter", "uvicorn", "uvicorn.error", "fastapi", "starlette")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        yield found
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)

    @pytest.mark.parametrize(
        ("path", "content_type"),
        [("/v1/events", "application/json"), ("/v1/otlp/v1/traces", "application/json"),
         ("/dashboard/sign-in", "application/x-www-form-urlencoded")],  # fmt: skip
    )
    def test_one_line_no_traceback(
        self, live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str], engine: Engine,
        records: list[logging.LogRecord], path: str, content_type: str,
    ) -> None:  # fmt: skip
        key = make_key(tenant)
        host, port = live_server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n".encode() + b'[{"id": "half'
            )
            time.sleep(0.3)  # the server is reading the body
        deadline = time.monotonic() + 10
        while not records and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # room for a second record, should there be one
        assert [(r.levelno, r.getMessage()) for r in records] == [
            (logging.WARNING, f"POST {path}: the client disconnected before sending the whole body")
        ]
        assert records[0].exc_info is None
        assert stored(engine) == 0
        with live_server.client(key) as client:  # the server carries on
            assert client.post("/v1/events", json=[make_event()]).status_code == 200
