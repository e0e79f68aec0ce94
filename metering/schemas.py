"""The task event, exactly as DESIGN.md states it, and the answers of ingestion.

The shape of an event (types, lengths, required fields, no unknown keys) is checked by pydantic
in one pass over a whole batch; the rules that relate fields to each other (token subsets, the
provider and model of usage events, the future limit) are `event_rule_errors`, applied by
ingestion in the same loop that builds the rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, NotRequired

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, with_config
from taskmeter_client.extract import MAX_TOKENS
from typing_extensions import TypedDict

EVENT_TYPES = ("usage", "task.started", "task.completed", "task.failed", "task.cancelled")
TERMINAL_TYPES = ("task.completed", "task.failed", "task.cancelled")
TEXT_FIELDS = ("id", "customer", "task", "task_type", "provider", "model")
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
DEFAULT_FUTURE_TOLERANCE = timedelta(days=7)
NUL = "\x00"  # PostgreSQL cannot store it in text

Text = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
MetaValue = Annotated[str, StringConstraints(max_length=1024)]


@with_config(ConfigDict(strict=True, extra="forbid"))
class EventIn(TypedDict):
    """One task event as clients send it. Strict: numbers are JSON integers, no unknown keys.

    `time` is RFC 3339 with an offset (`Z` or `+hh:mm`); it is normalized to UTC.
    """

    id: Name
    type: Literal["usage", "task.started", "task.completed", "task.failed", "task.cancelled"]
    time: AwareDatetime
    customer: Text
    task: Text
    task_type: NotRequired[Name | None]
    provider: NotRequired[Annotated[str, StringConstraints(min_length=1, max_length=64)] | None]
    model: NotRequired[Name | None]
    input_tokens: NotRequired[Tokens]
    output_tokens: NotRequired[Tokens]
    cache_read_tokens: NotRequired[Tokens]
    cache_write_tokens: NotRequired[Tokens]
    reasoning_tokens: NotRequired[Tokens]
    metadata: NotRequired[Annotated[dict[MetaKey, MetaValue], Field(max_length=64)] | None]


def event_rule_errors(event: dict[str, Any], time_us: int, latest_us: int, tolerance: timedelta) -> list[tuple[str, str]]:
    """The cross-field rules of DESIGN.md, as (field, message) pairs; empty when the event is valid."""
    errors: list[tuple[str, str]] = []
    if time_us > latest_us:
        errors.append(("time", f"is more than {tolerance.days} days in the future"))
    get = event.get
    for field in TEXT_FIELDS:
        value = get(field)
        if value is not None and NUL in value:  # PostgreSQL cannot store it; refused on SQLite alike
            errors.append((field, "must not contain NUL characters"))
    errors += _metadata_nul_errors(get("metadata"))
    input_tokens, output_tokens = get("input_tokens", 0), get("output_tokens", 0)
    cache_read, cache_write = get("cache_read_tokens", 0), get("cache_write_tokens", 0)
    reasoning = get("reasoning_tokens", 0)
    if event["type"] == "usage":
        if get("provider") is None:
            errors.append(("provider", "is required on usage events"))
        if get("model") is None:
            errors.append(("model", "is required on usage events"))
    else:
        for field in TOKEN_FIELDS:
            if get(field, 0):
                errors.append((field, "token counts are only allowed on usage events"))
    if cache_read > input_tokens:
        errors.append(("cache_read_tokens", "cache_read_tokens must not exceed input_tokens (input_tokens includes cache reads)"))
    elif cache_read + cache_write > input_tokens:
        errors.append((
            "cache_write_tokens",
            "cache_read_tokens + cache_write_tokens must not exceed input_tokens (input_tokens includes cache reads and writes)",
        ))  # fmt: skip
    if reasoning > output_tokens:
        errors.append(("reasoning_tokens", "reasoning_tokens must not exceed output_tokens (output_tokens includes reasoning)"))
    return errors


def _metadata_nul_errors(metadata: dict[str, str] | None) -> list[tuple[str, str]]:
    """`metadata.<key>` for each key or value with a NUL; in a key the NUL is named as JSON
    writes it (`\\u0000`), so the field names no character the client cannot see."""
    if not metadata:
        return []
    found: list[tuple[str, str]] = []
    for key, value in metadata.items():
        if NUL in key:
            found.append(("metadata." + key.replace(NUL, "\\u0000"), "the key must not contain NUL characters"))
        elif NUL in value:
            found.append((f"metadata.{key}", "must not contain NUL characters"))
    return found


class StoredEvent(BaseModel):
    """An event as stored: normalized to UTC, defaults filled in, with its ingest sequence number."""

    model_config = ConfigDict(frozen=True)

    seq: int
    id: str
    type: str
    time: datetime
    customer: str
    task: str
    task_type: str | None = None
    provider: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    metadata: dict[str, str] | None = None


class FieldError(BaseModel):
    field: str
    message: str


class RejectedEvent(BaseModel):
    index: int
    id: str | None
    errors: list[FieldError]


class IngestResult(BaseModel):
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: list[RejectedEvent] = []
