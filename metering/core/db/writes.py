"""Writes: the one-row upsert, and bulk writes: one `executemany` on SQLite; COPY into a
temporary table and one `INSERT ... SELECT` on PostgreSQL. Statements are built with SQLAlchemy (or psycopg.sql for
COPY), compiled once per shape, and never assembled from data; data travels as bound
parameters or as COPY rows (CSV written by Arrow for frames)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql as pgsql
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    MetaData,
    Result,
    Table,
    Text,
    bindparam,
    case,
    cast,
    column,
    delete,
    false,
    func,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateTable

from metering.core.db.engine import is_postgresql
from metering.core.db.reads import prepare, prepared_rows

OnConflict = Literal["error", "ignore", "replace", "add"]
Carry = tuple[str, str, int]
"""(high, low, base) of an `add`: the low column's sum kept below `base`, the rest carried into
the high column (exact amounts in two integer columns, such as nano-units and their remainder)."""
Flag = tuple[str, str]
"""(flag, count) of an `add`: a stored row that a sum would take past int64, or that is flagged
already (or whose added row is), is kept flagged (1), its other add columns zero and `count`
added: no sum fails ("bigint out of range") or wraps (`metering.rollup.kept_sums`)."""
_INT64_MAX = literal_column(str(2**63 - 1), BigInteger())
_INT64_MIN = literal_column(str(-(2**63 - 1)), BigInteger())  # -2**63 itself reads as a float in SQLite
_SLICE = 250_000
"""Rows of a frame converted and sent at a time."""


def dialect_insert(bind: Session | Connection, table: Table) -> Any:
    """The database's own INSERT of `table` (PostgreSQL's or SQLite's), which has
    `on_conflict_do_nothing` / `on_conflict_do_update`."""
    return (postgresql.insert if is_postgresql(bind) else sqlite.insert)(table)


def upsert(
    executor: Session | Connection,
    table: Table,
    values: Mapping[str, Any],
    *,
    key: Sequence[str],
    update: Mapping[str, Any] | None = None,
    returning: Sequence[Column[Any]] = (),
) -> Result[Any]:
    """Insert one row of `table`; on a conflict over the unique `key` columns, set `update`
    (column -> value) on the stored row, or leave it as it is when `update` is None. With
    `returning`, the result holds those columns of the row written (none when nothing was)."""
    statement = dialect_insert(executor, table).values(**values)
    if update is None:
        statement = statement.on_conflict_do_nothing(index_elements=list(key))
    else:
        statement = statement.on_conflict_do_update(index_elements=list(key), set_=dict(update))
    return executor.execute(statement.returning(*returning) if returning else statement)


def write_rows(
    connection: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    on_conflict: OnConflict = "error",
    keys: Sequence[str] = (),
    add: Sequence[str] = (),
    carry: Carry | None = None,
    flag: Flag | None = None,
) -> int:
    """Write rows (in `columns` order); returns how many rows were inserted or changed.

    On a primary-key (`keys`) conflict: `error` raises, `ignore` keeps the stored row, `replace`
    overwrites the other columns, `add` adds the `add` columns to the stored ones (`carry`: and
    carries between two of them, see `Carry`; both non-negative; `flag`: flagging a row rather
    than passing int64, see `Flag`).
    """
    if not rows:
        return 0
    columns = tuple(columns)
    if is_postgresql(connection):
        return _postgres_write(connection, table, columns, rows, on_conflict, tuple(keys), tuple(add), carry, flag)
    statement = _sqlite_statement(table, columns, on_conflict, tuple(keys), tuple(add), carry, flag)
    result = connection.execution_options(preserve_rowcount=True).exec_driver_sql(statement, list(rows))
    return int(result.rowcount)


def add_rows(
    connection: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    keys: Sequence[str],
    add: Sequence[str],
    fixed: Mapping[str, Any] | None = None,
) -> list[tuple[Any, ...]]:
    """Add each row's `add` columns to the stored row with the same `keys` (inserting the row
    when there is none), and return every written row's (keys..., add...) as stored after the
    write. One statement, one round trip: the rows travel as one JSON text read by `json_each`
    (SQLite) or `json_array_elements` (PostgreSQL: the server parses it, where arrays bound per
    column cost the client a Python step per value), into an
    `INSERT ... SELECT ... ON CONFLICT DO UPDATE ... RETURNING`. The rows are written in the
    order given (sort them: concurrent writers then lock rows alike). `fixed`: columns with one
    value in every row (a tenant id), bound once instead of sent with each row (SQLite then
    extracts one JSON value fewer per row)."""
    if not rows:
        return []
    fixed = fixed or {}
    postgres = is_postgresql(connection)
    statement = _add_statement(table, tuple(columns), tuple(keys), tuple(add), postgres, tuple(fixed))
    values = {f"f{i}": value for i, value in enumerate(fixed.values())}
    values["rows"] = orjson.dumps(list(rows)).decode()
    # Through the driver's cursor, compiled once: its plain tuples, not a SQLAlchemy row each
    # (ingestion reads back every counter it writes, every batch).
    return prepared_rows(connection, _prepared_add(statement, connection.dialect), values)


_prepared_add = lru_cache(maxsize=16)(prepare)
"""`_add_statement`'s statements compiled once per dialect."""


@lru_cache(maxsize=16)
def _add_statement(
    table: Table, columns: tuple[str, ...], keys: tuple[str, ...], add: tuple[str, ...], postgres: bool, fixed: tuple[str, ...] = ()
) -> Any:
    constants = [cast(bindparam(f"f{i}", type_=table.c[name].type), table.c[name].type).label(name) for i, name in enumerate(fixed)]
    insert: Any
    rows: Any
    if postgres:
        elements = func.json_array_elements(cast(bindparam("rows", type_=Text), postgresql.JSON))
        element = elements.table_valued(column("value", postgresql.JSON)).render_derived()
        rows = select(*constants, *[
            cast(element.c.value[literal_column(str(i), Integer)].astext, table.c[name].type).label(name)
            for i, name in enumerate(columns)
        ])  # fmt: skip
        insert = postgresql.insert(table)
    else:
        each = func.json_each(bindparam("rows")).table_valued("value")
        # `WHERE true`: SQLite would read the ON of ON CONFLICT as a join's otherwise.
        rows = select(*constants, *[func.json_extract(each.c.value, f"$[{i}]").label(name) for i, name in enumerate(columns)])
        rows = rows.where(true())
        insert = sqlite.insert(table)
    statement = insert.from_select([*fixed, *columns], rows)
    statement = statement.on_conflict_do_update(
        index_elements=list(keys), set_={name: table.c[name] + statement.excluded[name] for name in add}
    )
    return statement.returning(*[table.c[name] for name in (*keys, *add)])


def write_frame(
    connection: Connection,
    table: Table,
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    on_conflict: OnConflict = "error",
    keys: Sequence[str] = (),
    add: Sequence[str] = (),
    carry: Carry | None = None,
    flag: Flag | None = None,
    slice_rows: int = _SLICE,
) -> int:
    """`write_rows` for a frame's `columns`, `slice_rows` rows at a time. A plain insert (`error`) on PostgreSQL is one COPY
    of CSV that Arrow encodes in C++: no Python object per value, which left the database
    server the 2 cores' only work while writing a rebuild's millions of rows."""
    if not is_postgresql(connection) or on_conflict != "error":
        # In slices: Python rows of the whole frame took ~1 GB for 2.8 M rows.
        return sum(
            write_rows(connection, table, columns, frame_rows(frame.iloc[start : start + slice_rows], columns), on_conflict=on_conflict, keys=keys, add=add, carry=carry,
                       flag=flag)
            for start in range(0, len(frame), slice_rows)
        )
    if frame.empty:
        return 0
    arrow = pa.Table.from_pandas(frame[list(columns)], preserve_index=False)
    for index, name in enumerate(arrow.column_names):
        if pa.types.is_timestamp(arrow.schema.field(index).type):
            arrow = arrow.set_column(index, name, arrow[name].cast(pa.date32()))
    copy = pgsql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        pgsql.Identifier(table.name), pgsql.SQL(", ").join(pgsql.Identifier(name) for name in columns)
    )
    # Arrow quotes every string ("" is an empty string) and leaves NULL empty, as COPY reads them.
    options = pa_csv.WriteOptions(include_header=False)

    def csv(start: int) -> pa.Buffer:
        buffer = pa.BufferOutputStream()
        pa_csv.write_csv(arrow.slice(start, slice_rows), buffer, options)
        return buffer.getvalue()

    # A thread writes the next slice's CSV (Arrow, without the GIL) while this one is sent and
    # the server reads it: client and server work side by side instead of taking turns. One
    # slice ahead, no more (memory).
    starts = list(range(0, arrow.num_rows, slice_rows))
    with ThreadPoolExecutor(1) as encoder, connection.connection.driver_connection.cursor() as cursor, cursor.copy(copy) as stream:  # type: ignore[union-attr]
        ahead = encoder.submit(csv, starts[0])
        for start in starts[1:] + [None]:
            buffer = ahead.result()
            if start is not None:
                ahead = encoder.submit(csv, start)
            stream.write(buffer)
    return len(frame)


def _conflict_clause(
    insert: Any, table: Table, columns: tuple[str, ...], on_conflict: OnConflict, keys: tuple[str, ...], add: tuple[str, ...], carry: Carry | None = None,
    flag: Flag | None = None,
) -> Any:  # fmt: skip
    if on_conflict == "error":
        return insert
    if on_conflict == "ignore":
        return insert.on_conflict_do_nothing(index_elements=list(keys))
    excluded = insert.excluded
    if on_conflict == "replace":
        updates = {name: excluded[name] for name in columns if name not in keys}
    elif flag is not None:
        updates = _flagged_sums(table, excluded, add, flag)
    else:
        updates = {name: table.c[name] + excluded[name] for name in add}
        if carry is not None:
            high, low, base = carry
            divisor = literal_column(str(int(base)), BigInteger())  # a number in the statement: no extra bound parameter
            updates[high] = updates[high] + updates[low] // divisor
            updates[low] = updates[low] % divisor
    return insert.on_conflict_do_update(index_elements=list(keys), set_=updates)


def _flagged_sums(table: Table, excluded: Any, add: tuple[str, ...], flag: Flag) -> dict[str, Any]:
    """The updates of an `add` with a `Flag`. Each bound is tested on the side it can be passed
    on (a CASE, evaluated in order: the subtraction itself never leaves int64)."""
    name, count = flag
    zero = literal_column("0", BigInteger())
    sums = [column for column in add if column != count]
    past = or_(table.c[name] > zero, excluded[name] > zero, *(
        case((excluded[c] > zero, table.c[c] > _INT64_MAX - excluded[c]), (excluded[c] < zero, table.c[c] < _INT64_MIN - excluded[c]), else_=false())
        for c in sums
    ))  # fmt: skip
    updates = {c: case((past, zero), else_=table.c[c] + excluded[c]) for c in sums}
    updates[count] = table.c[count] + excluded[count]
    updates[name] = case((past, literal_column("1", BigInteger())), else_=zero)
    return updates


@lru_cache(maxsize=64)
def _sqlite_statement(
    table: Table, columns: tuple[str, ...], on_conflict: OnConflict, keys: tuple[str, ...], add: tuple[str, ...], carry: Carry | None = None,
    flag: Flag | None = None,
) -> str:  # fmt: skip
    insert = sqlite.insert(table).values({name: bindparam(name) for name in columns})
    compiled = _conflict_clause(insert, table, columns, on_conflict, keys, add, carry, flag).compile(dialect=sqlite.dialect())
    if tuple(compiled.positiontup or ()) != columns:
        raise AssertionError(f"bind order {compiled.positiontup} differs from {columns}")
    return str(compiled)


@lru_cache(maxsize=64)
def _postgres_stage(table: Table, columns: tuple[str, ...]) -> tuple[Table, Any, pgsql.Composed]:
    stage = Table(
        # One staging table per column set: a connection keeps its temporary tables, and a write of
        # other columns (events with or without the sending key) must not meet another's table.
        f"{table.name}_incoming_{zlib.crc32(','.join(columns).encode()):08x}",
        MetaData(),
        *[Column(name, table.c[name].type) for name in columns],
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DELETE ROWS",
    )
    copy = pgsql.SQL("COPY {} ({}) FROM STDIN").format(
        pgsql.Identifier(stage.name), pgsql.SQL(", ").join(pgsql.Identifier(name) for name in columns)
    )
    return stage, CreateTable(stage, if_not_exists=True), copy


def _copy(connection: Connection, statement: pgsql.Composed, rows: Sequence[Sequence[Any]]) -> None:
    with connection.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
        for row in rows:
            copy.write_row(row)


def _postgres_write(
    connection: Connection,
    table: Table,
    columns: tuple[str, ...],
    rows: Sequence[Sequence[Any]],
    on_conflict: OnConflict,
    keys: tuple[str, ...],
    add: tuple[str, ...],
    carry: Carry | None = None,
    flag: Flag | None = None,
) -> int:
    if on_conflict == "error":  # straight into the table
        copy = pgsql.SQL("COPY {} ({}) FROM STDIN").format(
            pgsql.Identifier(table.name), pgsql.SQL(", ").join(pgsql.Identifier(name) for name in columns)
        )
        _copy(connection, copy, rows)
        return len(rows)
    stage, create, copy = _postgres_stage(table, columns)
    connection.execute(create)
    _copy(connection, copy, rows)
    insert = postgresql.insert(table).from_select(list(columns), select(*stage.c))
    statement = _conflict_clause(insert, table, columns, on_conflict, keys, add, carry, flag)
    count = int(connection.execute(statement.execution_options(preserve_rowcount=True)).rowcount)
    connection.execute(delete(stage))
    return count


def frame_rows(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """Rows of plain Python values (None for missing, ISO text for days) in `columns` order."""
    values = []
    for name in columns:
        column = frame[name]
        if pd.api.types.is_datetime64_any_dtype(column.dtype):
            values.append(np.datetime_as_string(column.to_numpy().astype("datetime64[D]"), unit="D").tolist())
        elif column.hasnans:
            values.append(column.astype(object).where(column.notna(), None).tolist())
        else:
            values.append(column.tolist())
    return list(zip(*values, strict=True))
