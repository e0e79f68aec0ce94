"""The rollup: new events since the watermark → priced → merged into the rollup tables.

A run reads the events of one tenant past its watermark, in chunks, prices them with the
tenant's price book, summarizes them (`metering.rollup`), and writes the result and the new
watermark in ONE transaction: a run killed mid-way leaves nothing behind, and the next run does
the same work again. The watermark only moves by compare-and-set, so two concurrent runs never
both apply the same events. When the tenant's prices change, the next run re-prices the
tenant's rollup rows from their price buckets (`metering.reprice`, no event read) and then rolls
up the new events; it rebuilds the rollup from the first event only for the changes that need the
events (a tier threshold the buckets do not separate, a rollup from before the buckets, a first
run). Either way unpriced events become priced once a price is added.

A stored event that cannot be rolled up (`metering.quarantine`: a time outside what every layer
can represent, impossible token counts) is left out of the summary and moved to the quarantine
in the transaction that advances the watermark: one such event never stops a tenant's rollup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Engine, Row, select, update

from metering import month_figures, quarantine, reprice
from metering.costs import price_book, price_events, price_version, tenant_overrides
from metering.db import make_engine, tenant_lock, upsert
from metering.errors import Conflict
from metering.executors import Executor, InProcess
from metering.ingest import ingest_lock_key
from metering.price_buckets import BucketScheme, scheme_for
from metering.ratecards import PriceBook
from metering.rollup import (
    DAILY_KEYS,
    DETAIL_KEYS,
    PRICE_BUCKET_KEYS,
    Summary,
    merge_additive,
    merge_tasks,
    summarize,
)
from metering.stores import RollupStore, store_for
from metering.stores.common import ROLLUP_TABLES, key_order, stored_tasks
from metering.tables import events, rollup_state
from metering.tenants import Tenant

__all__ = ["ROLLUP_TABLES", "RollupConflict", "RollupResult", "bring_up_to_date", "key_order", "price_book", "price_version",
           "rollup_tenant", "tenant_overrides"]  # fmt: skip

DEFAULT_CHUNK = 2_000_000
UP_TO_DATE_ATTEMPTS = 5
Parts = tuple[Summary | None, dict[tuple[str, str], int], int, dict[int, list[int]]]
"""A range's summary, unpriced usage events by (provider, model), events read, and the seqs
set aside for the quarantine by reason."""


class RollupConflict(Conflict):
    """Another rollup of the tenant moved the watermark first; this run's work was discarded."""


@dataclass
class RollupResult:
    tenant: str
    events_read: int = 0
    tasks_updated: int = 0
    watermark: int = 0
    rebuilt: bool = False
    repriced: reprice.RepriceResult | None = None  # the price change applied from the rollup's rows
    unpriced_models: list[dict[str, Any]] = field(default_factory=list)
    quarantined: int = 0  # events moved to the quarantine by this run
    seconds: float = 0.0


def rollup_tenant(
    engine: Engine,
    tenant: Tenant,
    *,
    now: datetime,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int, int], None] | None = None,
    after_chunk: Callable[[int], None] | None = None,
    store: RollupStore | None = None,
    executor: Executor | None = None,
) -> RollupResult:
    """Bring the tenant's rollup tables up to the newest committed event.

    `store` reads and writes (default: the engine's database's); `executor` runs the ranges of
    seqs the backlog is split into, one per worker (default: `InProcess`, one range in this
    thread; a Dask cluster's, `metering.executors`). `progress(done, total)` reports events
    read; `after_chunk(n)` runs after each chunk is summarized (tests use it to crash a run
    mid-way); both only where the ranges run in this process.
    """
    started = time.perf_counter()
    store = store or store_for(engine)
    state, overrides = _position(engine, tenant.id, now)
    version = price_version(overrides)
    repriced = None
    if version != state.price_version and reprice.can_reprice(state, overrides):
        try:
            repriced = reprice.reprice_tenant(engine, tenant.id, state, overrides, now=now, store=store, timezone=tenant.timezone)
        except reprice.PricesMoved as conflict:
            raise RollupConflict(f"another rollup of tenant {tenant.name!r} ran at the same time; nothing was written") from conflict  # fmt: skip
        state, overrides = _position(engine, tenant.id, now)
        version = price_version(overrides)
    stored_scheme = BucketScheme.parse(state.price_buckets)
    rebuild = version != state.price_version or stored_scheme is None
    scheme = scheme_for(overrides) if rebuild or stored_scheme is None else stored_scheme
    start = 0 if rebuild else state.watermark_seq
    end = _newest_committed_seq(engine, tenant.id)
    result = RollupResult(tenant=tenant.name, watermark=state.watermark_seq, rebuilt=rebuild, repriced=repriced)
    if end <= start and not rebuild:
        result.seconds = time.perf_counter() - started
        return result

    executor = executor or InProcess()
    if executor.own_process:  # each range opens the database itself, with the same prices
        url = engine.url.render_as_string(hide_password=False)
        run = partial(_summarize_apart, url, store, tenant.id, tenant.timezone, overrides, chunk_size, scheme=scheme)
    else:
        book = PriceBook(overrides)
        run = partial(_summarize_range, engine, store, tenant.id, tenant.timezone, book, chunk_size, progress=progress, after_chunk=after_chunk, scheme=scheme)  # fmt: skip
    bounds = [start + (end - start) * i // executor.workers for i in range(executor.workers + 1)]
    # The ranges' results live only inside `_gather`: not beside the combined summary while it is written.
    summary, unpriced, result.events_read, unprocessable = _gather(executor.map(run, list(zip(bounds, bounds[1:], strict=False))))  # fmt: skip
    if executor.own_process and progress is not None:
        progress(end - start, end - start)

    with store.transaction(engine, tenant.id, replacing=summary if rebuild else None) as connection:
        moved = connection.execute(
            update(rollup_state)
            .where(
                rollup_state.c.tenant_id == tenant.id,
                rollup_state.c.watermark_seq == state.watermark_seq,
                rollup_state.c.price_version == state.price_version,
            )
            .values(
                watermark_seq=max(end, start), price_version=version, updated_at=now,
                **({"price_buckets": scheme.text, "price_settings": reprice.settings_text(overrides)} if rebuild else {}),
            )  # fmt: skip
            .execution_options(preserve_rowcount=True)
        ).rowcount
        if moved != 1:
            raise RollupConflict(f"another rollup of tenant {tenant.name!r} ran at the same time; nothing was written")  # fmt: skip
        if unprocessable:
            result.quarantined = quarantine.move(connection, tenant.id, unprocessable, now=now)
        if rebuild:
            result.tasks_updated = store.replace_tenant(connection, tenant.id, summary)
            month_figures.replace(connection, tenant.id, tenant.timezone, summary.tasks if summary is not None else None)
        elif summary is not None:
            # The touched tasks' rows before the merge: their old contribution to the month figures.
            before = stored_tasks(connection, tenant.id, summary.tasks["task"].tolist())
            result.tasks_updated = store.merge(connection, tenant.id, summary)
            after = merge_tasks(before, summary.tasks) if not before.empty else summary.tasks
            month_figures.apply(connection, tenant.id, tenant.timezone, before, after)
    if rebuild:
        store.refresh_statistics(engine)
    result.watermark = max(end, start)
    result.unpriced_models = [{"provider": p, "model": m, "events": n} for (p, m), n in sorted(unpriced.items())]  # fmt: skip
    result.seconds = time.perf_counter() - started
    return result


def bring_up_to_date(
    engine: Engine, tenant: Tenant, *, now: datetime, attempts: int = UP_TO_DATE_ATTEMPTS, executor: Executor | None = None
) -> RollupResult:
    """Roll up every event of the tenant committed before the call; the one way a use case that
    needs current usage gets it (a close, a report, a comparison, the scheduler, the demo).

    Conflict policy: a `RollupConflict` means another rollup of the tenant committed a newer
    watermark while this one ran (the compare-and-set wrote nothing). That rollup's end may
    predate events committed before this call, so it is not taken as current: the call rolls up
    again from the new watermark (usually nothing is left) and returns that run's result. The
    conflicting rollup has already committed when the conflict is seen (PostgreSQL waits on the
    row lock, SQLite on the write lock), so the retry waits for nobody. After `attempts` conflicts
    in a row, rollups racing without end, the last `RollupConflict` is raised.
    """
    for _ in range(attempts - 1):
        try:
            return rollup_tenant(engine, tenant, now=now, executor=executor)
        except RollupConflict:
            continue  # the other rollup has committed: roll up what it did not
    return rollup_tenant(engine, tenant, now=now, executor=executor)


def _summarize_range(
    engine: Engine, store: RollupStore, tenant_id: int, timezone: str, book: PriceBook, chunk_size: int, bounds: tuple[int, int], *,
    progress: Callable[[int, int], None] | None = None, after_chunk: Callable[[int], None] | None = None, own_process: bool = False,
    scheme: BucketScheme | None = None,
) -> Parts:  # fmt: skip
    """Read, price and summarize the events with start < seq <= end, chunk by chunk; the seqs of
    those that cannot be rolled up come back by reason (`metering.quarantine`), left out."""
    start, end = bounds
    summary: Summary | None = None
    unpriced: dict[tuple[str, str], int] = {}
    unprocessable: dict[int, list[int]] = {}
    read = 0
    frames = store.read_events(engine, tenant_id, start, end, chunk_size, own_process=own_process)
    for number, frame in enumerate(frames):
        last_seq = int(frame["seq"].iloc[-1])
        read += len(frame)
        frame = quarantine.split(frame, unprocessable)
        if not frame.empty:
            part = summarize(price_events(frame, book, unpriced), timezone, scheme)
            summary = part if summary is None else _combine(summary, part)
        if progress is not None:
            progress(last_seq - start, end - start)
        if after_chunk is not None:
            after_chunk(number)
    return summary, unpriced, read, unprocessable


def _summarize_apart(
    url: str, store: RollupStore, tenant_id: int, timezone: str, overrides: list[dict[str, str]], chunk_size: int, bounds: tuple[int, int],
    *, scheme: BucketScheme | None = None,
) -> Parts:  # fmt: skip
    """A range summarized in a process of its own: its own engine, the same prices."""
    engine = make_engine(url)
    try:
        return _summarize_range(engine, store, tenant_id, timezone, PriceBook(overrides), chunk_size, bounds, own_process=True, scheme=scheme)  # fmt: skip
    finally:
        engine.dispose()


def _gather(parts: Iterable[Parts]) -> Parts:
    summary: Summary | None = None
    unpriced: dict[tuple[str, str], int] = {}
    unprocessable: dict[int, list[int]] = {}
    read = 0
    for part, missing, count, set_aside in parts:
        if part is not None:
            summary = part if summary is None else _combine(summary, part)
        for key, n in missing.items():
            unpriced[key] = unpriced.get(key, 0) + n
        for code, seqs in set_aside.items():
            unprocessable.setdefault(code, []).extend(seqs)
        read += count
    return summary, unpriced, read, unprocessable


def _position(engine: Engine, tenant_id: int, now: datetime) -> tuple[Row[Any], list[dict[str, str]]]:
    """The tenant's rollup state (created at watermark 0 if it has none) and its price overrides."""
    values = {"tenant_id": tenant_id, "watermark_seq": 0, "price_version": "", "updated_at": now}
    with engine.connect() as connection:
        upsert(connection, rollup_state, values, key=["tenant_id"])
        connection.commit()
        state = connection.execute(select(rollup_state).where(rollup_state.c.tenant_id == tenant_id)).one()
        return state, tenant_overrides(connection, tenant_id)


def _newest_committed_seq(engine: Engine, tenant_id: int) -> int:
    """The highest seq below which every event of the tenant is committed: the read waits for
    ingest transactions in flight (which hold the tenant's lock shared; on PostgreSQL a
    transaction can commit seq 11 while seq 10 is still in flight)."""
    # Newest first along the primary key: stops at the tenant's latest event instead of scanning.
    query = select(events.c.seq).where(events.c.tenant_id == tenant_id).order_by(events.c.seq.desc()).limit(1)
    with engine.begin() as connection:
        tenant_lock(connection, ingest_lock_key(tenant_id))
        return int(connection.execute(query).scalar() or 0)


def _combine(a: Summary, b: Summary) -> Summary:
    return Summary(
        tasks=merge_tasks(a.tasks, b.tasks),
        detail=merge_additive(a.detail, b.detail, DETAIL_KEYS),
        daily=merge_additive(a.daily, b.daily, DAILY_KEYS),
        buckets=None if a.buckets is None or b.buckets is None else merge_additive(a.buckets, b.buckets, PRICE_BUCKET_KEYS),
    )
