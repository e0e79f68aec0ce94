"""The ingest log: accepted events held in a NATS JetStream stream until loaders store them.

With `TASKMETER_INGEST_LOG=nats://host:4222`, `POST /v1/events` validates a batch as always and
publishes each valid event as one message (`publish`), answering 202 once JetStream acknowledged
every one; `taskmeter loader` processes (`metering.events.loader`) write the stream into the database.
The database may be away meanwhile: the log holds what was accepted.

- Subject: `<subject>.<tenant id>.<digest of the event id>`. One subject per event lets the API
  tell a pending event (still in the log) from an unknown one with a direct get of the subject's
  last message (`holds`), without an index of its own. Event ids are any text; the digest keeps
  subjects to the characters NATS allows.
- `Nats-Msg-Id`: `<tenant id>.<digest of the event id>.<digest of the content>`. A retry of the
  same event within the stream's duplicate window is absorbed by JetStream (the acknowledgement
  says `duplicate`); the same id with other content is not, so that the loader can tell it is a
  conflict rather than JetStream dropping it silently. Past the window, the database's unique
  key on (tenant, event id) decides, as it does for direct ingestion.
- The stream keeps messages until the loaders acknowledge them (work-queue retention), on disk
  (file storage), with no size or age limit that would drop an unloaded event: past the
  server's limits a publish fails (503, retry) rather than an accepted event being discarded.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from metering.core.errors import InvalidInput, TaskmeterError
from metering.core.event_columns import DIGEST
from metering.events.ingest import Batch, Prepared, prepare_rows
from metering.events.schemas import TimeWindow

MSG_ID = "Nats-Msg-Id"
# Pending acknowledgements one connection keeps in flight: a whole 10,000-event batch and then some.
MAX_PENDING_PUBLISHES = 65_536


class LogUnavailable(TaskmeterError):
    """The log did not acknowledge a whole batch in time: nothing is promised, retry it."""

    status_code = 503
    error = "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "2"})


@dataclass(frozen=True)
class LogConfig:
    """Where the log is and how its stream and the loaders' consumer are set up."""

    url: str
    stream: str = "TASKMETER_EVENTS"
    subject: str = "taskmeter.events"
    duplicate_window: float = 300.0
    publish_timeout: float = 10.0
    max_deliver: int = 10
    consumer: str = "loader"
    ack_wait: float = 30.0  # a loader that holds messages longer (a database outage) says so

    @property
    def subjects(self) -> str:
        return f"{self.subject}.>"


@dataclass(frozen=True)
class Published:
    """What JetStream said of a batch: appended, or a copy of one it held already."""

    appended: int
    duplicates: int


def id_digest(event_id: str) -> str:
    return hashlib.blake2b(event_id.encode(), digest_size=12).hexdigest()


def subject_of(config: LogConfig, tenant_id: int, event_id: str) -> str:
    return f"{config.subject}.{tenant_id}.{id_digest(event_id)}"


def message_id(tenant_id: int, event_id: str, content_hash: str) -> str:
    return f"{tenant_id}.{id_digest(event_id)}.{content_hash}"


def envelope(tenant_id: int, accepted_us: int, event: dict[str, Any], key_id: int | None = None) -> bytes:
    """A message's body: the validated event, its tenant and when the API accepted it (the
    loader validates and stores it as of that instant), and the id of the API key that sent it
    (`key`, absent when unknown: the loader stores it with the event, as direct ingestion does)."""
    body: dict[str, Any] = {"tenant": tenant_id, "accepted_us": accepted_us, "event": event}
    if key_id is not None:
        body["key"] = key_id
    return orjson.dumps(body)


def stream_config(config: LogConfig) -> StreamConfig:
    return StreamConfig(
        name=config.stream,
        subjects=[config.subjects],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        duplicate_window=config.duplicate_window,
        allow_direct=True,
    )


def consumer_config(config: LogConfig) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=config.consumer,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=config.ack_wait,
        max_deliver=config.max_deliver,
        max_ack_pending=50_000,
        filter_subject=config.subjects,
    )


async def connect(config: LogConfig) -> tuple[Client, JetStreamContext]:
    """A connection that reconnects for ever, and the stream, created or brought to `config`."""
    client = await nats.connect(
        config.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5
    )
    stream = client.jetstream(publish_async_max_pending=MAX_PENDING_PUBLISHES)
    await ensure_stream(stream, config)
    return client, stream


async def ensure_stream(stream: JetStreamContext, config: LogConfig) -> None:
    wanted = stream_config(config)
    try:
        await stream.stream_info(config.stream)
    except nats.js.errors.NotFoundError:
        try:
            await stream.add_stream(wanted)
            return
        except nats.js.errors.BadRequestError:  # another process created it meanwhile
            pass
    await stream.update_stream(wanted)


async def publish(
    stream: JetStreamContext,
    config: LogConfig,
    tenant_id: int,
    accepted_us: int,
    items: Sequence[tuple[dict[str, Any], str]],
    *,
    key_id: int | None = None,
) -> Published:
    """Publish (event, content digest) pairs and wait for JetStream's acknowledgement of every
    one, all within `config.publish_timeout`; else `LogUnavailable`. The messages JetStream
    acknowledged before it failed stay in the log and are loaded: the client's retry of the whole
    batch is absorbed by the duplicate window, or past it by the database's key."""
    futures: list[asyncio.Future[Any]] = []
    try:
        async with asyncio.timeout(config.publish_timeout):
            for event, digest in items:
                futures.append(
                    await stream.publish_async(
                        subject_of(config, tenant_id, event["id"]),
                        envelope(tenant_id, accepted_us, event, key_id),
                        headers={MSG_ID: message_id(tenant_id, event["id"], digest)},
                    )
                )
            acks = await asyncio.gather(*futures)
    except (TimeoutError, nats.errors.Error) as exc:
        for future in futures:
            future.cancel()
        problem = (
            "did not acknowledge every event in time"
            if isinstance(exc, TimeoutError)
            else f"failed ({type(exc).__name__})"
        )
        raise LogUnavailable(
            f"the ingest log {problem}; retry the batch: events it did hold are loaded, and their "
            "copies in the retry are recognized as duplicates"
        ) from None
    duplicates = sum(1 for ack in acks if ack.duplicate)
    return Published(appended=len(acks) - duplicates, duplicates=duplicates)


def prepare(
    batch: Batch, tenant_id: int, *, now: datetime, window: TimeWindow, atomic: bool = False
) -> tuple[list[tuple[dict[str, Any], str]], Prepared]:
    """The batch checked as `metering.events.ingest.store_events` checks it before it writes (shape,
    cross-field rules, the time window, repeats within the batch): the (event, content digest)
    pairs to publish, and the rest. With `atomic`, any rejection raises `InvalidInput`: nothing
    is published. Conflicts with stored events are the loader's to find."""
    prepared = prepare_rows(batch, tenant_id, now=now, window=window)
    if atomic and prepared.rejected:
        rejected = sorted(prepared.rejected, key=lambda r: r.index)
        raise InvalidInput(
            f"{len(rejected)} event(s) rejected; atomic=true stores nothing",
            detail=[r.model_dump() for r in rejected],
        )
    by_position = dict(zip(batch.positions, batch.events, strict=True))
    return [
        (by_position[p], row[DIGEST]) for p, row in zip(prepared.positions, prepared.rows, strict=True)
    ], prepared


async def holds(stream: JetStreamContext, config: LogConfig, tenant_id: int, event_id: str) -> bool:
    """Whether the log still holds a message for this event (accepted, not yet loaded)."""
    try:
        await stream._jsm.get_last_msg(config.stream, subject_of(config, tenant_id, event_id), direct=True)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def delete_stream(config: LogConfig) -> None:
    """Remove the stream and its consumer (tests and benchmarks use a stream of their own)."""
    client = await nats.connect(config.url, connect_timeout=5)
    try:
        await client.jetstream().delete_stream(config.stream)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await client.close()
