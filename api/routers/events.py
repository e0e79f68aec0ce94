"""POST /v1/events: a JSON array of task events, or CloudEvents (structured or batch mode),
as they are or gzip-compressed."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import TypeAdapter
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.bodies import RawBody, decoded, media_type, parse_json
from api.deps import IngestOrVerdict, NowDep, ReadScope, SessionDep, SettingsDep
from api.errors import responses
from api.ingest_log import LogLink
from api.settings import Settings
from metering.adapters import cloudevents
from metering.core.db import is_unavailable
from metering.core.errors import InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType
from metering.core.tenants import Principal
from metering.events import ingest_log
from metering.events.ingest import (
    Batch,
    Prepared,
    find_event,
    store_events,
    to_us,
    validate_body,
    validate_items,
)
from metering.events.loader import state_of
from metering.events.schemas import (
    EventIn,
    EventState,
    FieldError,
    IngestResult,
    LogIngestResult,
    RejectedEvent,
    StoredEvent,
)
from metering.events.verdicts import check_verdicts

_EVENT_SCHEMA = TypeAdapter(EventIn).json_schema()

router = APIRouter(tags=["events"])

JSON = "application/json"
_CLOUDEVENTS_TYPES = (cloudevents.STRUCTURED_MEDIA_TYPE, cloudevents.BATCH_MEDIA_TYPE)
MEDIA_TYPES = (JSON, *_CLOUDEVENTS_TYPES)
_CLOUDEVENT_SCHEMA = {
    "type": "object",
    "description": "A CloudEvent 1.0: `subject` is the customer, `data` holds the task and its usage.",
    "required": ["specversion", "id", "source", "type", "subject", "data"],
}


_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {"schema": {"type": "array", "items": _EVENT_SCHEMA, "maxItems": 10000}},
            cloudevents.STRUCTURED_MEDIA_TYPE: {"schema": _CLOUDEVENT_SCHEMA},
            cloudevents.BATCH_MEDIA_TYPE: {"schema": {"type": "array", "items": _CLOUDEVENT_SCHEMA}},
        },
    }
}


@router.post(
    "/v1/events", response_model=IngestResult, responses=responses(400, 413, 415), openapi_extra=_BODY_SCHEMA
)
def post_events(
    request: Request,
    body: RawBody,
    principal: IngestOrVerdict,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    atomic: Annotated[bool, Query(description="store nothing unless every event is valid")] = False,
) -> IngestResult:
    """Ingest a batch. Valid events are stored even when others are rejected, unless `atomic`.

    Replays are idempotent: an event whose id is already stored is counted as a duplicate, or as a
    conflict (listed in `rejected`) when its content differs.

    With `Content-Type: application/cloudevents+json` (one CloudEvent) or
    `application/cloudevents-batch+json` (an array), the body is CloudEvents as OpenMeter reads
    them (`metering.adapters.cloudevents`); `rejected` indices are positions in that body. Without a
    `Content-Type` the body is a JSON array of events; any other type is 415.

    With `Content-Encoding: gzip` the body is inflated first, within the same size limit.
    """
    batch = read_batch(request, body, settings, now)
    check_sender(session, principal, batch)
    return store_events(
        session,
        principal.tenant.id,
        batch,
        now=now,
        atomic=atomic,
        window=settings.event_window,
        key_id=principal.key_id,
    )


def check_sender(session: Session, principal: Principal, batch: Batch) -> None:
    """What the key may send, the same whether or not the ingest log is on: an ingest key
    anything, a verdict key its customer's verdicts on its customer's tasks only."""
    if principal.customer is not None:
        check_verdicts(session, principal.tenant.id, principal.customer, batch)


def read_batch(request: Request, body: bytes, settings: Settings, now: datetime) -> Batch:
    """The body's events, validated (the same whether or not the ingest log is on)."""
    kind = media_type(request) or JSON
    if kind not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"send events as {JSON} (an array of events), {cloudevents.STRUCTURED_MEDIA_TYPE} or "
            f"{cloudevents.BATCH_MEDIA_TYPE}, not {kind!r}",
            detail={"accepted": list(MEDIA_TYPES)},
        )
    body = decoded(body, request.headers.get("content-encoding", ""), limit=settings.max_body_bytes, accepted=("gzip",))
    if kind in _CLOUDEVENTS_TYPES:
        batch = cloudevents_batch(body, kind, settings, now)
    else:
        try:
            batch = validate_body(body, max_events=settings.max_batch_events)
        except PayloadTooLarge as exc:
            exc.message += f" and {settings.max_body_bytes:,} bytes"
            raise
    return batch


def cloudevents_batch(body: bytes, content_type: str, settings: Settings, now: datetime) -> Batch:
    """CloudEvents converted and validated; every position and rejection refers to the body."""
    payload = parse_json(body)
    count = len(payload) if isinstance(payload, list) else 1
    if count > settings.max_batch_events:
        raise PayloadTooLarge(
            f"{count:,} events in one batch; a batch may hold at most {settings.max_batch_events:,} "
            f"events and {settings.max_body_bytes:,} bytes"
        )
    try:
        converted = cloudevents.from_body(payload, content_type, received_at=now)
    except ValueError as exc:
        raise InvalidInput(str(exc), detail=[{"field": "body", "message": str(exc)}]) from None
    batch = validate_items(converted.events)
    original = converted.positions
    rejected = [r.model_copy(update={"index": original[r.index]}) for r in batch.rejected] + [
        RejectedEvent(index=r["index"], id=r["id"], errors=[FieldError(**e) for e in r["errors"]])
        for r in converted.rejected
    ]
    return Batch(events=batch.events, positions=[original[p] for p in batch.positions], rejected=rejected)


@router.get("/v1/events/{event_id}", response_model=StoredEvent, responses=responses(404))
def get_event(event_id: str, principal: ReadScope, session: SessionDep) -> StoredEvent:
    """One stored event of the caller's tenant (to check that an event arrived)."""
    row = find_event(session, principal.tenant.id, event_id)
    if row is None:
        raise NotFound(f"no event {event_id!r}")
    return StoredEvent(**row)


# --- through the ingest log (TASKMETER_INGEST_LOG; metering.events.ingest_log) ------------------------
# The app includes `log_router` instead of `router` when the setting is on.

log_router = APIRouter(tags=["events"])


@log_router.post(
    "/v1/events",
    status_code=202,
    response_model=LogIngestResult,
    responses=responses(400, 413, 415),
    openapi_extra=_BODY_SCHEMA,
)
async def post_events_to_log(
    request: Request,
    body: RawBody,
    principal: IngestOrVerdict,
    settings: SettingsDep,
    now: NowDep,
    atomic: Annotated[bool, Query(description="publish nothing unless every event is valid")] = False,
) -> LogIngestResult:
    """Ingest a batch through the ingest log: 202 once the log holds every valid event.

    Validation is the same as without the log (and `atomic` refuses the whole batch on any
    invalid event). The events are stored by the loaders shortly after; an event whose id is
    stored already is a duplicate or a conflict then, shown by `GET /v1/events/{id}`.

    503 with `Retry-After` when the log did not acknowledge the whole batch in time: retry the
    batch; what the log did hold is stored once, whatever the retries.

    A verdict key is checked as without the log, against the database (its customer's tasks):
    while the database is away its batches are refused, an ingest key's are not.
    """
    tenant_id = principal.tenant.id

    def accept() -> tuple[list[tuple[dict[str, Any], str]], Prepared]:
        batch = read_batch(request, body, settings, now)
        with Session(request.app.state.engine) as session:  # connects only for a verdict key
            check_sender(session, principal, batch)
        return ingest_log.prepare(batch, tenant_id, now=now, window=settings.event_window, atomic=atomic)

    items, prepared = await run_in_threadpool(accept)
    link: LogLink = request.app.state.ingest_log
    published = await ingest_log.publish(
        link.stream, link.config, tenant_id, to_us(now), items, key_id=principal.key_id
    )
    return LogIngestResult(
        accepted=published.appended,
        duplicates=prepared.duplicates + published.duplicates,
        conflicts=prepared.conflicts,
        rejected=sorted(prepared.rejected, key=lambda r: r.index),
    )


@log_router.get("/v1/events/{event_id}", response_model=EventState, responses=responses(404))
async def get_event_state(event_id: str, principal: ReadScope, request: Request) -> EventState:
    """One event of the caller's tenant and its state: pending (the log holds it, not yet stored),
    stored, duplicate, conflict or quarantined (see the `state` field). 404: neither the log nor
    the database has it (never sent, or rejected when sent)."""
    tenant_id, engine = principal.tenant.id, request.app.state.engine
    link: LogLink = request.app.state.ingest_log

    def lookup() -> EventState | None:
        with Session(engine) as session:
            return state_of(session, tenant_id, event_id)

    # The database first, then the log, then the database again: an event loaded between the
    # first two looks is found by the third.
    try:
        found = await run_in_threadpool(lookup)
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        if await ingest_log.holds(link.stream, link.config, tenant_id, event_id):
            return EventState(id=event_id, state="pending")
        raise
    if found is None and await ingest_log.holds(link.stream, link.config, tenant_id, event_id):
        return EventState(id=event_id, state="pending")
    found = found or await run_in_threadpool(lookup)
    if found is None:
        raise NotFound(f"no event {event_id!r}")
    return found
