"""POST /v1/events: a JSON array of task events."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import TypeAdapter

from api.deps import IngestScope, NowDep, ReadScope, SessionDep, SettingsDep
from api.errors import responses
from metering.errors import NotFound, PayloadTooLarge
from metering.ingest import find_event, store_events, validate_body
from metering.schemas import EventIn, IngestResult, StoredEvent

_EVENT_SCHEMA = TypeAdapter(EventIn).json_schema()

router = APIRouter(tags=["events"])


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it passes the configured size."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(_too_large(request))
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(_too_large(request))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(request: Request) -> str:
    settings = request.app.state.settings
    return (
        f"a batch may hold at most {settings.max_batch_events:,} events and "
        f"{settings.max_body_bytes:,} bytes; split it into smaller batches"
    )


RawBody = Annotated[bytes, Depends(read_body)]


@router.post(
    "/v1/events",
    response_model=IngestResult,
    responses=responses(400, 413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "array", "items": _EVENT_SCHEMA, "maxItems": 10000}}
            },
        }
    },
)
def post_events(
    body: RawBody,
    principal: IngestScope,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    atomic: Annotated[bool, Query(description="store nothing unless every event is valid")] = False,
) -> IngestResult:
    """Ingest a batch. Valid events are stored even when others are rejected, unless `atomic`.

    Replays are idempotent: an event whose id is already stored is counted as a duplicate, or as a
    conflict (listed in `rejected`) when its content differs.
    """
    try:
        batch = validate_body(body, max_events=settings.max_batch_events)
    except PayloadTooLarge as exc:
        exc.message += f" and {settings.max_body_bytes:,} bytes"
        raise
    return store_events(
        session,
        principal.tenant.id,
        batch,
        now=now,
        atomic=atomic,
        future_tolerance=timedelta(days=settings.future_tolerance_days),
    )


@router.get("/v1/events/{event_id}", response_model=StoredEvent, responses=responses(404))
def get_event(event_id: str, principal: ReadScope, session: SessionDep) -> StoredEvent:
    """One stored event of the caller's tenant (to check that an event arrived)."""
    row = find_event(session, principal.tenant.id, event_id)
    if row is None:
        raise NotFound(f"no event {event_id!r}")
    return StoredEvent(**row)
