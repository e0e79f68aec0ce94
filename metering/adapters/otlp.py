"""OTLP traces (OTel GenAI spans) → taskmeter event dicts.

Input is the decoded OTLP/HTTP JSON body of an `ExportTraceServiceRequest` (ids in hex, 64-bit
integers as strings, attributes as `[{key, value: {stringValue|intValue|doubleValue|...}}]`), or
the same shape from `decode_protobuf`. Output is event dicts for `metering.events.ingest`.

A span becomes a `usage` event when it carries GenAI usage attributes:

| field | attributes, first present wins |
|---|---|
| input_tokens | `gen_ai.usage.input_tokens`, legacy `gen_ai.usage.prompt_tokens` |
| output_tokens | `gen_ai.usage.output_tokens`, legacy `gen_ai.usage.completion_tokens` |
| cache_read_tokens | `gen_ai.usage.cache_read.input_tokens`, `gen_ai.usage.cache_read_input_tokens`, `gen_ai.usage.input_tokens.cached` |
| cache_write_tokens | `gen_ai.usage.cache_creation.input_tokens`, `gen_ai.usage.cache_creation_input_tokens`, `gen_ai.usage.input_tokens.cache_write` |
| reasoning_tokens | `gen_ai.usage.reasoning.output_tokens`, `gen_ai.usage.reasoning_tokens`, `gen_ai.usage.output_tokens.reasoning` |
| cache_write_1h_tokens | `gen_ai.usage.cache_creation.ephemeral_1h_input_tokens`, `taskmeter.usage.cache_write_1h_tokens` |
| model | `gen_ai.response.model`, else `gen_ai.request.model` |
| provider | `gen_ai.provider.name`, else legacy `gen_ai.system`, mapped to genai-prices ids (`gcp.gemini` → `google`, `aws.bedrock` → `aws`, ...); else the model's family (`claude-*` → `anthropic`) |

1-hour cache writes. The GenAI semconv (through 1.38) names no attribute for the cache-write
lifetime, and no Anthropic instrumentation we know of exports one; taskmeter reads Anthropic's own
field under the semconv's `gen_ai.usage.cache_creation.` prefix (what an instrumentation that
flattens Anthropic's `usage.cache_creation` writes), or its own `taskmeter.usage.` name. They are
a subset of the cache writes; without them every cache write is priced at the write rate.

Inclusivity. The GenAI semconv says `gen_ai.usage.input_tokens` SHOULD include cached tokens and
`gen_ai.usage.output_tokens` SHOULD include reasoning tokens: taskmeter's own convention, so counts
are taken as they are. Older instrumentations passed provider numbers through: Anthropic's
`input_tokens` without the cache, Gemini's `candidates_token_count` without thoughts. When a span
of the Anthropic family (provider `anthropic` or a `claude` model) reports more cache tokens than
input tokens, or one of the Google family more reasoning than output tokens, the inclusive reading
is impossible and the exclusive one is that provider's own convention: the subset is added to the
total. Anywhere else such a span is rejected. Where an instrumentation is known to report exclusive
counts even when the subset is smaller, list its provider in `SpanMapping.exclusive_input_providers`
or `exclusive_output_providers`.

Aggregates. The semconv lets `invoke_agent` (and workflow, tool) spans carry the summed usage of
the model calls beneath them; counting both would bill twice, so usage on the operations in
`SpanMapping.aggregate_operations` is ignored.

Who and what. The customer and task come from the span's attributes, else the resource's
(`taskmeter.customer`, `taskmeter.task`, `taskmeter.task_type`; names configurable). The task
defaults to the trace id. A span with usage but no customer is rejected. Attributes do not
inherit from parent spans; set them on every span (an OTel baggage span processor does that) or on
the resource.

Attribution (optional). The actor (whose account the work ran under) is `taskmeter.actor`, else
the semconv's `enduser.id`; the agent is `taskmeter.agent`, else `gen_ai.agent.id`, else
`gen_ai.agent.name`. The span's attributes are looked at first (each name in that order), then the
resource's: a span's own actor or agent wins over its resource's.

Outcomes (optional). A span whose `taskmeter.outcome` is `completed`, `failed` or `cancelled` also
yields a `task.<outcome>` event, id `otel:<traceId>:<spanId>:outcome`, even on an aggregate span.

Each event's id is `otel:<traceId>:<spanId>` (replays are duplicates), its time the span's end in
UTC. Spans that yield nothing are counted in `skipped`; spans that cannot be converted are listed
in `rejected` with their path in the request and the reasons, and yield no event at all.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

from taskmeter_client.extract import FieldError, TokenUsage, UsageFieldError, check_count, provider_from_model

from metering.core.vocabulary import OUTCOMES

__all__ = ["OtlpResult", "RejectedSpan", "SpanMapping", "decode_protobuf", "spans_to_events"]

_USAGE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "cache_read_tokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "gen_ai.usage.input_tokens.cached",
    ),
    "cache_write_tokens": (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "gen_ai.usage.input_tokens.cache_write",
    ),
    "reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "gen_ai.usage.output_tokens.reasoning",
    ),
    "cache_write_1h_tokens": (
        "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens",
        "taskmeter.usage.cache_write_1h_tokens",
    ),
}
_ALL_USAGE_ATTRIBUTES = frozenset(key for keys in _USAGE_ATTRIBUTES.values() for key in keys)

# Semconv (and legacy `gen_ai.system`) provider names → genai-prices provider ids.
# fmt: off
_PROVIDER_IDS = {
    "gcp.gemini": "google", "gcp.vertex_ai": "google", "gcp.gen_ai": "google", "vertex_ai": "google",
    "gemini": "google", "aws.bedrock": "aws", "azure.ai.openai": "azure", "azure.ai.inference": "azure",
    "az.ai.openai": "azure", "az.ai.inference": "azure", "x_ai": "x-ai", "xai": "x-ai",
    "mistral_ai": "mistral", "moonshot_ai": "moonshotai",
}
# fmt: on

_METADATA_ATTRIBUTES = ("service.name", "gen_ai.agent.name", "gen_ai.operation.name", "gen_ai.provider.name")
_MAX_METADATA_VALUE = 1024
_NO_CUSTOMER = "missing: the customer billed for this span (set it on the span or resource)"
_HEX = re.compile(r"[0-9a-fA-F]+")  # whole texts (fullmatch), ASCII digits only
_INT = re.compile(r"[+-]?\d+", re.ASCII)


@dataclass(frozen=True, slots=True)
class SpanMapping:
    """Where taskmeter's fields live on spans, and which spans' usage to leave out."""

    customer_key: str = "taskmeter.customer"
    task_key: str = "taskmeter.task"
    task_type_key: str = "taskmeter.task_type"
    actor_keys: tuple[str, ...] = ("taskmeter.actor", "enduser.id")
    agent_keys: tuple[str, ...] = ("taskmeter.agent", "gen_ai.agent.id", "gen_ai.agent.name")
    outcome_key: str = "taskmeter.outcome"
    aggregate_operations: frozenset[str] = frozenset(
        {"invoke_agent", "create_agent", "invoke_workflow", "execute_tool"}
    )
    exclusive_input_providers: frozenset[str] = frozenset()
    exclusive_output_providers: frozenset[str] = frozenset()


class RejectedSpan(TypedDict):
    path: str
    trace_id: str | None
    span_id: str | None
    errors: list[FieldError]


@dataclass(slots=True)
class OtlpResult:
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    rejected: list[RejectedSpan] = field(default_factory=list)


class _Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.error: FieldError = {"field": field, "message": message}


def spans_to_events(request: Any, *, mapping: SpanMapping | None = None) -> OtlpResult:
    """Convert an OTLP JSON `ExportTraceServiceRequest`; a malformed structure is a ValueError."""
    mapping = mapping or SpanMapping()
    if not isinstance(request, Mapping):
        raise ValueError("an ExportTraceServiceRequest must be a JSON object")
    result = OtlpResult()
    for r, resource_spans in enumerate(_list(request, "resourceSpans", "")):
        where = f"resourceSpans[{r}]"
        resource_spans = _object(resource_spans, where)
        resource = _object(resource_spans.get("resource") or {}, f"{where}.resource")
        try:
            resource_attributes = _attributes(resource)
        except _Invalid as exc:
            raise ValueError(f"{where}.resource.{exc.error['field']} {exc.error['message']}") from None
        for s, scope_spans in enumerate(_list(resource_spans, "scopeSpans", where)):
            scope_where = f"{where}.scopeSpans[{s}]"
            for i, span in enumerate(_list(_object(scope_spans, scope_where), "spans", scope_where)):
                path = f"{scope_where}.spans[{i}]"
                span = _object(span, path)
                try:
                    attributes = _attributes(span)
                except _Invalid as exc:
                    ids = _id_or_none(span.get("traceId"), 16), _id_or_none(span.get("spanId"), 8)
                    result.rejected.append(
                        {"path": path, "trace_id": ids[0], "span_id": ids[1], "errors": [exc.error]}
                    )
                    continue
                _convert(span, attributes, resource_attributes, path, mapping, result)
    return result


def _convert(
    span: Mapping[str, Any],
    attributes: dict[str, Any],
    resource_attributes: dict[str, Any],
    path: str,
    mapping: SpanMapping,
    result: OtlpResult,
) -> None:
    operation = attributes.get("gen_ai.operation.name", {}).get("stringValue")
    has_usage = operation not in mapping.aggregate_operations and not _ALL_USAGE_ATTRIBUTES.isdisjoint(
        attributes
    )
    has_outcome = mapping.outcome_key in attributes
    if not has_usage and not has_outcome:
        result.skipped += 1
        return

    errors: list[FieldError] = []

    def attempt(func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except _Invalid as exc:
            errors.append(exc.error)
            return None

    trace_id = attempt(_hex_id, span.get("traceId"), 16, "traceId")
    span_id = attempt(_hex_id, span.get("spanId"), 8, "spanId")
    time = attempt(_end_time, span.get("endTimeUnixNano"))

    def text(key: str) -> str | None:
        raw = attributes.get(key, resource_attributes.get(key))
        return None if raw is None else attempt(_text, raw, key)

    customer = text(mapping.customer_key)
    if customer is None and not any(e["field"] == mapping.customer_key for e in errors):
        errors.append({"field": mapping.customer_key, "message": _NO_CUSTOMER})
    task = text(mapping.task_key) or trace_id
    task_type = text(mapping.task_type_key)
    actor, agent = (attempt(_attribution, keys, attributes, resource_attributes) for keys in (mapping.actor_keys, mapping.agent_keys))
    usage = attempt(_usage, attributes, mapping) if has_usage else None
    outcome = attempt(_outcome, attributes[mapping.outcome_key], mapping.outcome_key) if has_outcome else None
    if errors:
        result.rejected.append({"path": path, "trace_id": trace_id, "span_id": span_id, "errors": errors})
        return

    base: dict[str, Any] = {"time": time, "customer": customer, "task": task}
    if task_type is not None:
        base["task_type"] = task_type
    if actor is not None:
        base["actor"] = actor
    if agent is not None:
        base["agent"] = agent
    base["metadata"] = _metadata(span, trace_id, span_id, attributes, resource_attributes)
    event_id = f"otel:{trace_id}:{span_id}"
    if usage is not None:
        result.events.append({"id": event_id, "type": "usage", **base, **usage.event_fields()})
    if outcome is not None:
        result.events.append({"id": f"{event_id}:outcome", "type": f"task.{outcome}", **base})


def _attribution(keys: tuple[str, ...], attributes: dict[str, Any], resource_attributes: dict[str, Any]) -> str | None:
    """The first of `keys` on the span, else the first on the resource; None if none is there."""
    for found in (attributes, resource_attributes):
        key = next((k for k in keys if k in found), None)
        if key is not None:
            return _text(found[key], key)
    return None


def _usage(attributes: dict[str, Any], mapping: SpanMapping) -> TokenUsage:
    counts: dict[str, int] = {}
    for name, keys in _USAGE_ATTRIBUTES.items():
        key = next((k for k in keys if k in attributes), None)
        counts[name] = 0 if key is None else _count(attributes[key], key)

    model = _first_text(attributes, "gen_ai.response.model", "gen_ai.request.model")
    if model is None:
        raise _Invalid(
            "gen_ai.response.model", "missing: neither gen_ai.response.model nor gen_ai.request.model"
        )
    raw_provider = _first_text(attributes, "gen_ai.provider.name", "gen_ai.system")
    provider = _provider_id(raw_provider) if raw_provider else provider_from_model(model)
    if provider is None:
        raise _Invalid("gen_ai.provider.name", f"missing, and the model {model!r} does not tell the provider")

    names = {provider, (raw_provider or "").lower()}
    family = provider_from_model(model)
    cache = counts["cache_read_tokens"] + counts["cache_write_tokens"]
    if not names.isdisjoint(mapping.exclusive_input_providers) or (
        cache > counts["input_tokens"] and "anthropic" in (provider, family)
    ):
        counts["input_tokens"] += cache
    if not names.isdisjoint(mapping.exclusive_output_providers) or (
        counts["reasoning_tokens"] > counts["output_tokens"] and "google" in (provider, family)
    ):
        counts["output_tokens"] += counts["reasoning_tokens"]
    try:
        return TokenUsage(provider=provider, model=model, **counts)
    except UsageFieldError as exc:
        key = _USAGE_ATTRIBUTES.get(exc.field, (exc.field,))[0]
        raise _Invalid(key, exc.message) from None


def _first_text(attributes: dict[str, Any], *keys: str) -> str | None:
    key = next((k for k in keys if k in attributes), None)
    return None if key is None else _text(attributes[key], key)


def _provider_id(name: str) -> str:
    name = name.strip().lower()
    return _PROVIDER_IDS.get(name, name)


def _outcome(raw: Mapping[str, Any], key: str) -> str:
    outcome = _text(raw, key)
    if outcome not in OUTCOMES:
        raise _Invalid(key, f"must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
    return outcome


def _metadata(
    span: Mapping[str, Any],
    trace_id: str,
    span_id: str,
    attributes: dict[str, Any],
    resource_attributes: dict[str, Any],
) -> dict[str, str]:
    metadata = {"source": "otlp", "trace_id": trace_id, "span_id": span_id}
    if isinstance(span.get("name"), str) and span["name"]:
        metadata["span_name"] = span["name"][:_MAX_METADATA_VALUE]
    for key in _METADATA_ATTRIBUTES:
        value = attributes.get(key, resource_attributes.get(key, {})).get("stringValue")
        if isinstance(value, str) and value:
            metadata[key] = value[:_MAX_METADATA_VALUE]
    return metadata


# ---- OTLP JSON values -------------------------------------------------------------------------


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}.{key} must be an array" if where else f"{key} must be an array")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be an object")
    return value


def _attributes(owner: Mapping[str, Any]) -> dict[str, Any]:
    """Attribute key → its raw AnyValue object (decoded only when read; the last duplicate wins)."""
    items = owner.get("attributes")
    if items is None:
        return {}
    if not isinstance(items, list):
        raise _Invalid("attributes", "must be an array")
    attributes: dict[str, Any] = {}
    for n, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
            raise _Invalid(f"attributes[{n}]", "must be an object with a string key")
        value = item.get("value")
        attributes[item["key"]] = value if isinstance(value, Mapping) else {}
    return attributes


def _count(raw: Mapping[str, Any], key: str) -> int:
    """A token count from `intValue` (a string or a number), or an integral `doubleValue`."""
    double = raw.get("doubleValue")
    if "intValue" in raw:
        value = raw["intValue"]
        if isinstance(value, str) and _INT.fullmatch(value):
            value = int(value)
    elif (
        isinstance(double, float | int)
        and not isinstance(double, bool)
        and math.isfinite(double)
        and (double == int(double))
    ):
        value = int(double)
    else:
        raise _Invalid(key, f"expected an integer, got {_kind(raw)}")
    try:
        return check_count(key, value)
    except UsageFieldError as exc:
        raise _Invalid(key, exc.message) from None


def _text(raw: Mapping[str, Any], key: str) -> str:
    """A non-empty string from `stringValue`; an `intValue` (a numeric id) is taken as its digits."""
    value = raw.get("stringValue")
    if isinstance(value, str):
        if not value.strip():
            raise _Invalid(key, "must not be empty")
        return value
    number = raw.get("intValue")
    if isinstance(number, int) and not isinstance(number, bool):
        return str(number)
    if isinstance(number, str) and _INT.fullmatch(number):
        return str(int(number))
    raise _Invalid(key, f"expected a string, got {_kind(raw)}")


def _kind(raw: Mapping[str, Any]) -> str:
    if not raw:
        return "an empty value"
    name, value = next(iter(raw.items()))
    return f"{name} {str(value)[:40]!r}"


def _hex_id(value: Any, size: int, name: str) -> str:
    """A trace or span id as lowercase hex; base64 (the plain protobuf JSON mapping) is accepted."""
    if isinstance(value, str) and len(value) == 2 * size and _HEX.fullmatch(value):
        raw = bytes.fromhex(value)
    else:
        try:
            raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != size:
            raise _Invalid(name, f"expected {2 * size} hex digits, got {str(value)[:48]!r}")
    if not any(raw):
        raise _Invalid(name, "must not be all zeros")
    return raw.hex()


def _id_or_none(value: Any, size: int) -> str | None:
    try:
        return _hex_id(value, size, "id")
    except _Invalid:
        return None


def _end_time(value: Any) -> str:
    """`endTimeUnixNano` (a decimal string or a number) as RFC 3339 UTC with microseconds."""
    if isinstance(value, str) and value.isdigit():
        nanos = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        nanos = value
    else:
        raise _Invalid("endTimeUnixNano", f"expected nanoseconds since the epoch, got {str(value)[:32]!r}")
    try:
        if nanos <= 0:
            raise ValueError
        moment = datetime.fromtimestamp(nanos // 1_000_000_000, UTC)
    except (ValueError, OverflowError, OSError):
        raise _Invalid("endTimeUnixNano", f"{nanos} is not a time after 1970") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos % 1_000_000_000 // 1000:06d}Z"


# ---- protobuf ---------------------------------------------------------------------------------


def decode_protobuf(body: bytes) -> dict[str, Any]:
    """An `application/x-protobuf` ExportTraceServiceRequest as the OTLP JSON shape (hex ids).

    Needs the `opentelemetry-proto` package (and its `protobuf` dependency).
    """
    try:
        from google.protobuf.json_format import MessageToDict
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("decoding OTLP protobuf needs the opentelemetry-proto package") from exc
    try:
        message = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise ValueError(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    decoded: dict[str, Any] = MessageToDict(message, use_integers_for_enums=True)
    for resource_spans in decoded.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                _ids_to_hex(span)
                for link in span.get("links", []):
                    _ids_to_hex(link)
    return decoded


def _ids_to_hex(item: dict[str, Any]) -> None:
    # The protobuf JSON mapping writes bytes as base64; OTLP JSON writes ids as hex.
    for key in ("traceId", "spanId", "parentSpanId"):
        if item.get(key):
            item[key] = base64.b64decode(item[key]).hex()
