"""What both stores share: the rollup tables, the events query, Arrow columns as frames, and
writing a summary with ordinary statements (merged into the stored rows, or in their place)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import (
    BigInteger,
    Connection,
    Select,
    Table,
    Update,
    bindparam,
    delete,
    false,
    literal_column,
    select,
    update,
)

from metering.core.db import no_cyclic_gc, prepare, prepared_rows, read_frame, tuples_frame, write_frame
from metering.core.db.writes import OnConflict
from metering.core.event_columns import EVENT_COLUMNS, TEXT_COLUMNS
from metering.core.tables import events, task_usage, task_usage_buckets, task_usage_detail, usage_daily
from metering.costs.prices import REM_PER_NANO
from metering.rollup.summary import DAILY_KEYS, DETAIL_KEYS, TASK_COLUMNS, USAGE_COLUMNS, Summary

ROLLUP_TABLES = (task_usage, task_usage_detail, usage_daily, task_usage_buckets)
BUCKET_TABLE_KEYS = tuple(column.name for column in task_usage_buckets.primary_key.columns if column.name != "tenant_id")
"""`task_usage_buckets`' key after tenant_id, in its order (provider and model lead)."""
BUCKET_SUMS = tuple(c.name for c in task_usage_buckets.columns if c.name not in ("tenant_id", *BUCKET_TABLE_KEYS))
"""`task_usage_buckets`' measures: usage events and tokens (no cost: migration 0024)."""
DETAIL_COSTS = ("cost_nanos", "cost_rem", "unpriced_events")
CARRY = ("cost_nanos", "cost_rem", REM_PER_NANO)
"""Summed costs stay carried (`metering.rollup.summary`)."""
_REM = literal_column(str(REM_PER_NANO), BigInteger())
_TEXT_KEYS = ("provider", "model", "task", "day", "customer", "actor", "agent")  # and the day, as a date
_NULLABLE_TASK_INTEGERS = frozenset(
    column.name for column in task_usage.columns if column.nullable and column.type.python_type is int
)
NAMED_CHUNK = 10_000
"""Tasks read by name per query (`stored_tasks`): far below SQLite's 32,766 bound parameters."""


def events_query(
    tenant_id: int, after: int, upto: int, chunk_size: int, *, along_table: bool = False
) -> Select[Any]:
    """The tenant's next `chunk_size` events with after < seq <= upto, in seq order.
    `along_table`: `tenant_id + 0`, an expression that no index answers, so that the database
    walks the table along seq instead of the (tenant_id, seq) index."""
    tenant = events.c.tenant_id + 0 if along_table else events.c.tenant_id
    return (
        select(*[events.c[name] for name in EVENT_COLUMNS])
        .where(tenant == tenant_id, events.c.seq > after, events.c.seq <= upto)
        .order_by(events.c.seq)
        .limit(chunk_size)
    )


def arrow_events(table: pa.Table) -> pd.DataFrame:
    """Arrow event columns as pandas: int64 numbers, categorical texts (dictionary-encoded by
    Arrow: one code per row and one string per distinct value, no Python string per row)."""
    columns = {}
    for name in EVENT_COLUMNS:
        column = table[name]
        if name in TEXT_COLUMNS:
            # A text column that is NULL in every row of a SQLite chunk comes back as int64.
            columns[name] = (
                column if pa.types.is_string(column.type) else column.cast(pa.string())
            ).dictionary_encode()
        else:
            columns[name] = column.cast(pa.int64())
    return pa.table(columns).to_pandas()


def other_tenants_in(connection: Connection, tables: Sequence[Table], tenant_id: int) -> bool:
    """Whether any of `tables` holds another tenant's rows: two probes of each table's index
    that leads with tenant_id, one below the tenant and one above."""
    return any(
        connection.execute(select(table.c.tenant_id).where(other).limit(1)).first() is not None
        for table in tables
        for other in (table.c.tenant_id < tenant_id, table.c.tenant_id > tenant_id)
    )


def rebuild_frames(summary: Summary) -> tuple[tuple[Table, pd.DataFrame, tuple[str, ...]], ...]:
    """Each rollup table with the summary's rows for it and its key (after tenant_id)."""
    frames = (
        (task_usage, summary.tasks, ("task",)),
        (task_usage_detail, summary.detail, DETAIL_KEYS),
        (usage_daily, summary.daily, DAILY_KEYS),
    )
    return frames if summary.buckets is None else (*frames, (task_usage_buckets, summary.buckets, BUCKET_TABLE_KEYS))


class TableStore:
    """Writing with ordinary statements, which both databases run alike."""

    def merge(self, connection: Connection, tenant_id: int, summary: Summary) -> int:
        """The summary's task rows (merged by the caller) in place of the stored ones, its usage
        rows added to the stored ones."""
        return self.write(connection, tenant_id, summary, replace_all=False)

    def delete_tenant(self, connection: Connection, tenant_id: int, *, whole_tables: bool = False) -> None:
        """Delete the tenant's rollup rows; `whole_tables` when it is alone in them (a DELETE
        without WHERE, which SQLite runs by dropping the tables' pages as they are)."""
        for table in ROLLUP_TABLES:
            connection.execute(
                delete(table) if whole_tables else delete(table).where(table.c.tenant_id == tenant_id)
            )

    def write(
        self,
        connection: Connection,
        tenant_id: int,
        summary: Summary,
        *,
        replace_all: bool,
        into: dict[Table, Table] | None = None,
    ) -> int:
        """Write the summary's rows: task rows in place of the stored ones and usage rows added
        to theirs, or (`replace_all`) all as they are, into the rollup tables or the tables `into`
        puts in their place. Returns the tasks."""
        target = into or {}
        for table, frame, keys in rebuild_frames(summary):
            columns = [column.name for column in table.columns]
            # A task's row is replaced by its merged row; usage rows add up.
            merged: OnConflict = "replace" if table is task_usage else "add"
            # The buckets have no cost columns (the frame's are their detail rows').
            add = () if table is task_usage else tuple(name for name in USAGE_COLUMNS if name in table.c)
            write_frame(
                connection, target.get(table, table), key_order(frame, keys, replace_all).assign(tenant_id=tenant_id), columns,
                on_conflict="error" if replace_all else merged, keys=("tenant_id", *keys), add=add,
                carry=CARRY if "cost_rem" in add else None,
            )  # fmt: skip
        return len(summary.tasks)


    # --- re-pricing (`metering.rollup.reprice`) ------------------------------------------------------------

    def price_pairs(self, connection: Connection, tenant_id: int) -> list[tuple[str, str]]:
        """The (provider, model) pairs of the tenant's price buckets, in key order: one seek of the
        table's key per provider and per pair (the next value after the last), instead of a
        DISTINCT over every bucket (4.5M rows at 12M events: 1.4 s)."""
        b = task_usage_buckets
        pairs: list[tuple[str, str]] = []
        provider: str | None = None
        while True:
            after = [] if provider is None else [b.c.provider > provider]
            query = select(b.c.provider).where(b.c.tenant_id == tenant_id, *after).order_by(b.c.provider).limit(1)
            provider = connection.execute(query).scalar()
            if provider is None:
                return pairs
            model: str | None = None
            while True:
                later = [] if model is None else [b.c.model > model]
                query = select(b.c.model).where(b.c.tenant_id == tenant_id, b.c.provider == provider, *later).order_by(b.c.model).limit(1)
                model = connection.execute(query).scalar()
                if model is None:
                    break
                pairs.append((provider, model))

    def read_buckets(self, connection: Connection, tenant_id: int, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
        """The tenant's price buckets of these (provider, model) pairs: `BUCKET_TABLE_KEYS` and
        `USAGE_COLUMNS`, days as datetime64. A range of the table's key per pair, read as columns
        (`read_frame`: no SQLAlchemy row, on PostgreSQL no Python object per number). On
        PostgreSQL the read runs on a connection of its own: the caller has updated the tenant's
        rollup_state row first, and every writer of these rows updates it first too, so nothing
        commits to them in between."""
        b = task_usage_buckets
        names = [*BUCKET_TABLE_KEYS, *BUCKET_SUMS]
        texts = [name for name in names if name in _TEXT_KEYS and name != "day"]
        # Each pair's provider and model are its own: not read per row (2 of 17 columns, ~15%).
        read = [name for name in names if name not in ("provider", "model")]
        frames = []
        for provider, model in pairs:
            frame = read_frame(connection, select(*[b.c[name] for name in read]).where(
                b.c.tenant_id == tenant_id, b.c.provider == provider, b.c.model == model
            ), read, texts=texts, days=("day",))  # fmt: skip
            constant = {"provider": provider, "model": model}
            frames.append(frame.assign(**{k: pd.Series(np.full(len(frame), v, dtype=object), index=frame.index, dtype=object)
                                          for k, v in constant.items()})[names])  # fmt: skip
        if not frames:
            return read_frame(connection, select(*[b.c[name] for name in names]).where(false()), names, texts=texts, days=("day",))
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    def read_detail_costs(self, connection: Connection, tenant_id: int, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
        """The tenant's detail rows of these (provider, model) pairs (and possibly of other pairs
        of the same providers and models): `DETAIL_KEYS` and `DETAIL_COSTS`, days as datetime64,
        read as `read_buckets` reads (the table's key leads with the task: one pass over the
        tenant's rows, the pairs filtered by SQL)."""
        d = task_usage_detail
        names = [*DETAIL_KEYS, *DETAIL_COSTS]
        texts = [name for name in names if name in _TEXT_KEYS and name != "day"]
        providers, models = sorted({p for p, _ in pairs}), sorted({m for _, m in pairs})
        query = select(*[d.c[name] for name in names]).where(d.c.tenant_id == tenant_id, d.c.provider.in_(providers), d.c.model.in_(models))
        return read_frame(connection, query, names, texts=texts, days=("day",))

    def shift_costs(self, connection: Connection, tenant_id: int, table: Table, keys: Sequence[str], changes: pd.DataFrame) -> int:
        """Add `changes` (its `keys` and `d_nanos`, `d_rem` in [0, 10**6), `d_unpriced`) to the cost
        columns of the tenant's rows of `table` with those keys, carried; returns rows changed."""
        if changes.empty:
            return 0
        names = [*keys, *("d_nanos", "d_rem", "d_unpriced")]
        columns = [key_values(changes[name]) for name in names]  # texts as read, days as dates, numbers as ints
        bound = ["tenant", *[f"k_{n}" if n in keys else n for n in names]]
        rows = [dict(zip(bound, (tenant_id, *row), strict=True)) for row in zip(*columns, strict=True)]
        connection.execute(cost_update(table, keys), rows)
        return len(rows)


def cost_update(table: Table, keys: Sequence[str]) -> Update:
    """UPDATE of one row of `table` (bound `tenant` and `k_<key>`) adding the bound `d_nanos`,
    `d_rem` (in [0, 10**6): the sum's carry is non-negative) and `d_unpriced` to its costs, carried."""
    rem = table.c.cost_rem + bindparam("d_rem", type_=BigInteger())
    return (
        update(table)
        .where(table.c.tenant_id == bindparam("tenant"), *[table.c[name] == bindparam(f"k_{name}") for name in keys])
        .values(
            cost_nanos=table.c.cost_nanos + bindparam("d_nanos", type_=BigInteger()) + rem // _REM,
            cost_rem=rem % _REM,
            unpriced_events=table.c.unpriced_events + bindparam("d_unpriced", type_=BigInteger()),
        )
    )


def key_values(column: pd.Series) -> list[Any]:
    """A column's values as the driver takes them: days (datetime64) as dates, numbers as ints."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return column.to_numpy().astype("datetime64[D]").astype(object).tolist()
    return column.tolist()


def key_order(frame: pd.DataFrame, keys: tuple[str, ...], replace_all: bool) -> pd.DataFrame:
    """On a rebuild (the tenant's rows were just deleted), rows in primary-key order: each insert
    appends to the end of the key's B-tree instead of landing on a random page of it. Strings
    sort by code point, which is SQLite's BINARY order and PostgreSQL's under a C collation
    (Arrow compares UTF-8 bytes, the same order). Arrow's sort, not pandas': pandas sorts each
    text column's distinct values with Python comparisons."""
    if not replace_all:
        return frame
    columns = pa.table({name: frame[name] for name in keys})
    order = pc.sort_indices(columns, sort_keys=[(name, "ascending") for name in keys])
    return frame.take(order.to_numpy()).reset_index(drop=True)


def sorted_unique(names: Sequence[str]) -> list[str]:
    """The distinct `names` in code point order (SQLite's BINARY; Python's `sorted`), sorted by
    Arrow (UTF-8 bytes, the same order): Python's sort compares each pair in the interpreter."""
    if not len(names):
        return []
    distinct = pc.unique(pa.array(names, type=pa.string()))
    return list(distinct.take(pc.sort_indices(distinct)).to_pylist())


def stored_tasks(
    connection: Connection, tenant_id: int, names: Sequence[str], columns: Sequence[str] = TASK_COLUMNS
) -> pd.DataFrame:
    """The `columns` (`task` first) of the named tasks' stored `task_usage` rows (those that have
    one), in the caller's transaction, in name order. Read as the driver's tuples, `NAMED_CHUNK`
    names per query, by one statement compiled once (a short last chunk repeats its last name:
    compiling 10,000 parameters costs ~30 ms, a re-pricing of 294k tasks read 30 chunks);
    nullable integers as pandas' Int64 (None as NA, every value exact)."""
    t = task_usage.c
    ordered = sorted_unique(names)
    size = min(len(ordered), NAMED_CHUNK)
    rows: list[Sequence[Any]] = []
    if ordered:
        marks = [bindparam(f"n{i}", type_=t.task.type) for i in range(size)]
        query = select(*[t[name] for name in columns]).where(t.tenant_id == bindparam("tenant"), t.task.in_(marks)).order_by(t.task)
        prepared = prepare(query, connection.dialect)
        bound_names = ["tenant", *(f"n{i}" for i in range(size))]
        with no_cyclic_gc():  # a few hundred thousand row tuples: no cycles, but many collections
            for start in range(0, len(ordered), size):
                chunk = ordered[start : start + size]
                values = dict(zip(bound_names, [tenant_id, *chunk, *[chunk[-1]] * (size - len(chunk))], strict=True))
                rows += prepared_rows(connection, prepared, values)
    texts = [name for name in columns if task_usage.c[name].type.python_type is not int]
    return tuples_frame(rows, columns, texts=texts, nullable=_NULLABLE_TASK_INTEGERS)
