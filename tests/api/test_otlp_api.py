"""POST /v1/otlp/v1/traces through real HTTP: OTLP/JSON and protobuf, as the OTel SDK sends them."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from sqlalchemy import Engine, select

from metering.core.tables import events
from metering.core.tenants import Tenant
from tests.conftest import LiveServer

OTLP = Path(__file__).parents[1] / "fixtures" / "otlp"
PATH = "/v1/otlp/v1/traces"
JSON = {"content-type": "application/json"}
PROTOBUF = {"content-type": "application/x-protobuf"}
# Per fixture: stored events (by type) and spans rejected (anthropic: one span has no customer).
EXPECTED = {
    "openai_agent": (["task.completed", "usage", "usage"], 0),
    "anthropic_instrumentations": (["usage", "usage"], 1),
    "google_two_resources": (["task.failed", "usage", "usage", "usage"], 0),
}


def fixture_bytes(name: str, suffix: str) -> bytes:
    return (OTLP / f"{name}.{suffix}").read_bytes()


def stored(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(events).order_by(events.c.event_id)))


def chat_span(span_id: str, **attrs: Any) -> dict[str, Any]:
    values = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
              "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 20, "taskmeter.task": "t-1"} | attrs  # fmt: skip
    return {
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "name": "chat gpt-4o", "kind": 3,
        "startTimeUnixNano": "1791192843270000000", "endTimeUnixNano": "1791192845360000000",
        "attributes": [{"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}}
                       for k, v in values.items()],
    }  # fmt: skip


def export(*spans: dict[str, Any], customer: str = "acme") -> dict[str, Any]:
    resource = {"attributes": [{"key": "taskmeter.customer", "value": {"stringValue": customer}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {"name": "t"}, "spans": list(spans)}]}]}


class TestJson:
    @pytest.mark.parametrize("name", sorted(EXPECTED))
    def test_sdk_exports_are_stored(self, name: str, api: httpx.Client, engine: Engine) -> None:
        types, rejected = EXPECTED[name]
        response = api.post(PATH, content=fixture_bytes(name, "json"), headers=JSON)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        if rejected:
            assert body["partialSuccess"]["rejectedSpans"] == rejected
            assert "taskmeter.customer missing" in body["partialSuccess"]["errorMessage"]
        else:
            assert body == {}
        rows = stored(engine)
        assert sorted(r.type for r in rows) == types
        assert all(r.event_id.startswith("otel:") for r in rows)
        assert response.headers["x-taskmeter-accepted"] == str(len(types))

    def test_a_replayed_export_is_all_duplicates(self, api: httpx.Client, engine: Engine) -> None:
        body = fixture_bytes("openai_agent", "json")
        api.post(PATH, content=body, headers=JSON)
        again = api.post(PATH, content=body, headers=JSON)
        assert again.json() == {}
        assert (again.headers["x-taskmeter-accepted"], again.headers["x-taskmeter-duplicates"]) == ("0", "3")
        assert len(stored(engine)) == 3

    def test_gzip_bodies_are_accepted(self, api: httpx.Client, engine: Engine) -> None:
        body = gzip.compress(fixture_bytes("google_two_resources", "json"))
        response = api.post(PATH, content=body, headers=JSON | {"content-encoding": "gzip"})
        assert response.status_code == 200 and len(stored(engine)) == 4

    def test_spans_ingestion_rejects_are_counted(self, api: httpx.Client, engine: Engine) -> None:
        spans = [chat_span("0000000000000001"), chat_span("0000000000000002", **{"gen_ai.request.model": "m" * 200})]
        body = api.post(PATH, json=export(*spans)).json()
        assert body["partialSuccess"]["rejectedSpans"] == 1
        assert body["partialSuccess"]["errorMessage"].startswith("otel:5b8efff798038103d269b633813fc60c:0000000000000002: model")
        assert [r.event_id for r in stored(engine)] == ["otel:5b8efff798038103d269b633813fc60c:0000000000000001"]

    def test_malformed_json_is_400(self, api: httpx.Client) -> None:
        response = api.post(PATH, content=b'{"resourceSpans": [', headers=JSON)
        assert response.status_code == 400 and response.json()["error"] == "malformed_json"

    def test_wrong_structure_is_422(self, api: httpx.Client) -> None:
        response = api.post(PATH, json={"resourceSpans": {"not": "a list"}})
        assert response.status_code == 422
        assert "resourceSpans must be an array" in response.json()["message"]

    def test_other_media_types_are_415(self, api: httpx.Client) -> None:
        response = api.post(PATH, content=b"x", headers={"content-type": "text/plain"})
        assert response.status_code == 415 and response.json()["error"] == "unsupported_media_type"

    def test_a_body_past_the_limit_is_413(self, api: httpx.Client) -> None:
        spans = [chat_span(f"{n:016x}", padding="x" * 1000) for n in range(11_000)]
        response = api.post(PATH, content=orjson.dumps(export(*spans)), headers=JSON)
        assert response.status_code == 413

    def test_a_gzip_bomb_is_413(self, api: httpx.Client) -> None:
        response = api.post(PATH, content=gzip.compress(b" " * 20_000_000), headers=JSON | {"content-encoding": "gzip"})
        assert response.status_code == 413

    def test_ingest_scope_is_required(self, live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str]) -> None:
        with live_server.client(make_key(tenant, "read")) as client:
            assert client.post(PATH, content=fixture_bytes("openai_agent", "json"), headers=JSON).status_code == 403
        with live_server.client() as client:
            assert client.post(PATH, content=fixture_bytes("openai_agent", "json"), headers=JSON).status_code == 401


class TestProtobuf:
    @pytest.mark.parametrize("name", sorted(EXPECTED))
    def test_sdk_exports_are_stored_and_answered_in_protobuf(self, name: str, api: httpx.Client, engine: Engine) -> None:
        types, rejected = EXPECTED[name]
        response = api.post(PATH, content=fixture_bytes(name, "pb"), headers=PROTOBUF)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-protobuf"
        answer = ExportTraceServiceResponse.FromString(response.content)
        assert answer.partial_success.rejected_spans == rejected
        assert sorted(r.type for r in stored(engine)) == types

    def test_protobuf_and_json_of_one_export_are_the_same_events(self, api: httpx.Client, engine: Engine) -> None:
        api.post(PATH, content=fixture_bytes("google_two_resources", "pb"), headers=PROTOBUF)
        response = api.post(PATH, content=fixture_bytes("google_two_resources", "json"), headers=JSON)
        assert (response.headers["x-taskmeter-accepted"], response.headers["x-taskmeter-duplicates"]) == ("0", "4")
        assert json.loads(stored(engine)[0].metadata)["source"] == "otlp"

    def test_garbage_is_400(self, api: httpx.Client) -> None:
        response = api.post(PATH, content=b"\xff\xff\xff\xff", headers=PROTOBUF)
        assert response.status_code == 400
        assert "ExportTraceServiceRequest" in response.json()["message"]

    def test_an_empty_export_succeeds(self, api: httpx.Client) -> None:
        response = api.post(PATH, content=b"", headers=PROTOBUF)
        assert response.status_code == 200 and response.content == b""
