"""The task event, exactly as DESIGN.md states it, and the answers of ingestion.

The shape of an event (types, lengths, required fields, no unknown keys) is checked by pydantic
in one pass over a whole batch; the rules that relate fields to each other (token subsets, the
provider and model of usage events, the time window) are `event_rule_errors`, applied by
ingestion in the same loop that builds the rows, whichever way the events came (HTTP batch,
CloudEvents, OTLP, JSONL).

Times. Every layer (Python's datetime, pandas' nanosecond timestamps, PostgreSQL's dates, the
tenant-local days and months of every IANA zone) can represent any instant in
[`REPRESENTABLE_FROM`, `REPRESENTABLE_UNTIL`); an event is accepted only inside the narrower
`TimeWindow`: not before its `earliest` (a setting, default 2000-01-01T00:00:00Z) and not more
than `future_tolerance` after now. The rollup sets aside (`metering.rollup.quarantine`) a stored event
outside the representable span, which only an event stored before these bounds existed can be.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NotRequired, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, with_config
from taskmeter_client.extract import MAX_TOKENS
from typing_extensions import TypedDict

from metering.core.times import REPRESENTABLE_FROM, REPRESENTABLE_UNTIL, rfc3339
from metering.core.vocabulary import EVENT_TOKEN_FIELDS

EventType = Literal[
    "usage", "task.started", "task.completed", "task.failed", "task.cancelled",
    "task.reopened", "task.accepted", "task.rejected",  # outcome truth: DESIGN.md, pricing.outcomes
]  # fmt: skip
EVENT_TYPES: tuple[str, ...] = get_args(EventType)  # the rollup sets aside any other (metering.rollup.quarantine)
TEXT_FIELDS = ("id", "customer", "task", "task_type", "provider", "model", "actor", "agent")
ATTRIBUTION_FIELDS = ("actor", "agent")  # who the work ran for, and which of their agents did it
SCOPE_FIELDS = ("customer", "actor", "agent", "task_type")  # what a budget's scope may name
DEFAULT_FUTURE_TOLERANCE = timedelta(days=7)
NUL = "\x00"  # PostgreSQL cannot store it in text
DEFAULT_EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_FUTURE_TOLERANCE = timedelta(days=3650)

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
    type: EventType
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
    cache_write_1h_tokens: NotRequired[Tokens]  # the 1-hour cache writes: a subset of cache_write_tokens
    reasoning_tokens: NotRequired[Tokens]
    actor: NotRequired[Text | None]
    agent: NotRequired[Text | None]
    metadata: NotRequired[Annotated[dict[MetaKey, MetaValue], Field(max_length=64)] | None]


@dataclass(frozen=True)
class TimeWindow:
    """The event times ingestion accepts: from `earliest` to `future_tolerance` after now."""

    earliest: datetime = DEFAULT_EARLIEST_EVENT_TIME
    future_tolerance: timedelta = DEFAULT_FUTURE_TOLERANCE

    def __post_init__(self) -> None:
        if self.earliest.tzinfo is None or not REPRESENTABLE_FROM <= self.earliest < REPRESENTABLE_UNTIL:
            raise ValueError(f"the earliest event time must be an aware instant from {rfc3339(REPRESENTABLE_FROM)}")
        if not timedelta(0) <= self.future_tolerance <= MAX_FUTURE_TOLERANCE:
            raise ValueError(f"the future tolerance must be between 0 and {MAX_FUTURE_TOLERANCE.days} days")

    def latest(self, now: datetime) -> datetime:
        return min(now + self.future_tolerance, REPRESENTABLE_UNTIL - timedelta(microseconds=1))

    def describe(self) -> str:
        return f"events are accepted from {rfc3339(self.earliest)} to {_days(self.future_tolerance)} after now"


DEFAULT_WINDOW = TimeWindow()


def _days(span: timedelta) -> str:
    days = span / timedelta(days=1)
    text = f"{days:g}"
    return f"{text} day" if text == "1" else f"{text} days"


def event_rule_errors(
    event: dict[str, Any], time_us: int, earliest_us: int, latest_us: int, window: TimeWindow
) -> list[tuple[str, str]]:
    """The cross-field rules of DESIGN.md, as (field, message) pairs; empty when the event is valid.
    `earliest_us` and `latest_us` are the window's bounds (inclusive) at the time of ingestion."""
    errors: list[tuple[str, str]] = []
    if time_us > latest_us:
        errors.append(("time", f"is more than {_days(window.future_tolerance)} in the future: {window.describe()}"))
    elif time_us < earliest_us:
        errors.append(("time", f"is before {rfc3339(window.earliest)}: {window.describe()}"))
    get = event.get
    for field in TEXT_FIELDS:
        value = get(field)
        if value is not None and NUL in value:  # PostgreSQL cannot store it; refused on SQLite alike
            errors.append((field, "must not contain NUL characters"))
    for field in ATTRIBUTION_FIELDS:
        value = get(field)
        if value is not None and NUL not in value and _CONTROL.search(value):
            errors.append((field, "must not contain control characters (tabs, line breaks, U+0001-U+001F, U+007F)"))
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
        for field in EVENT_TOKEN_FIELDS:
            if get(field, 0):
                errors.append((field, "token counts are only allowed on usage events"))
    if cache_read > input_tokens:
        errors.append(("cache_read_tokens", "cache_read_tokens must not exceed input_tokens (input_tokens includes cache reads)"))
    elif cache_read + cache_write > input_tokens:
        errors.append((
            "cache_write_tokens",
            "cache_read_tokens + cache_write_tokens must not exceed input_tokens (input_tokens includes cache reads and writes)",
        ))  # fmt: skip
    if get("cache_write_1h_tokens", 0) > cache_write:
        errors.append((
            "cache_write_1h_tokens",
            "cache_write_1h_tokens must not exceed cache_write_tokens (cache_write_tokens includes the 1-hour writes)",
        ))  # fmt: skip
    if reasoning > output_tokens:
        errors.append(("reasoning_tokens", "reasoning_tokens must not exceed output_tokens (output_tokens includes reasoning)"))
    return errors


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def event_scope(event: Mapping[str, Any]) -> dict[str, str | None]:
    """What a budget's scope can match an event on (`SCOPE_FIELDS`): its customer, actor, agent
    and task type, None where the event gives none. An event counts for its own actor and agent
    (a usage event's spend belongs to whoever it names, not to the task's other events)."""
    return {field: event.get(field) for field in SCOPE_FIELDS}


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
class QuarantineNote(BaseModel):
    id: int  # the quarantine entry (GET /v1/quarantine)
    reason: str


class StoredEvent(BaseModel):
    """An event as stored: normalized to UTC, defaults filled in, with its ingest sequence number.

    `time` is null only for an event stored before event times had bounds whose time no calendar
    can show (before year 1, after 9999); `quarantine` says when the rollup set the event aside.
    """

    model_config = ConfigDict(frozen=True)

    seq: int
    id: str
    type: str
    time: datetime | None
    customer: str
    task: str
    task_type: str | None = None
    provider: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    actor: str | None = None
    agent: str | None = None
    metadata: dict[str, str] | None = None
    quarantine: QuarantineNote | None = None


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


LOG_NOTE = (
    "accepted into the ingest log; loaders store the events shortly. Duplicates and conflicts with "
    "events stored before are decided then: GET /v1/events/{id} shows each event's state"
)


class LogIngestResult(IngestResult):
    """The answer of `POST /v1/events` through the ingest log (202): `accepted` events are held
    by the log; `duplicates` counts repeats within the batch and copies of events the log held
    already (a retry); `conflicts` and `rejected` are the batch's own, as without the log."""

    note: str = LOG_NOTE


EventStateName = Literal["pending", "stored", "duplicate", "conflict", "quarantined"]


class EventState(BaseModel):
    """Where an event is, through the ingest log: `pending` (the log holds it, the database not
    yet), `stored`, `duplicate` (stored; the id's latest message repeated it), `conflict` (stored
    with other content; the id's latest message was dropped), `quarantined` (the loader could not
    store it: `detail` says why). `event` is the stored event when there is one."""

    id: str
    state: EventStateName
    detail: str | None = None
    decided_at: datetime | None = None
    event: StoredEvent | None = None
