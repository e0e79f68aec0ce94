"""The quarantine: stored events that the rollup cannot process, set aside with their reason.

Ingestion refuses such events (`metering.events.schemas`), but one stored before those rules existed,
or planted by hand, would otherwise stop its tenant's rollup for good (every run failing on the
same row) and, through it, the tenant's invoices and reports. Instead the rollup checks each
chunk it reads with a few vectorized comparisons (`unprocessable`, no Python per row), leaves
the rows that fail out of the summary, and moves them from `events` to `quarantine` in the
transaction that advances the watermark (`move`). The rest of the tenant's events roll up,
close and report as usual; a quarantined event is never billed and never lost.

An admin lists them (`listing`), then either releases one (`release`: it goes back through
validation and ingestion, and stays if still invalid) or drops it (`drop`); the callers record
either in the audit log.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import Connection, DateTime, delete, func, insert, literal, select
from sqlalchemy.orm import Session

from metering.core.errors import InvalidInput, NotFound
from metering.core.tables import events, quarantine
from metering.core.times import REPRESENTABLE_FROM, REPRESENTABLE_UNTIL, rfc3339
from metering.core.vocabulary import EVENT_TOKEN_FIELDS, ONE_HOUR_FIELD, TOKEN_FIELDS
from metering.events.ingest import from_us, from_us_or_none, ingest_events, to_us
from metering.events.schemas import EVENT_TYPES, MAX_TOKENS, TimeWindow

FROM_US, UNTIL_US = to_us(REPRESENTABLE_FROM), to_us(REPRESENTABLE_UNTIL)
# Why a row is set aside, by code (0: it is fine). The first that applies is given.
REASONS = {
    1: f"time outside {rfc3339(REPRESENTABLE_FROM)} to {rfc3339(REPRESENTABLE_UNTIL)}, the span every layer can represent",
    2: f"a token count is negative or above {MAX_TOKENS:,}",
    3: "token subsets exceed their totals (cache tokens above input_tokens, or reasoning above output_tokens)",
    4: "a usage event without provider or model",
    5: "an unknown event type",
}
COPIED = (
    "tenant_id", "seq", "event_id", "type", "time_us", "customer", "task", "task_type", "provider", "model",
    *TOKEN_FIELDS, "actor", "agent", "metadata", "content_hash", "ingested_us", ONE_HOUR_FIELD,
)  # fmt: skip
_CHUNK = 500


def unprocessable(frame: pd.DataFrame) -> np.ndarray:
    """Per row of a frame of events (the rollup's columns), the code of the first reason it
    cannot be rolled up (`REASONS`), 0 when it can. Vectorized: a handful of comparisons over
    integer columns and the codes of the categorical text columns."""
    time_us = frame["time_us"].to_numpy(dtype=np.int64)
    tokens = {name: frame[name].to_numpy(dtype=np.int64) for name in EVENT_TOKEN_FIELDS}
    kind = _categorical(frame["type"])
    usage_code = kind.categories.get_indexer(["usage"])[0]
    usage = kind.codes == usage_code if usage_code >= 0 else np.zeros(len(frame), dtype=bool)
    known = np.append(kind.categories.isin(EVENT_TYPES), False)  # code -1 (NULL) looks up the last
    low, high = functools.reduce(np.minimum, tokens.values()), functools.reduce(np.maximum, tokens.values())
    conditions = [
        (time_us < FROM_US) | (time_us >= UNTIL_US),
        (low < 0) | (high > MAX_TOKENS),
        (tokens["cache_read_tokens"] + tokens["cache_write_tokens"] > tokens["input_tokens"])
        | (tokens["reasoning_tokens"] > tokens["output_tokens"])
        | (tokens["cache_write_1h_tokens"] > tokens["cache_write_tokens"]),
        usage & ((_categorical(frame["provider"]).codes < 0) | (_categorical(frame["model"]).codes < 0)),
        ~known[kind.codes],
    ]
    if not np.logical_or.reduce(conditions).any():
        return np.zeros(len(frame), dtype=np.int8)
    return np.select(conditions, list(REASONS), default=0).astype(np.int8)


def _categorical(column: pd.Series) -> pd.Categorical:
    """The rollup reads text columns as categoricals; anything else is made one."""
    return column.array if isinstance(column.dtype, pd.CategoricalDtype) else pd.Categorical(column)


def split(frame: pd.DataFrame, found: dict[int, list[int]]) -> pd.DataFrame:
    """The rows of `frame` the rollup can process; the seqs of the others are added to `found`
    by reason code."""
    codes = unprocessable(frame)
    if not codes.any():
        return frame
    seqs = frame["seq"].to_numpy(dtype=np.int64)
    for code in np.unique(codes[codes > 0]).tolist():
        found.setdefault(code, []).extend(seqs[codes == code].tolist())
    return frame.loc[codes == 0].reset_index(drop=True)


def move(connection: Connection, tenant_id: int, found: dict[int, list[int]], *, now: datetime) -> int:
    """Move the tenant's events with these seqs from `events` to `quarantine`, each with its
    reason, in the caller's transaction. Returns how many moved."""
    moved = 0
    for code, seqs in sorted(found.items()):
        reason = literal(REASONS[code])
        at = literal(now, DateTime(timezone=True))
        for start in range(0, len(seqs), _CHUNK):
            where = (events.c.tenant_id == tenant_id, events.c.seq.in_(seqs[start : start + _CHUNK]))
            rows = select(*[events.c[name] for name in COPIED], reason, at).where(*where).order_by(events.c.seq)
            connection.execute(insert(quarantine).from_select([*COPIED, "reason", "quarantined_at"], rows))
            moved += connection.execute(delete(events).where(*where)).rowcount
    return moved


# --- what an admin sees and does ------------------------------------------------------------


def count(session: Session | Connection, tenant_id: int) -> int:
    return int(session.execute(select(func.count()).select_from(quarantine).where(quarantine.c.tenant_id == tenant_id)).scalar_one())


def listing(session: Session | Connection, tenant_id: int, *, limit: int, before: int | None = None) -> list[dict[str, Any]]:
    """The tenant's quarantined events, newest first; `before` (a quarantine id) pages back."""
    query = select(quarantine).where(quarantine.c.tenant_id == tenant_id)
    if before is not None:
        query = query.where(quarantine.c.id < before)
    return [_view(row) for row in session.execute(query.order_by(quarantine.c.id.desc()).limit(limit))]


def tenant_of(session: Session, quarantine_id: int) -> int:
    """The tenant of a quarantine entry (for the command line, which names entries by id)."""
    found = session.execute(select(quarantine.c.tenant_id).where(quarantine.c.id == quarantine_id)).scalar()
    if found is None:
        raise NotFound(f"no quarantined event {quarantine_id}")
    return int(found)


def release(session: Session, tenant_id: int, quarantine_id: int, *, now: datetime, window: TimeWindow) -> dict[str, Any]:
    """Send a quarantined event back through validation and ingestion. Accepted (or already
    stored with the same content): it leaves the quarantine, and the next rollup counts it.
    Still invalid: it stays, and InvalidInput names why. The caller commits."""
    row = _row(session, tenant_id, quarantine_id)
    if from_us_or_none(row.time_us) is None:
        problem = [{"field": "time", "message": "cannot be represented (before year 1 or after 9999)"}]
        raise InvalidInput(f"quarantined event {row.event_id!r} is still invalid; it stays in quarantine", detail=problem)
    result = ingest_events(session, tenant_id, [_as_sent(row)], now=now, window=window)
    if result.rejected:
        problems = [e.model_dump() for e in result.rejected[0].errors]
        raise InvalidInput(f"quarantined event {row.event_id!r} is still invalid; it stays in quarantine", detail=problems)
    session.execute(delete(quarantine).where(quarantine.c.id == row.id))
    return {"id": row.id, "event_id": row.event_id, "released": True, "accepted": result.accepted, "duplicates": result.duplicates}


def drop(session: Session, tenant_id: int, quarantine_id: int) -> dict[str, Any]:
    """Delete a quarantined event for good (the caller records it in the audit log). The caller commits."""
    row = _row(session, tenant_id, quarantine_id)
    session.execute(delete(quarantine).where(quarantine.c.id == row.id))
    return {"id": row.id, "event_id": row.event_id, "dropped": True, "reason": row.reason}


def _row(session: Session, tenant_id: int, quarantine_id: int) -> Any:
    row = session.execute(
        select(quarantine).where(quarantine.c.tenant_id == tenant_id, quarantine.c.id == quarantine_id).with_for_update()
    ).first()
    if row is None:
        raise NotFound(f"no quarantined event {quarantine_id}")
    return row


def _as_sent(row: Any) -> dict[str, Any]:
    """The event as a client would send it (the ingested form: defaults omitted)."""
    event: dict[str, Any] = {
        "id": row.event_id, "type": row.type, "time": rfc3339(from_us(row.time_us)),
        "customer": row.customer, "task": row.task,
    }  # fmt: skip
    for name in ("task_type", "provider", "model", "actor", "agent"):
        if row._mapping[name] is not None:
            event[name] = row._mapping[name]
    for name in EVENT_TOKEN_FIELDS:
        if row._mapping[name]:
            event[name] = row._mapping[name]
    if row.metadata:
        event["metadata"] = orjson.loads(row.metadata)
    return event


def _view(row: Any) -> dict[str, Any]:
    moment = from_us_or_none(row.time_us)
    return {
        "id": row.id, "event_id": row.event_id, "seq": row.seq, "type": row.type,
        "time": rfc3339(moment) if moment is not None else None, "time_us": row.time_us,
        "customer": row.customer, "task": row.task, "reason": row.reason,
        "quarantined_at": _aware(row.quarantined_at),
    }  # fmt: skip


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
