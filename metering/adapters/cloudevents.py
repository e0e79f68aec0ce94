"""CloudEvents 1.0 (JSON) → taskmeter event dicts, the way OpenMeter reads them.

Structured mode (`application/cloudevents+json`, one object) and batch mode
(`application/cloudevents-batch+json`, an array). Each CloudEvent maps as follows:

| CloudEvent | taskmeter |
|---|---|
| `id` | `id` |
| `time` | `time` (RFC 3339, normalized by ingestion); absent: `received_at` when given |
| `subject` | `customer` |
| `type` | `task.started`, `task.completed`, `task.failed`, `task.cancelled` as they are, also with a reverse-DNS prefix (`com.acme.task.completed`); any other type (`usage`, OpenMeter's `prompt`, `tokens`, `llm.usage`, ...) is a `usage` event |
| `source` | `metadata["ce.source"]` (and `metadata["ce.type"]`, the original type) |
| `data.task`, `data.task_type` | `task` (required), `task_type` |
| `data.provider`, `data.model` | `provider`, `model` (required on usage) |
| `data.input_tokens` or `data.prompt_tokens` | `input_tokens`, cache reads and writes included |
| `data.output_tokens` or `data.completion_tokens` | `output_tokens`, reasoning included |
| `data.cache_read_tokens`, `data.cache_write_tokens`, `data.cache_write_1h_tokens`, `data.reasoning_tokens` | the same |
| `data.tokens` with `data.type` `input`/`prompt`/`system` or `output`/`completion` | OpenMeter's one-count-per-event form |
| `data.usage` / `data.usage_metadata` / `data.usageMetadata` | a provider's raw usage object, normalized by `taskmeter_client.extract` (`data.provider` and `data.model` then label it) |
| `data.metadata` | `metadata` (an object of strings) |
| extension attributes `actor`, `agent` | `actor`, `agent` (CloudEvents extension names are lowercase letters and digits) |

Token counts are JSON integers or decimal strings (OpenMeter's examples send `"123456"`). Other
`data` keys are ignored. A CloudEvent that breaks the CloudEvents spec (missing or wrong
`specversion`, no `id`, `source` or `type`, non-JSON `datacontenttype`, `data_base64`) or lacks
what taskmeter needs is rejected with its index and reasons; the others still convert.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

from taskmeter_client.extract import FieldError, TokenUsage, UsageFieldError, check_count, extract_usage

__all__ = [
    "BATCH_MEDIA_TYPE",
    "STRUCTURED_MEDIA_TYPE",
    "CloudEventsResult",
    "RejectedCloudEvent",
    "from_batch",
    "from_body",
    "from_structured",
]

STRUCTURED_MEDIA_TYPE = "application/cloudevents+json"
BATCH_MEDIA_TYPE = "application/cloudevents-batch+json"
SPEC_VERSION = "1.0"
TASK_TYPES = ("task.started", "task.completed", "task.failed", "task.cancelled", "task.reopened", "task.accepted", "task.rejected")

# taskmeter field → the `data` keys that may carry it, taskmeter's own name first.
_TOKEN_KEYS = {
    "input_tokens": ("input_tokens", "prompt_tokens"),
    "output_tokens": ("output_tokens", "completion_tokens"),
    "cache_read_tokens": ("cache_read_tokens",),
    "cache_write_tokens": ("cache_write_tokens",),
    "reasoning_tokens": ("reasoning_tokens",),
    "cache_write_1h_tokens": ("cache_write_1h_tokens",),
}
_OPENMETER_DIRECTIONS = {
    "input": "input_tokens",
    "prompt": "input_tokens",
    "system": "input_tokens",
    "output": "output_tokens",
    "completion": "output_tokens",
}
_RAW_USAGE_KEYS = ("usage", "usage_metadata", "usageMetadata")
_DIGITS = re.compile(r"\d+", re.ASCII)  # whole text (fullmatch), ASCII digits only


class RejectedCloudEvent(TypedDict):
    index: int
    id: str | None
    errors: list[FieldError]


@dataclass(slots=True)
class CloudEventsResult:
    """The converted events, the input index of each, and the rejected CloudEvents."""

    events: list[dict[str, Any]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    rejected: list[RejectedCloudEvent] = field(default_factory=list)


def from_body(payload: Any, content_type: str, *, received_at: datetime | None = None) -> CloudEventsResult:
    """Dispatch on the request's media type (parameters such as `charset` are ignored)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == STRUCTURED_MEDIA_TYPE:
        return from_structured(payload, received_at=received_at)
    if media_type == BATCH_MEDIA_TYPE:
        return from_batch(payload, received_at=received_at)
    raise ValueError(f"expected {STRUCTURED_MEDIA_TYPE} or {BATCH_MEDIA_TYPE}, got {content_type!r}")


def from_structured(payload: Any, *, received_at: datetime | None = None) -> CloudEventsResult:
    """One CloudEvent in structured mode; a body that is not a JSON object is a ValueError."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"a structured CloudEvent is one JSON object; send arrays as {BATCH_MEDIA_TYPE}")
    return _convert_all([payload], received_at)


def from_batch(payload: Any, *, received_at: datetime | None = None) -> CloudEventsResult:
    """A CloudEvents batch; a body that is not a JSON array is a ValueError."""
    if not isinstance(payload, list):
        raise ValueError("a CloudEvents batch is a JSON array of CloudEvents")
    return _convert_all(payload, received_at)


def _convert_all(items: list[Any], received_at: datetime | None) -> CloudEventsResult:
    fallback_time = None if received_at is None else _rfc3339(received_at)
    result = CloudEventsResult()
    for index, item in enumerate(items):
        errors: list[FieldError] = []
        event = _convert(item, fallback_time, errors)
        if errors or event is None:
            ce_id = item.get("id") if isinstance(item, Mapping) else None
            result.rejected.append(
                {"index": index, "id": ce_id if isinstance(ce_id, str) else None, "errors": errors}
            )
        else:
            result.events.append(event)
            result.positions.append(index)
    return result


def _convert(item: Any, fallback_time: str | None, errors: list[FieldError]) -> dict[str, Any] | None:
    def error(field_name: str, message: str) -> None:
        errors.append({"field": field_name, "message": message})

    if not isinstance(item, Mapping):
        error("event", "each CloudEvent must be a JSON object")
        return None
    if "specversion" not in item:
        error("specversion", f"is required (CloudEvents {SPEC_VERSION})")
    elif item["specversion"] != SPEC_VERSION:
        error("specversion", f"must be {SPEC_VERSION!r}, got {item['specversion']!r}")
    ce_id = _required_text(item, "id", errors)
    source = _required_text(item, "source", errors)
    ce_type = _required_text(item, "type", errors)
    customer = _required_text(item, "subject", errors, "is required: the customer billed for this event")
    attribution = {name: value for name in ("actor", "agent") if (value := _extension_text(item, name, errors)) is not None}

    time = item.get("time")
    if time is None:
        time = fallback_time
        if time is None:
            error("time", "is required")
    elif not isinstance(time, str):
        error("time", "must be an RFC 3339 string")

    content_type = item.get("datacontenttype")
    if content_type is not None and not _is_json(content_type):
        error("datacontenttype", f"must be application/json, got {content_type!r}")
    if "data_base64" in item:
        error("data_base64", "binary data is not supported; send data as a JSON object")
    data = item.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, Mapping):
        error("data", "must be a JSON object")
        data = {}

    event_type = _event_type(ce_type) if ce_type else None
    task = _required_text(data, "task", errors, "is required: the task (job) this event belongs to", "data.")
    task_type = _optional_text(data, "task_type", errors)
    metadata = _metadata(data, errors)
    usage = None
    if event_type == "usage":
        usage = _usage(data, errors)
    elif event_type is not None:
        for key in (k for keys in _TOKEN_KEYS.values() for k in keys):
            if data.get(key):
                error(f"data.{key}", "token counts are only allowed on usage events")
    if errors:
        return None

    event: dict[str, Any] = {
        "id": ce_id,
        "type": event_type,
        "time": time,
        "customer": customer,
        "task": task,
    }
    if task_type is not None:
        event["task_type"] = task_type
    if usage is not None:
        event.update(usage.event_fields())
    event |= attribution
    event["metadata"] = metadata | {"source": "cloudevents", "ce.source": source, "ce.type": ce_type}
    return event


def _event_type(ce_type: str) -> str:
    for task_type in TASK_TYPES:
        if ce_type == task_type or ce_type.endswith(f".{task_type}"):
            return task_type
    return "usage"


def _usage(data: Mapping[str, Any], errors: list[FieldError]) -> TokenUsage | None:
    provider = _optional_text(data, "provider", errors)
    model = _optional_text(data, "model", errors)
    raw = next((key for key in _RAW_USAGE_KEYS if data.get(key) is not None), None)
    if raw is not None:
        flat = [key for keys in _TOKEN_KEYS.values() for key in keys if key in data] + (
            ["tokens"] if "tokens" in data else []
        )
        if flat:
            errors.append(
                {"field": f"data.{flat[0]}", "message": f"give either data.{raw} or token fields, not both"}
            )
            return None
        try:
            return extract_usage(data, provider=provider, model=model)
        except UsageFieldError as exc:
            errors.append(exc.as_field_error("data."))
            return None

    if provider is None:
        errors.append({"field": "data.provider", "message": "is required on usage events"})
    if model is None:
        errors.append({"field": "data.model", "message": "is required on usage events"})
    counts = _counts(data, errors)
    if counts is None or provider is None or model is None:
        return None
    try:
        return TokenUsage(provider=provider, model=model, **counts)
    except UsageFieldError as exc:
        errors.append(exc.as_field_error("data."))
        return None


def _counts(data: Mapping[str, Any], errors: list[FieldError]) -> dict[str, int] | None:
    before = len(errors)
    counts: dict[str, int] = {}
    for name, keys in _TOKEN_KEYS.items():
        present = [key for key in keys if key in data]
        if len(present) > 1:
            errors.append(
                {
                    "field": f"data.{present[1]}",
                    "message": f"give data.{present[0]} or data.{present[1]}, not both",
                }
            )
        counts[name] = _count(data, present[0], errors) if present else 0

    if "tokens" in data:  # OpenMeter: one count per event, its direction in data.type
        direction = data.get("type")
        target = _OPENMETER_DIRECTIONS.get(direction) if isinstance(direction, str) else None
        if target is None:
            errors.append(
                {
                    "field": "data.type",
                    "message": "with data.tokens, must be one of "
                    f"{', '.join(_OPENMETER_DIRECTIONS)}; got {direction!r}",
                }
            )
        elif any(key in data for key in _TOKEN_KEYS[target]):
            errors.append({"field": "data.tokens", "message": f"give data.tokens or data.{target}, not both"})
        else:
            counts[target] = _count(data, "tokens", errors)
    return counts if len(errors) == before else None


def _count(data: Mapping[str, Any], key: str, errors: list[FieldError]) -> int:
    value = data[key]
    if value is None:
        return 0
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    try:
        return check_count(f"data.{key}", value)
    except UsageFieldError as exc:
        errors.append(exc.as_field_error())
        return 0


def _metadata(data: Mapping[str, Any], errors: list[FieldError]) -> dict[str, str]:
    metadata = data.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        errors.append({"field": "data.metadata", "message": "must be an object of strings"})
        return {}
    return dict(metadata)


def _required_text(
    obj: Mapping[str, Any], key: str, errors: list[FieldError], missing: str = "is required", prefix: str = ""
) -> str | None:
    value = obj.get(key)
    if value is None:
        errors.append({"field": f"{prefix}{key}", "message": missing})
        return None
    if not isinstance(value, str) or not value.strip():
        errors.append({"field": f"{prefix}{key}", "message": "must be a non-empty string"})
        return None
    return value


def _extension_text(item: Mapping[str, Any], key: str, errors: list[FieldError]) -> str | None:
    """An optional extension attribute that must be a string when given (JSON null: absent)."""
    if item.get(key) is None:
        return None
    return _required_text(item, key, errors)


def _optional_text(data: Mapping[str, Any], key: str, errors: list[FieldError]) -> str | None:
    if data.get(key) is None:
        return None
    return _required_text(data, key, errors, prefix="data.")


def _is_json(content_type: Any) -> bool:
    if not isinstance(content_type, str):
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in ("application/json", "text/json") or media_type.endswith("+json")


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
