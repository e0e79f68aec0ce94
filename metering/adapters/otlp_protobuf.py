"""OTLP/HTTP protobuf bodies → the OTLP/JSON shape `metering.adapters.otlp.spans_to_events` reads, fast.

The result equals `metering.adapters.otlp.decode_protobuf` (protobuf's `MessageToDict` with integer enums,
then ids in hex), which the tests use as the reference, at about half the cost: `MessageToDict`
is generic Python over every field, and a span is mostly attributes, which take a direct path
here. The proto3 JSON mapping: only fields that are set, lowerCamelCase names, 64-bit integers as
strings, bytes in base64 except OTLP's ids (hex), NaN and infinities as strings, enums as numbers.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["decode_export"]

_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_BYTES = FieldDescriptor.TYPE_BYTES
_FLOATS = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})
_INT64S = frozenset({
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_SINT64,
})  # fmt: skip
_HEX_IDS = frozenset({"traceId", "spanId", "parentSpanId"})
# AnyValue kinds written directly: (JSON name, conversion).
_SIMPLE_VALUES = {
    "string_value": ("stringValue", str),
    "int_value": ("intValue", str),
    "bool_value": ("boolValue", bool),
}


def decode_export(body: bytes) -> dict[str, Any]:
    """An ExportTraceServiceRequest; a body that is not one is a ValueError."""
    try:
        message = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise ValueError(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    return _message(message)


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        name = field.json_name
        if name == "attributes":
            out[name] = [_key_value(item) for item in value]
        elif field.type == _MESSAGE:
            out[name] = [_message(item) for item in value] if _repeated(field) else _message(value)
        elif _repeated(field):
            out[name] = [_scalar(field.type, item, name) for item in value]
        else:
            out[name] = _scalar(field.type, value, name)
    return out


def _key_value(item: Any) -> dict[str, Any]:
    kind: str | None = item.value.WhichOneof("value") if item.key else None
    if kind is None or kind not in _SIMPLE_VALUES:  # doubles, arrays, lists, bytes, an empty
        return _message(item)  # key or value: the general path
    json_name, convert = _SIMPLE_VALUES[kind]
    return {"key": item.key, "value": {json_name: convert(getattr(item.value, kind))}}


def _scalar(kind: int, value: Any, name: str) -> Any:
    if kind in _INT64S:
        return str(value)
    if kind == _BYTES:
        return value.hex() if name in _HEX_IDS else base64.b64encode(value).decode()
    if kind in _FLOATS and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.28; `label` before
    return bool(repeated) if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED
