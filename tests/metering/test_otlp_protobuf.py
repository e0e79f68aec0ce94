"""The fast protobuf decoder gives exactly what the reference (`MessageToDict`) decoder gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from metering.adapters.otlp import decode_protobuf
from metering.adapters.otlp_protobuf import decode_export

OTLP = Path(__file__).parents[1] / "fixtures" / "otlp"


def kv(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


@pytest.mark.parametrize("name", ["openai_agent", "anthropic_instrumentations", "google_two_resources"])
def test_sdk_fixtures(name: str) -> None:
    body = (OTLP / f"{name}.pb").read_bytes()
    assert decode_export(body) == decode_protobuf(body) == json.loads((OTLP / f"{name}.json").read_text())


def test_every_kind_of_field() -> None:
    attributes = [
        kv("s", string_value="x"), kv("i", int_value=-(2**63)), kv("zero", int_value=0), kv("b", bool_value=False),
        kv("d", double_value=0.1), kv("nan", double_value=float("nan")), kv("inf", double_value=float("-inf")),
        kv("bytes", bytes_value=b"\x00\xff"), kv("arr", array_value=ArrayValue(values=[AnyValue(int_value=1)])),
        kv("kvl", kvlist_value=KeyValueList(values=[kv("in", string_value="y")])), kv("", string_value="no key"),
        KeyValue(key="unset"),
    ]  # fmt: skip
    span = Span(
        trace_id=bytes(range(16)), span_id=bytes(range(8)), parent_span_id=bytes(range(1, 9)), trace_state="a=b",
        flags=257, name="chat", kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=1, end_time_unix_nano=2**63 + 5,
        attributes=attributes, dropped_attributes_count=3,
        events=[Span.Event(time_unix_nano=7, name="e", attributes=attributes[:2])],
        links=[Span.Link(trace_id=bytes(16), span_id=b"\x01" * 8, trace_state="c=d", attributes=attributes[2:4], flags=1)],
        dropped_links_count=1, status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
    )  # fmt: skip
    request = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(
            resource=Resource(attributes=attributes[:3], dropped_attributes_count=1), schema_url="https://schema",
            scope_spans=[ScopeSpans(scope=InstrumentationScope(name="s", version="1", attributes=attributes[:1]),
                                    spans=[span, Span()], schema_url="u"), ScopeSpans()],
        ),
        ResourceSpans(),
    ])  # fmt: skip
    body = request.SerializeToString()
    decoded = decode_export(body)
    assert json.dumps(decoded, sort_keys=True) == json.dumps(decode_protobuf(body), sort_keys=True)
    assert decoded["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == bytes(range(16)).hex()


def test_empty_body_is_an_empty_request() -> None:
    assert decode_export(b"") == decode_protobuf(b"") == {}


def test_garbage_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not an OTLP ExportTraceServiceRequest"):
        decode_export(b"\xff\xff\xff")
