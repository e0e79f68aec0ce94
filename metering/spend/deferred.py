"""Deferred counting: budget counters written after ingestion, by a follower of the events.

Counting a batch in the transaction that stores it costs ingestion in proportion to the counters
the batch touches (one row each, upserted per batch). With `TASKMETER_SPEND_COUNTING=deferred`
ingestion stores events only, and a follower counts them afterwards with ingestion's own code
(`metering.spend.counters.count_stored`): the tenant's committed events past its watermark, in seq
order, a page at a time, many batches per upsert. The follower writes the counters, the tasks'
deciding outcomes, the alerts it raises and the new watermark in one transaction, so each event
counts exactly once across crashes, restarts and server processes; the follower lock
(`lock`) lets one follower, recount or switch of mode act on a tenant at a time.

The follower reads a page and counts its usage outside that lock (`read_page`, from a read
snapshot: on SQLite the lock is the database's write lock, which ingestion waits for), then
writes it under the lock (`write_page`) only if the watermark and the budget generation are
still those it read: otherwise another follower or a recount acted meanwhile, and the page is
read again. `count_page` does both under the lock (a switch of mode, which holds the tenant's
ingestion too).

The watermark row (`spend_watermarks`) is the tenant's counting mode, shared by every process: with
a row, ingestion leaves counting to the follower (`counters.count_ingested` reads the row with the
budget generation, in one statement); without one, ingestion counts. Starting and stopping to
follow a tenant (`metering.events.spend_follower`) happen while the tenant's ingest lock is held
alone, so every batch is counted by exactly one of the two.

Locks, in this order when a transaction holds several: the tenant's ingest lock, its follower
lock, the tasks' outcome locks (`counters`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Connection, Integer, bindparam, case, delete, literal, select, update

from metering.core.db import (
    Prepared,
    dialect_insert,
    follower_lock_key,
    prepare_columns,
    prepared_columns,
    tenant_lock,
    write_lock,
)
from metering.core.tables import events
from metering.spend import counters as spend
from metering.spend.budget_tables import spend_watermarks

PAGE = 20_000
"""Events counted per transaction (per page, one upsert of the counters it touches)."""
_e = events.c
PAGE_COLUMNS = (
    _e.type, _e.time_us, _e.customer, case((_e.type.in_([literal(kind) for kind in spend.TERMINAL]), _e.task)).label("task"),
    _e.task_type, _e.provider, _e.model, _e.actor, _e.agent, _e.input_tokens, _e.output_tokens, _e.cache_read_tokens,
    _e.cache_write_tokens, _e.cache_write_1h_tokens, _e.seq,
)  # fmt: skip
"""What the follower reads of each event: the fields of `counters.Stored` in its order (the task
of a terminal event only: no other event's is read), then the seq."""


@dataclass(frozen=True)
class Counted:
    """What one page of counting did."""

    events: int  # events counted into the counters
    alerts: int  # alerts raised
    through: int | None  # the watermark after it (None: the tenant is counted at ingestion)
    more: bool  # events up to the end asked for remain


def counted_through(connection: Connection, tenant_id: int) -> int | None:
    """The tenant's watermark: every event with seq <= it is counted; None when ingestion
    counts the tenant's events (inline)."""
    found = connection.execute(
        select(spend_watermarks.c.counted_through).where(spend_watermarks.c.tenant_id == tenant_id)
    ).scalar()
    return None if found is None else int(found)


def lock(connection: Connection, tenant_id: int) -> None:
    """Hold the tenant's follower lock until the transaction ends (PostgreSQL: an advisory lock;
    SQLite: the write lock, taken before anything is read)."""
    write_lock(connection)
    tenant_lock(connection, follower_lock_key(tenant_id))


def begin(connection: Connection, tenant_id: int, newest: int, *, now: datetime) -> bool:
    """Follow the tenant from seq `newest` on: ingestion has counted every event up to it. The
    caller holds the tenant's ingest lock alone and read `newest` under it. False when the tenant
    is followed already."""
    lock(connection, tenant_id)
    if counted_through(connection, tenant_id) is not None:
        return False
    row = {"tenant_id": tenant_id, "counted_through": newest, "updated_at": now}
    connection.execute(dialect_insert(connection, spend_watermarks).values(row).on_conflict_do_nothing())
    return True


def end(connection: Connection, tenant_id: int) -> None:
    """Stop following the tenant: ingestion counts its events again. The caller holds the
    tenant's ingest lock alone and has counted every event (`count_page` up to the newest)."""
    lock(connection, tenant_id)
    connection.execute(delete(spend_watermarks).where(spend_watermarks.c.tenant_id == tenant_id))


def count_page(connection: Connection, tenant_id: int, through: int, *, now: datetime, page: int = PAGE) -> Counted:
    """Count the tenant's events after its watermark, up to seq `through` and at most `page` of
    them, into its counters, and move the watermark past them, in the caller's transaction
    (under the follower lock). Every event with seq <= `through` must be committed
    (`metering.events.ingest.committed_through`). Alerts are stamped `now`."""
    lock(connection, tenant_id)
    read = read_page(connection, tenant_id, through, page=page)
    if read is None:
        return Counted(0, 0, counted_through(connection, tenant_id), False)
    counted = write_page(connection, tenant_id, read, now=now)
    assert counted is not None  # read under the lock: neither the watermark nor the budgets moved
    return counted


@dataclass(frozen=True)
class Page:
    """A page of events read after watermark `start` and counted (usage) with the budgets of
    `generation`, outside the follower lock (`read_page`), waiting to be written (`write_page`)."""

    start: int
    generation: int
    reached: int  # the watermark once it is written
    more: bool  # events up to the end asked for remain after it
    stored: spend.Stored | None  # its events, None when there are none; the jobs are counted under the lock
    deltas: spend.Deltas | None  # None: the tenant has no budgets (nothing read, nothing counts)

    @property
    def events(self) -> int:
        return 0 if self.stored is None else len(self.stored)


def read_page(connection: Connection, tenant_id: int, through: int, *, page: int = PAGE) -> Page | None:
    """Read and count (usage) the tenant's events after its watermark, up to seq `through` and at
    most `page` of them, taking no lock: `connection` reads one snapshot
    (`metering.core.db.snapshot_reads`). Every event with seq <= `through` must be committed.
    None when there is nothing to count (caught up, or the tenant is counted at ingestion)."""
    start = counted_through(connection, tenant_id)
    if start is None or start >= through:
        return None
    current = spend.generation(connection, tenant_id)
    state = spend.tenant_budgets(connection, tenant_id, current)
    if not state.index:  # nothing counts: no need to read them
        return Page(start, current, through, False, None, None)
    stored, last = stored_page(connection, tenant_id, start, through, page)
    if stored is None:
        return Page(start, current, through, False, None, spend.Deltas())
    reached = last if len(stored) == page else through
    return Page(start, current, reached, reached < through, stored, spend.usage_deltas(state, stored))


def write_page(connection: Connection, tenant_id: int, page: Page, *, now: datetime) -> Counted | None:
    """Under the follower lock, in the caller's transaction: when the watermark and the budget
    generation are still those `page` was read with, add it to the counters (with its jobs and
    the alerts it raises, stamped `now`) and move the watermark past it. None when either moved
    meanwhile (another follower, a recount, a budget change): nothing is written, and the
    caller reads the page again."""
    lock(connection, tenant_id)
    if counted_through(connection, tenant_id) != page.start or spend.generation(connection, tenant_id) != page.generation:
        return None
    raised = 0
    if page.deltas is not None and page.stored is not None:
        state = spend.tenant_budgets(connection, tenant_id, page.generation)
        raised = spend.add_counted(connection, tenant_id, state, page.stored, page.deltas, now=now)
    _advance(connection, tenant_id, page.reached, now)
    return Counted(page.events, raised, page.reached, page.more)


def stored_page(
    connection: Connection, tenant_id: int, after: int, through: int, limit: int, *, since_us: int | None = None
) -> tuple[spend.Stored | None, int]:
    """Up to `limit` of the tenant's events after seq `after` up to `through` (and with a time
    since `since_us`, when given), in seq order, as counting takes them (`PAGE_COLUMNS`), with the
    seq of the last; (None, `after`) when there is none."""
    values = {"tenant_id": tenant_id, "after": after, "through": through}
    if since_us is not None:
        values["since"] = since_us
    columns = _in_seq_order(prepared_columns(connection, _page_query(connection.dialect, limit, since_us is not None), values))
    types, times, customers, tasks, task_types, providers, models, actors, agents, *tokens, seqs = columns
    if not seqs:
        return None, after
    return spend.Stored(types, times, customers, tasks, task_types, providers, models, actors, agents, tuple(tokens)), seqs[-1]


@lru_cache(maxsize=16)
def _page_query(dialect: Any, limit: int, since: bool) -> Prepared:
    """The read of `stored_page` (parameters `tenant_id`, `after`, `through` and, with `since`,
    `since`), as one row of a JSON array per column (`prepare_columns`), compiled once per
    dialect, page size and shape."""
    e = events.c
    query = (
        select(*PAGE_COLUMNS)
        .where(
            e.tenant_id == bindparam("tenant_id", type_=Integer),
            e.seq > bindparam("after", type_=BigInteger),
            e.seq <= bindparam("through", type_=BigInteger),
            *([e.time_us >= bindparam("since", type_=BigInteger)] if since else []),
        )
        .order_by(e.seq)
        .limit(limit)
    )
    return prepare_columns(query, dialect)


def _in_seq_order(columns: list[list[Any]]) -> list[list[Any]]:
    """The page's columns with its events in seq order (the last column), as the database
    gives them in practice."""
    seqs = np.fromiter(columns[-1], dtype=np.int64, count=len(columns[-1]))
    if not (np.diff(seqs) < 0).any():
        return columns
    order = np.argsort(seqs, kind="stable").tolist()
    return [list(map(column.__getitem__, order)) for column in columns]


def _advance(connection: Connection, tenant_id: int, through: int, now: datetime) -> None:
    connection.execute(
        update(spend_watermarks)
        .where(spend_watermarks.c.tenant_id == tenant_id)
        .values(counted_through=through, updated_at=now)
    )
