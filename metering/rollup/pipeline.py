"""The rollup: new events since the watermark → priced → merged into the rollup tables.

A run reads the events of one tenant past its watermark, in chunks, prices them with the
tenant's price book, summarizes them (`metering.rollup.summary`), and writes the result and the new
watermark in ONE transaction: a run killed mid-way leaves nothing behind, and the next run does
the same work again. The watermark only moves by compare-and-set, so two concurrent runs never
both apply the same events. When the tenant's prices change, the next run re-prices the
tenant's rollup rows from their price buckets (`metering.rollup.reprice`, no event read) and then rolls
up the new events; it rebuilds the rollup from the first event only for the changes that need the
events (a tier threshold the buckets do not separate, a rollup from before the buckets, a first
run). Either way unpriced events become priced once a price is added.

A stored event that cannot be rolled up (`metering.rollup.quarantine`: a time outside what every layer
can represent, impossible token counts) is left out of the summary and moved to the quarantine
in the transaction that advances the watermark: one such event never stops a tenant's rollup.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Engine, Row, select, update

from metering.core.db import upsert
from metering.core.errors import Conflict
from metering.core.tables import rollup_state
from metering.core.tenants import Tenant
from metering.costs.book import price_book, price_version, tenant_overrides
from metering.costs.price_buckets import BucketScheme, scheme_for
from metering.costs.ratecards import PriceBook
from metering.events.ingest import committed_through
from metering.rollup import month_figures, quarantine, reprice, usage_months
from metering.rollup.executors import Executor, InProcess
from metering.rollup.ranges import gather, summarize_apart, summarize_range
from metering.rollup.stores import RollupStore, store_for
from metering.rollup.stores.common import ROLLUP_TABLES, key_order, stored_tasks
from metering.rollup.summary import (
    merge_tasks,
)

__all__ = ["ROLLUP_TABLES", "RollupConflict", "RollupResult", "bring_up_to_date", "key_order", "price_book", "price_version",
           "rollup_tenant", "tenant_overrides"]  # fmt: skip

DEFAULT_CHUNK = 2_000_000
UP_TO_DATE_ATTEMPTS = 5


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
    thread; a Dask cluster's, `metering.rollup.executors`). `progress(done, total)` reports events
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
    end = committed_through(engine, tenant.id)
    result = RollupResult(tenant=tenant.name, watermark=state.watermark_seq, rebuilt=rebuild, repriced=repriced)
    if end <= start and not rebuild:
        result.seconds = time.perf_counter() - started
        return result

    executor = executor or InProcess()
    if executor.own_process:  # each range opens the database itself, with the same prices
        url = engine.url.render_as_string(hide_password=False)
        run = partial(summarize_apart, url, store, tenant.id, tenant.timezone, overrides, chunk_size, scheme=scheme)
    else:
        book = PriceBook(overrides)
        run = partial(summarize_range, engine, store, tenant.id, tenant.timezone, book, chunk_size, progress=progress, after_chunk=after_chunk, scheme=scheme)  # fmt: skip
    bounds = [start + (end - start) * i // executor.workers for i in range(executor.workers + 1)]
    # The ranges' results live only inside `_gather`: not beside the combined summary while it is written.
    summary, unpriced, result.events_read, unprocessable = gather(executor.map(run, list(zip(bounds, bounds[1:], strict=False))))  # fmt: skip
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
            usage_months.replace(connection, tenant.id, summary.daily if summary is not None else None)
        elif summary is not None:
            # The touched tasks' rows before the merge (their old contribution to the month
            # figures) and after it, read and merged once, here: the store writes the merged rows.
            before = stored_tasks(connection, tenant.id, summary.tasks["task"].tolist())
            after = merge_tasks(before, summary.tasks) if not before.empty else summary.tasks
            # The same for the touched daily rows and the per customer-month usage.
            days_before = usage_months.stored_days(connection, tenant.id, summary.daily)
            result.tasks_updated = store.merge(connection, tenant.id, replace(summary, tasks=after))
            month_figures.apply(connection, tenant.id, tenant.timezone, before, after)
            usage_months.apply(connection, tenant.id, days_before, usage_months.merged(days_before, summary.daily))
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


def _position(engine: Engine, tenant_id: int, now: datetime) -> tuple[Row[Any], list[dict[str, str]]]:
    """The tenant's rollup state (created at watermark 0 if it has none) and its price overrides."""
    values = {"tenant_id": tenant_id, "watermark_seq": 0, "price_version": "", "updated_at": now}
    with engine.connect() as connection:
        upsert(connection, rollup_state, values, key=["tenant_id"])
        connection.commit()
        state = connection.execute(select(rollup_state).where(rollup_state.c.tenant_id == tenant_id)).one()
        return state, tenant_overrides(connection, tenant_id)
