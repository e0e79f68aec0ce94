"""The loader: messages of the ingest log (`metering.events.ingest_log`) written into the database.

`load` stores a batch of messages in the caller's transaction with `metering.events.ingest.store_events`,
the very function `POST /v1/events` calls without the log: the same rules, the same unique key on
(tenant, event id), and whatever is hooked there (budgets' counters) follows. Each event is
stored as of the instant the API accepted it (`ingested_us` is that instant; the time window is
the one that applied then), so a late load changes nothing but when the rollup sees it.

Per message the outcome is one of:

- stored: inserted now, or by an earlier delivery of this very message (a loader killed between
  its commit and its acknowledgement): the stored row's `ingested_us` is this message's, and its
  `key_id` the key that sent it (the envelope's `key`);
- duplicate / conflict: the id was stored already from another request, with the same / other
  content; recorded in `load_verdicts` for `GET /v1/events/{id}`;
- quarantined: undecodable, invalid at load, or refused by the database on its own; kept whole in
  `log_quarantine` with the reason, and terminated in the log so it does not come round again.

`run` is the process: a durable pull consumer that any number of loaders share. It acknowledges
messages only after their transaction committed; a loader killed at any point leaves its
unacknowledged messages to be redelivered, and the database's key makes their second store a
no-op. While the database is away it keeps its messages (telling JetStream it is still working
on them, which does not count as a delivery) and retries; nothing is dropped, nothing skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import nats.errors
import orjson
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from metering.core.db import is_unavailable, unit_of_work
from metering.core.db.writes import write_rows
from metering.core.event_columns import DIGEST
from metering.core.tables import events, load_verdicts, log_quarantine
from metering.events.ingest import Batch, find_event, from_us, prepare_rows, store_events, validate_items
from metering.events.ingest_log import LogConfig, connect, consumer_config
from metering.events.schemas import DEFAULT_WINDOW, EventState, StoredEvent, TimeWindow

log = logging.getLogger("taskmeter.loader")

_CONFLICT = "conflict: an event with this id was already stored with different content"


class Outcome(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    QUARANTINED = "quarantined"


@dataclass(frozen=True)
class LogMessage:
    """What the loader needs of a message from the log."""

    data: bytes
    subject: str = ""
    stream_seq: int = 0
    delivered: int = 1


@dataclass
class _Decoded:
    index: int
    tenant_id: int
    accepted_us: int
    event: Any
    key_id: int | None = None  # the API key that sent it


def load(
    session: Session, messages: Sequence[LogMessage], *, now: datetime, window: TimeWindow = DEFAULT_WINDOW
) -> list[Outcome]:
    """Store the messages' events; record verdicts and quarantined messages. The caller commits."""
    outcomes: list[Outcome | None] = [None] * len(messages)
    poison: list[tuple[int, str]] = []
    groups: dict[tuple[int, int, int | None], list[_Decoded]] = {}
    for index, message in enumerate(messages):
        decoded = _decode(index, message)
        if isinstance(decoded, str):
            poison.append((index, decoded))
        else:  # one group per request: its events share a tenant, a key and the instant they were accepted
            groups.setdefault((decoded.tenant_id, decoded.accepted_us, decoded.key_id), []).append(decoded)
    verdicts: list[tuple[Any, ...]] = []
    for (tenant_id, accepted_us, key_id), group in groups.items():
        batch = validate_items([item.event for item in group])
        result = store_events(session, tenant_id, batch, now=from_us(accepted_us), window=window, key_id=key_id)
        for rejected in result.rejected:
            item = group[rejected.index]
            if [e.message for e in rejected.errors] == [_CONFLICT]:
                outcomes[item.index] = Outcome.CONFLICT
            else:
                reasons = "; ".join(f"{e.field}: {e.message}" for e in rejected.errors)
                poison.append((item.index, f"invalid at load: {reasons}"))
        loaded = [(item, event) for item, event in _valid(group, batch) if outcomes[item.index] is None]
        stored = _stored(session, tenant_id, [event["id"] for _, event in loaded])
        for item, event in loaded:
            ingested_us, _ = stored.get(event["id"], (accepted_us, ""))
            outcomes[item.index] = Outcome.STORED if ingested_us == accepted_us else Outcome.DUPLICATE
        for item in group:
            if outcomes[item.index] in (Outcome.DUPLICATE, Outcome.CONFLICT):
                verdict = outcomes[item.index].value  # type: ignore[union-attr]
                verdicts.append((tenant_id, item.event["id"], verdict, _digest(item, tenant_id, window), now))
    columns = ("tenant_id", "event_id", "verdict", "content_hash", "decided_at")
    write_rows(
        session.connection(),
        load_verdicts,
        columns,
        _last_per_key(verdicts),
        on_conflict="replace",
        keys=columns[:2],
    )
    for index, reason in poison:
        quarantine(session, messages[index], reason, now=now)
        outcomes[index] = Outcome.QUARANTINED
    return [outcome or Outcome.STORED for outcome in outcomes]


def quarantine(session: Session, message: LogMessage, reason: str, *, now: datetime) -> None:
    """Keep a message the loader cannot store, with the reason. The caller commits."""
    tenant_id, event_id = _names(message.data)
    session.execute(
        log_quarantine.insert().values(
            tenant_id=tenant_id,
            event_id=event_id,
            subject=message.subject[:256],
            stream_seq=message.stream_seq,
            payload=message.data,
            reason=reason[:1000],
            quarantined_at=now,
        )  # fmt: skip
    )


def _decode(index: int, message: LogMessage) -> _Decoded | str:
    """The message's parts, or why it cannot be read."""
    try:
        body = orjson.loads(message.data)
    except orjson.JSONDecodeError as exc:
        return f"undecodable: not JSON ({exc})"
    if not isinstance(body, dict):
        return "undecodable: not a JSON object"
    tenant_id, accepted_us, event = body.get("tenant"), body.get("accepted_us"), body.get("event")
    if not isinstance(tenant_id, int) or not isinstance(accepted_us, int) or not isinstance(event, dict):
        return "undecodable: needs an integer tenant, an integer accepted_us and an event object"
    if isinstance(tenant_id, bool) or isinstance(accepted_us, bool):
        return "undecodable: needs an integer tenant, an integer accepted_us and an event object"
    if not 0 < tenant_id < 2**31 or not 0 <= accepted_us < 2**62:
        return "undecodable: tenant or accepted_us out of range"
    key_id = body.get("key")
    if key_id is not None and (not _is_int(key_id) or not 0 < key_id < 2**63):
        return "undecodable: key must be a positive integer"
    return _Decoded(index, tenant_id, accepted_us, event, key_id)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid(group: list[_Decoded], batch: Batch) -> list[tuple[_Decoded, dict[str, Any]]]:
    return [(group[position], event) for event, position in zip(batch.events, batch.positions, strict=True)]


def _stored(session: Session, tenant_id: int, event_ids: list[str]) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    for start in range(0, len(event_ids), 500):
        query = select(events.c.event_id, events.c.ingested_us, events.c.content_hash).where(
            events.c.tenant_id == tenant_id, events.c.event_id.in_(event_ids[start : start + 500])
        )
        found.update({row.event_id: (row.ingested_us, row.content_hash) for row in session.execute(query)})
    return found


def _digest(item: _Decoded, tenant_id: int, window: TimeWindow) -> str:
    prepared = prepare_rows(
        validate_items([item.event]), tenant_id, now=from_us(item.accepted_us), window=window
    )
    return str(prepared.rows[0][DIGEST]) if prepared.rows else ""


def _last_per_key(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return list({(row[0], row[1]): row for row in rows}.values())


def _names(data: bytes) -> tuple[int | None, str | None]:
    """The tenant and event id of a message, as far as it can be read."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    tenant_id = body.get("tenant") if _is_int(body.get("tenant")) and 0 < body["tenant"] < 2**63 else None
    event = body.get("event")
    event_id = event.get("id") if isinstance(event, dict) and isinstance(event.get("id"), str) else None
    return tenant_id, event_id[:128] if event_id else None


# --- the process ----------------------------------------------------------------------------


@dataclass
class LoaderStats:
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    quarantined: int = 0
    batches: int = 0

    def add(self, outcomes: Sequence[Outcome]) -> None:
        self.batches += 1
        for outcome in outcomes:
            if outcome is Outcome.STORED:
                self.stored += 1
            elif outcome is Outcome.DUPLICATE:
                self.duplicates += 1
            elif outcome is Outcome.CONFLICT:
                self.conflicts += 1
            else:
                self.quarantined += 1


async def run(
    config: LogConfig,
    engine: Engine,
    *,
    clock: Callable[[], datetime],
    window: TimeWindow = DEFAULT_WINDOW,
    batch: int = 500,
    stop: asyncio.Event | None = None,
    idle_exit: float | None = None,
) -> LoaderStats:
    """Load the log into the database until `stop` is set (or, with `idle_exit`, until the log
    has had nothing for that many seconds and no message awaits an acknowledgement)."""
    stop = stop or asyncio.Event()
    stats = LoaderStats()
    client, stream = await connect(config)
    try:
        subscription = await stream.pull_subscribe(
            config.subjects, durable=config.consumer, stream=config.stream, config=consumer_config(config)
        )
        idle_since = asyncio.get_running_loop().time()
        while not stop.is_set():
            try:
                fetched = await subscription.fetch(batch, timeout=1.0)
            except TimeoutError:  # nats.errors.TimeoutError too: nothing came
                if idle_exit is not None and asyncio.get_running_loop().time() - idle_since >= idle_exit:
                    # Done only when nothing is left, nor held by another (or a killed) loader:
                    # those come back once their acknowledgement is overdue.
                    info = await subscription.consumer_info()
                    if info.num_pending == 0 and info.num_ack_pending == 0:
                        break
                continue
            except nats.errors.Error as exc:  # disconnected: the client reconnects by itself
                log.warning("the log is unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1)
                continue
            idle_since = asyncio.get_running_loop().time()
            try:
                stats.add(await _handle(config, engine, fetched, clock=clock, window=window))
                await client.flush()
            except nats.errors.Error as exc:
                # NATS went away mid-batch (the client reconnects by itself): what was not
                # acknowledged comes back after ack_wait, and storing it again is a no-op.
                log.warning("the log is unavailable (%s); carrying on once it is back", type(exc).__name__)
                await asyncio.sleep(1)
    finally:
        await client.close()
    return stats


async def _handle(
    config: LogConfig,
    engine: Engine,
    fetched: list[Any],
    *,
    clock: Callable[[], datetime],
    window: TimeWindow,
) -> list[Outcome]:
    """Store one fetch and acknowledge it: together when it can, message by message when the
    batch fails for a reason of its own; a message on its last delivery goes to the quarantine
    (every loader that took it before stopped before committing)."""
    messages = [_message(msg) for msg in fetched]
    outcomes: list[Outcome | None] = [None] * len(fetched)
    last = [i for i, m in enumerate(messages) if m.delivered >= config.max_deliver]
    if last:
        reason = f"delivered {config.max_deliver} times without being stored: every loader that took it stopped first"
        await _until_stored(
            config.ack_wait,
            fetched,
            lambda: _quarantine_each(engine, [messages[i] for i in last], reason, clock()),
        )
        for i in last:
            outcomes[i] = Outcome.QUARANTINED
    # A redelivered message is stored alone: if it is what stops loaders, it takes no other with it.
    first = [i for i, m in enumerate(messages) if outcomes[i] is None and m.delivered == 1]
    alone = [[i] for i, m in enumerate(messages) if outcomes[i] is None and m.delivered > 1]
    for indices in ([first] if first else []) + alone:
        stored = await _store(config, engine, fetched, [messages[i] for i in indices], clock, window)
        for i, outcome in zip(indices, stored, strict=True):
            outcomes[i] = outcome
    done = [outcome or Outcome.STORED for outcome in outcomes]
    for msg, outcome in zip(fetched, done, strict=True):
        await (msg.term() if outcome is Outcome.QUARANTINED else msg.ack())
    return done


async def _store(
    config: LogConfig,
    engine: Engine,
    fetched: list[Any],
    messages: list[LogMessage],
    clock: Callable[[], datetime],
    window: TimeWindow,
) -> list[Outcome]:
    def together() -> list[Outcome]:
        with unit_of_work(engine) as session:
            return load(session, messages, now=clock(), window=window)

    try:
        return await _until_stored(config.ack_wait, fetched, together)
    except Exception as exc:  # the batch failed for a reason of its own: find the message
        if len(messages) == 1:
            cause = getattr(exc, "orig", None) or exc
            reason = f"refused by the database: {type(cause).__name__}: {cause}"[:1000]
            log.warning("message %s quarantined: %s", messages[0].stream_seq, reason.splitlines()[0])
            await _until_stored(
                config.ack_wait, fetched, lambda: _quarantine_each(engine, messages, reason, clock())
            )
            return [Outcome.QUARANTINED]
        return [
            outcome
            for message in messages
            for outcome in await _store(config, engine, fetched, [message], clock, window)
        ]


def _quarantine_each(engine: Engine, messages: list[LogMessage], reason: str, now: datetime) -> list[Outcome]:
    with unit_of_work(engine) as session:
        for message in messages:
            quarantine(session, message, reason, now=now)
    return [Outcome.QUARANTINED] * len(messages)


async def _until_stored(
    ack_wait: float, fetched: list[Any], work: Callable[[], list[Outcome]]
) -> list[Outcome]:
    """Run `work` in a thread; while the database is away, keep the messages (in progress, which
    is no new delivery; often enough that JetStream never thinks the loader gone) and try again,
    waiting longer each time up to 5 s."""
    delay, said = 0.25, False
    while True:
        try:
            return await asyncio.to_thread(work)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if not said:
                log.warning(
                    "database unavailable (%s): holding %d message(s) until it is back",
                    type(exc).__name__,
                    len(fetched),
                )
                said = True
        for msg in fetched:
            await msg.in_progress()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0, ack_wait / 3)


def _message(msg: Any) -> LogMessage:
    metadata = msg.metadata
    return LogMessage(
        data=msg.data,
        subject=msg.subject,
        stream_seq=metadata.sequence.stream,
        delivered=metadata.num_delivered,
    )


# --- what GET /v1/events/{id} says ----------------------------------------------------------


def state_of(session: Session, tenant_id: int, event_id: str) -> EventState | None:
    """The event's state as far as the database knows it; None when it knows nothing of it (then
    it is pending in the log, or unknown: `metering.events.ingest_log.holds` tells which)."""
    stored = find_event(session, tenant_id, event_id)
    verdict = session.execute(
        select(load_verdicts).where(
            load_verdicts.c.tenant_id == tenant_id, load_verdicts.c.event_id == event_id
        )
    ).first()
    if stored is not None:
        event = StoredEvent(**stored)
        if verdict is None:
            return EventState(id=event_id, state="stored", event=event)
        detail = _CONFLICT if verdict.verdict == "conflict" else "a later copy of this event was a duplicate"
        return EventState(
            id=event_id, state=verdict.verdict, detail=detail, decided_at=verdict.decided_at, event=event
        )
    held = session.execute(
        select(log_quarantine.c.reason, log_quarantine.c.quarantined_at)
        .where(log_quarantine.c.tenant_id == tenant_id, log_quarantine.c.event_id == event_id)
        .order_by(log_quarantine.c.id.desc())
        .limit(1)
    ).first()
    if held is not None:
        return EventState(
            id=event_id, state="quarantined", detail=held.reason, decided_at=held.quarantined_at
        )
    return None
