"""Ingestion: validate, deduplicate on (tenant, id), append to `events`.

Deduplication is the database's unique constraint and an insert that ignores conflicts (never
"check, then insert"), so concurrent replays of one batch store each event exactly once. When an
insert stores fewer rows than it was given, the stored digests of the batch's ids tell duplicates
(same content) from conflicts (other content under a stored id), which are reported, never
silently dropped.

Speed: a batch's shape is validated by pydantic in one call over the whole JSON array; the rows
are inserted with one `executemany` (SQLite) or COPY and one `INSERT ... SELECT` (PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Connection, Engine, select
from sqlalchemy.orm import Session

from metering.core.db import (
    ingest_lock_key,
    inserted_by_this_transaction,
    tenant_lock,
    wait_for_holders,
    write_rows,
)
from metering.core.errors import InvalidInput, PayloadTooLarge, TaskmeterError
from metering.core.event_columns import DIGEST, INGESTED, INSERT_COLUMNS
from metering.core.tables import events, quarantine
from metering.events.schemas import (
    DEFAULT_WINDOW,
    EventIn,
    FieldError,
    IngestResult,
    RejectedEvent,
    TimeWindow,
    event_rule_errors,
)
from metering.spend import counters as spend

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UTF8_BOM = b"\xef\xbb\xbf"
_ONE_US = timedelta(microseconds=1)
# EventIn is the shape validated; the validated events are handled as plain dicts from here on
_BATCH = cast("TypeAdapter[list[dict[str, Any]]]", TypeAdapter(list[EventIn]))
_ONE = cast("TypeAdapter[dict[str, Any]]", TypeAdapter(EventIn))
_LOOKUP_CHUNK = 500



class MalformedJSON(TaskmeterError):
    status_code = 400
    error = "malformed_json"


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch, exact."""
    return (moment - EPOCH) // _ONE_US


def from_us(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(micros))


def from_us_or_none(micros: int) -> datetime | None:
    """The instant, or None where Python cannot represent it (before year 1, after 9999: only an
    event stored before event times had bounds)."""
    try:
        return from_us(micros)
    except OverflowError:
        return None


@dataclass
class Batch:
    """A batch after shape validation: valid events with their positions, and the rejections."""

    events: list[dict[str, Any]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    rejected: list[RejectedEvent] = field(default_factory=list)


# --- validation -----------------------------------------------------------------------------


def validate_body(body: bytes, *, max_events: int | None = None) -> Batch:
    """A request body that must be a JSON array of events (UTF-8; a byte order mark is ignored)."""
    body = body.removeprefix(UTF8_BOM)
    try:
        batch = _BATCH.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        root = [e for e in errors if not e["loc"]]
        if root:
            raise _body_error(body, root[0]) from None
        items = json.loads(body)
        _check_count(len(items), max_events)
        return validate_lines([json.dumps(item).encode() for item in items])
    _check_count(len(batch), max_events)
    return Batch(events=batch, positions=list(range(len(batch))))


def validate_lines(lines: Sequence[bytes]) -> Batch:
    """Events given as one JSON document each (JSONL lines, or items of a decoded array)."""
    try:
        batch = _BATCH.validate_json(b"[" + b",".join(lines) + b"]")
        return Batch(events=batch, positions=list(range(len(batch))))
    except ValidationError:
        pass  # some are invalid: find out which, one by one
    out = Batch()
    for position, line in enumerate(lines):
        try:
            out.events.append(_ONE.validate_json(line))
            out.positions.append(position)
        except ValidationError as exc:
            errors = [_field_error(e) for e in exc.errors(include_url=False)]
            out.rejected.append(RejectedEvent(index=position, id=_raw_id(line), errors=errors))
    return out


def validate_items(items: Sequence[Any]) -> Batch:
    """Events given as Python objects (decoded JSON, or dicts built by an adapter)."""
    return validate_lines([_dumps(item) for item in items])


def _dumps(item: Any) -> bytes:
    try:
        return orjson.dumps(item)
    except TypeError:  # integers past 64 bits, odd types: let validation name the field
        return json.dumps(item, default=str).encode()


def _check_count(count: int, max_events: int | None) -> None:
    if max_events is not None and count > max_events:
        raise PayloadTooLarge(f"{count:,} events in one batch; a batch may hold at most {max_events:,} events")


def encoding_problem(body: bytes) -> str | None:
    """Why a body is not UTF-8 text, in words a client can act on; None when it is UTF-8."""
    if body.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in body[:4]:
        return "the body is UTF-16 or UTF-32: send JSON encoded as UTF-8"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"the body is not UTF-8 (byte 0x{body[exc.start]:02x} at position {exc.start}): send JSON encoded as UTF-8"
    return None


def _body_error(body: bytes, error: Any) -> TaskmeterError:
    if error["type"] == "json_invalid":
        if (problem := encoding_problem(body)) is not None:
            return MalformedJSON(problem)
        try:
            json.loads(body)
        except json.JSONDecodeError as exc:
            return MalformedJSON(
                f"malformed JSON at line {exc.lineno}, column {exc.colno} (byte {exc.pos}): {exc.msg}",
                detail={"line": exc.lineno, "column": exc.colno, "position": exc.pos},
            )
        except (UnicodeDecodeError, RecursionError) as exc:
            return MalformedJSON(f"malformed JSON: {exc}")
        return MalformedJSON(f"malformed JSON: {error['msg']}")
    got = type(error.get("input")).__name__
    got = {"dict": "an object", "str": "a string", "int": "a number", "float": "a number", "NoneType": "null"}.get(got, got)
    return InvalidInput(
        "the body must be a JSON array of events",
        detail=[{"field": "body", "message": f"expected an array of events, got {got}"}],
    )


def _field_error(error: Any) -> FieldError:
    field_name = ".".join(str(part) for part in error["loc"]) or "event"
    message = str(error["msg"]).removeprefix("Value error, ")
    kind = error["type"]
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a known event field"
    elif kind in ("dict_type", "model_type") and field_name == "event":
        message = "each event must be a JSON object"
    elif kind == "json_invalid":
        field_name, message = "line", f"malformed JSON: {message.removeprefix('Invalid JSON: ')}"
    return FieldError(field=field_name, message=message)


def _raw_id(line: bytes) -> str | None:
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if isinstance(item, dict) and isinstance(item.get("id"), str):
        return item["id"][:128]
    return None


# --- storing --------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A batch checked against the cross-field rules: rows to insert and everything else."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    attribution: list[tuple[str | None, str | None]] = field(default_factory=list)  # (actor, agent) per row
    rejected: list[RejectedEvent] = field(default_factory=list)
    duplicates: int = 0
    conflicts: int = 0


def prepare_rows(batch: Batch, tenant_id: int, *, now: datetime, window: TimeWindow = DEFAULT_WINDOW) -> Prepared:
    """Apply the cross-field rules (the time window among them) and build the rows; repeats of an
    id within the batch are duplicates (same content) or conflicts (other content) of its first
    occurrence."""
    ingested_us = to_us(now)
    earliest_us, latest_us = to_us(window.earliest), to_us(window.latest(now))
    out = Prepared(rejected=list(batch.rejected))
    first_in_batch: dict[str, str] = {}
    for event, position in zip(batch.events, batch.positions, strict=True):
        time_us = (event["time"] - EPOCH) // _ONE_US
        rule_errors = event_rule_errors(event, time_us, earliest_us, latest_us, window)
        if rule_errors:
            errors = [FieldError(field=f, message=m) for f, m in rule_errors]
            out.rejected.append(RejectedEvent(index=position, id=event["id"], errors=errors))
            continue
        row = _row(event, time_us, tenant_id, ingested_us)
        earlier = first_in_batch.get(event["id"])
        if earlier is None:
            first_in_batch[event["id"]] = row[DIGEST]
            out.rows.append(row)
            out.positions.append(position)
            out.attribution.append((event.get("actor"), event.get("agent")))
        elif earlier == row[DIGEST]:
            out.duplicates += 1
        else:
            out.conflicts += 1
            out.rejected.append(_conflict(position, event["id"]))
    return out


def store_events(
    session: Session | Connection,
    tenant_id: int,
    batch: Batch,
    *,
    now: datetime,
    window: TimeWindow = DEFAULT_WINDOW,
    atomic: bool = False,
    key_id: int | None = None,
) -> IngestResult:
    """Check the cross-field rules, append the valid events, report the rest. The caller commits.
    `key_id`: the API key that sent them, kept with each event as evidence."""
    prepared = prepare_rows(batch, tenant_id, now=now, window=window)
    return insert_prepared(session, tenant_id, prepared, atomic=atomic, key_id=key_id)


def insert_prepared(
    session: Session | Connection, tenant_id: int, prepared: Prepared, *, atomic: bool = False, key_id: int | None = None
) -> IngestResult:
    """Append prepared rows; report duplicates and conflicts. The caller commits.

    With `atomic`, any rejection or conflict raises `InvalidInput`, and the caller's rollback
    leaves nothing stored.
    """
    rows, rejected = prepared.rows, list(prepared.rejected)
    if atomic and rejected:
        raise _atomic_failure(sorted(rejected, key=lambda r: r.index))
    inserted = _insert_ignoring_conflicts(session, rows, key_id)
    _count_spend(session, tenant_id, prepared, inserted)
    duplicates, conflicts = prepared.duplicates, prepared.conflicts
    if inserted < len(rows):
        # Every row not inserted is stored already: with our digest (a duplicate) or another.
        stored = _stored_digests(session, tenant_id, [row[1] for row in rows])
        stored_conflicts = 0
        for row, position in zip(rows, prepared.positions, strict=True):
            if stored[row[1]] != row[DIGEST]:
                stored_conflicts += 1
                rejected.append(_conflict(position, row[1]))
        conflicts += stored_conflicts
        duplicates += len(rows) - inserted - stored_conflicts
    rejected.sort(key=lambda r: r.index)
    if atomic and rejected:
        raise _atomic_failure(rejected)
    return IngestResult(accepted=inserted, duplicates=duplicates, conflicts=conflicts, rejected=rejected)


def ingest_events(
    session: Session | Connection,
    tenant_id: int,
    items: Sequence[Any],
    *,
    now: datetime,
    atomic: bool = False,
    window: TimeWindow = DEFAULT_WINDOW,
) -> IngestResult:
    """Validate and store a batch of events given as Python objects (adapters, demo, tests)."""
    batch = validate_items(items)
    return store_events(session, tenant_id, batch, now=now, atomic=atomic, window=window)


def _row(event: dict[str, Any], time_us: int, tenant_id: int, ingested_us: int) -> tuple[Any, ...]:
    """The `events` row (in INSERT_COLUMNS order), with the digest of the normalized content.

    The digest covers actor and agent only when the event gives one: an event without them has
    the digest it had before events had them, so its replay is still a duplicate."""
    get = event.get
    metadata = get("metadata")
    actor, agent = get("actor"), get("agent")
    values = (
        event["id"], event["type"], time_us, event["customer"], event["task"], get("task_type"),
        get("provider"), get("model"), get("input_tokens", 0), get("output_tokens", 0),
        get("cache_read_tokens", 0), get("cache_write_tokens", 0), get("reasoning_tokens", 0),
        orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS).decode() if metadata else None,
    )  # fmt: skip
    one_hour = get("cache_write_1h_tokens", 0)
    hashed = values if actor is None and agent is None else (*values, actor, agent)
    # Hashed only when given, so that events stored before the field existed replay as duplicates.
    digest = hashlib.blake2b(orjson.dumps((*hashed, one_hour) if one_hour else hashed), digest_size=16).hexdigest()
    return (tenant_id, *values[:-1], actor, agent, values[-1], digest, ingested_us, one_hour)


def _insert_ignoring_conflicts(session: Session | Connection, rows: list[tuple[Any, ...]], key_id: int | None = None) -> int:
    """Insert the rows, skipping ids already stored; returns how many were inserted."""
    if not rows:
        return 0
    columns: tuple[str, ...] = INSERT_COLUMNS
    if key_id is not None:
        rows, columns = [(*row, key_id) for row in rows], (*INSERT_COLUMNS, "key_id")
    connection = session.connection() if isinstance(session, Session) else session
    # Shared with other ingesters, exclusive for the rollup's read of the newest seq: a sequence
    # number the rollup sees is never overtaken by an earlier one committing later.
    tenant_lock(connection, ingest_lock_key(rows[0][0]), shared=True)
    keys = ("tenant_id", "event_id")
    return write_rows(connection, events, columns, rows, on_conflict="ignore", keys=keys)


def _count_spend(session: Session | Connection, tenant_id: int, prepared: Prepared, inserted: int) -> None:
    """Count the rows this insert stored (not the duplicates) into the budget counters, in its
    transaction (`metering.spend.counters`); nothing when a follower counts the tenant's events
    (deferred counting, `metering.spend.deferred`)."""
    if not inserted:
        return
    connection = session.connection() if isinstance(session, Session) else session
    rows, attribution = prepared.rows, prepared.attribution
    if inserted < len(rows):
        ours = _stored_now(connection, tenant_id, [row[1] for row in rows], inserted)
        chosen = [i for i, row in enumerate(rows) if row[1] in ours]
        rows, attribution = [rows[i] for i in chosen], [attribution[i] for i in chosen]
    spend.count_ingested(connection, tenant_id, rows, attribution, now=from_us(rows[0][INGESTED]))


def _stored_now(connection: Connection, tenant_id: int, event_ids: list[str], inserted: int) -> set[str]:
    """Which of the ids this transaction's insert stored. PostgreSQL: the rows whose xmin is this
    transaction. SQLite: the one writer's insert took the newest `inserted` seqs (AUTOINCREMENT
    never hands a seq out twice), so they are the ids' highest seqs."""
    ours: list[tuple[int, str]] = []
    for start in range(0, len(event_ids), _LOOKUP_CHUNK):
        chunk = event_ids[start : start + _LOOKUP_CHUNK]
        query = select(events.c.seq, events.c.event_id).where(events.c.tenant_id == tenant_id, events.c.event_id.in_(chunk))
        mine = inserted_by_this_transaction(connection, events)
        if mine is not None:
            query = query.where(mine)
        ours.extend((seq, event_id) for seq, event_id in connection.execute(query))
    ours.sort(reverse=True)
    return {event_id for _, event_id in ours[:inserted]}


def _stored_digests(session: Session | Connection, tenant_id: int, event_ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(event_ids), _LOOKUP_CHUNK):
        chunk = event_ids[start : start + _LOOKUP_CHUNK]
        query = select(events.c.event_id, events.c.content_hash).where(
            events.c.tenant_id == tenant_id, events.c.event_id.in_(chunk)
        )
        found.update({event_id: digest for event_id, digest in session.execute(query)})
    return found


def _conflict(position: int, event_id: str) -> RejectedEvent:
    message = "conflict: an event with this id was already stored with different content"
    return RejectedEvent(index=position, id=event_id, errors=[FieldError(field="id", message=message)])


def _atomic_failure(rejected: list[RejectedEvent]) -> InvalidInput:
    return InvalidInput(
        f"{len(rejected)} event(s) rejected; atomic=true stores nothing",
        detail=[r.model_dump() for r in rejected],
    )


def find_event(session: Session | Connection, tenant_id: int, event_id: str) -> dict[str, Any] | None:
    """A stored event as the client sent it (normalized), with its ingest sequence number; one
    the rollup moved to the quarantine (`metering.rollup.quarantine`) comes with its entry and reason."""
    row = session.execute(
        select(events).where(events.c.tenant_id == tenant_id, events.c.event_id == event_id)
    ).one_or_none()
    note = None
    if row is None:
        row = session.execute(
            select(quarantine)
            .where(quarantine.c.tenant_id == tenant_id, quarantine.c.event_id == event_id)
            .order_by(quarantine.c.id.desc())
            .limit(1)
        ).first()
        if row is None:
            return None
        note = {"id": row.id, "reason": row.reason}
    return {
        "seq": row.seq, "id": row.event_id, "type": row.type, "time": from_us_or_none(row.time_us), "quarantine": note,
        "customer": row.customer, "task": row.task, "task_type": row.task_type, "provider": row.provider,
        "model": row.model, "input_tokens": row.input_tokens, "output_tokens": row.output_tokens,
        "cache_read_tokens": row.cache_read_tokens, "cache_write_tokens": row.cache_write_tokens,
        "reasoning_tokens": row.reasoning_tokens, "cache_write_1h_tokens": row.cache_write_1h_tokens,
        "actor": row.actor, "agent": row.agent,
        "metadata": orjson.loads(row.metadata) if row.metadata else None,
    }  # fmt: skip


def committed_through(engine: Engine, tenant_id: int) -> int:
    """The highest seq below which every event of the tenant is committed (on PostgreSQL a
    transaction can commit seq 11 while seq 10 is still in flight): the newest seq committed,
    once the ingest transactions in flight when it was read have ended.

    Every seq up to that newest one was handed out before the read, to a batch that took the
    tenant's ingest lock shared before it inserted and holds it until it ends: so once the
    transactions holding the lock just after the read have ended (`wait_for_holders`), no seq
    up to it is still in flight. Batches that start meanwhile go on: they are not queued behind
    an exclusive request, as under `newest_committed`'s lock, and their seqs are higher. On
    SQLite a committed read is enough (one writer at a time)."""
    with engine.connect() as connection:
        newest = _newest_seq(connection, tenant_id)
        connection.rollback()
        wait_for_holders(connection, ingest_lock_key(tenant_id))
    return newest


def newest_committed(connection: Connection, tenant_id: int) -> int:
    """`committed_through` in the caller's transaction, which then holds the tenant's ingest lock
    alone until it ends: no batch of the tenant is stored meanwhile (on SQLite, take the write
    lock first for the same effect)."""
    tenant_lock(connection, ingest_lock_key(tenant_id))
    return _newest_seq(connection, tenant_id)


def _newest_seq(connection: Connection, tenant_id: int) -> int:
    # Newest first along the primary key: stops at the tenant's latest event instead of scanning.
    query = select(events.c.seq).where(events.c.tenant_id == tenant_id).order_by(events.c.seq.desc()).limit(1)
    return int(connection.execute(query).scalar() or 0)
