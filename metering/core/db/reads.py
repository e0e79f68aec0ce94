"""Reads that bypass SQLAlchemy's rows: the driver's plain tuples, and whole columns (Arrow from
PostgreSQL through ADBC, the DB-API cursor on SQLite); and what a read asks of the planner: a
snapshot, byte-order sorting, a scan instead of an index."""

from __future__ import annotations

import gc
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Select,
    Text,
    func,
    literal_column,
    select,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from metering.core.db.engine import begin_sqlite, is_postgresql, is_sqlite


@dataclass(frozen=True)
class Prepared:
    """A statement compiled once for a dialect, to run many times on the driver's cursor: its
    text, its parameters' names in order (None: the driver takes them by name), the values it
    binds itself (literals, paths), and the bind processors of its parameters that have one."""

    sql: str
    names: tuple[str, ...] | None
    constants: Mapping[str, Any]
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters for one run: the constants and `values`, each through its
        type's bind processor as SQLAlchemy's own execution applies them (dates and datetimes
        reach SQLite as the ISO text it stores, never through sqlite3's default adapters,
        deprecated since Python 3.12)."""
        bound = {**self.constants, **values}
        for name, processor in self.processors:
            if name in bound:
                bound[name] = processor(bound[name])
        return tuple(bound[name] for name in self.names) if self.names is not None else bound


def prepare(statement: ClauseElement, dialect: Any) -> Prepared:
    """`statement` compiled for `dialect` (expanding parameters, IN lists, rendered in place);
    the parameters it requires are the caller's, per run (`Prepared.parameters`)."""
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}))
    required = {bind.key: None for bind in compiled.binds.values() if bind.required}
    processors = []
    for name, bind in compiled.binds.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors.append((name, processor))
    names = tuple(compiled.positiontup or ()) if compiled.positional else None
    return Prepared(str(compiled), names, dict(compiled.construct_params(required)), tuple(processors))


def prepared_rows(connection: Connection, prepared: Prepared, values: Mapping[str, Any]) -> list[Any]:
    """Every row of one run of `prepared` with `values`, as the driver's plain tuples, through
    `connection`'s own cursor (its transaction), the driver's errors raised as SQLAlchemy's."""
    driver = connection.connection.dbapi_connection
    assert driver is not None
    dialect = connection.dialect
    with as_sqlalchemy_errors(prepared.sql, dialect.loaded_dbapi.Error, dialect):
        cursor = driver.cursor()
        try:
            cursor.execute(prepared.sql, prepared.parameters(values))
            return list(cursor.fetchall())
        finally:
            cursor.close()


def prepare_columns(query: Select[Any], dialect: Any) -> Prepared:
    """`query` (parameters bound per run, as `prepare`) made to answer one row: each of its
    columns as one JSON array (SQLite's `json_group_array`, PostgreSQL's `json_agg`), for
    `prepared_columns`. The arrays are aligned (row i of the query is item i of each); their
    order is the query's as the database reads it into the aggregates (its ORDER BY, in
    practice: a caller that needs an order checks it)."""
    rows = query.subquery("page")
    if dialect.name == "postgresql":
        arrays = [sql_cast(func.json_agg(column), Text).label(column.name) for column in rows.c]
    else:
        arrays = [func.json_group_array(column).label(column.name) for column in rows.c]
    return prepare(select(*arrays), dialect)


def prepared_columns(connection: Connection, prepared: Prepared, values: Mapping[str, Any]) -> list[list[Any]]:
    """One run of a `prepare_columns` statement: the query's columns as lists (integers, text,
    None for null), through `connection`'s own cursor (its transaction). A row per value costs
    the driver more than the JSON text (its step, its locks, a tuple per row)."""
    (row,) = prepared_rows(connection, prepared, values)
    return [orjson.loads(text) if text is not None else [] for text in row]  # PostgreSQL: null for no row


def driver_rows(
    connection: Connection, query: ClauseElement, *, batch_size: int | None = None, hints: bool = False
) -> Iterator[Sequence[Any]]:
    """The rows of `query` as the driver's plain tuples, from a cursor of `connection` (its
    transaction): in batches of `batch_size`, or all in one; server-side on PostgreSQL. A million
    SQLAlchemy rows would cost seconds. Parameters go through their bind processors
    (`Prepared.parameters`). Sums may come as Decimal (PostgreSQL's numeric). `hints`: on SQLite,
    compiled with `HINTING` (the query's SQLite table hints rendered)."""
    dialect = connection.dialect
    prepared = prepare(query, HINTING if hints and is_sqlite(connection) else dialect)
    driver = connection.connection.dbapi_connection
    assert driver is not None
    with as_sqlalchemy_errors(prepared.sql, dialect.loaded_dbapi.Error, dialect):
        cursor = driver.cursor(name="taskmeter_rows") if is_postgresql(connection) else driver.cursor()
        try:
            cursor.execute(prepared.sql, prepared.parameters({}))
            if batch_size is None:
                yield cursor.fetchall()
                return
            while rows := cursor.fetchmany(batch_size):
                yield rows
        finally:
            cursor.close()


class _HintingCompiler(SQLiteCompiler):
    """SQLite's compiler, rendering a statement's table hint (`with_hint`) after its table's
    name, where SQLite reads `INDEXED BY` (SQLAlchemy's own SQLite compiler drops hints)."""

    def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
        return text


class _HintingDialect(SQLiteDialect_pysqlite):
    statement_compiler = _HintingCompiler


HINTING = _HintingDialect()
"""The SQLite dialect that renders table hints (`with_hint(..., dialect_name="sqlite")`)."""


def by_primary_key(query: Select[Any], table: Any) -> Select[Any]:
    """`query`, reading `table` through its primary key on SQLite: the key's automatic index named
    (`INDEXED BY sqlite_autoindex_<table>_1`, rendered when compiled with `HINTING`, e.g.
    `driver_rows(..., hints=True)`), for where SQLite's planner would take a secondary index and
    look each row up in the table. Other databases ignore the hint."""
    return query.with_hint(table, f"INDEXED BY sqlite_autoindex_{table.name}_1", dialect_name="sqlite")


def tuples_frame(
    rows: Sequence[Sequence[Any]],
    names: Sequence[str],
    *,
    texts: Collection[str] = (),
    days: Collection[str] = (),
    nullable: Collection[str] = (),
) -> pd.DataFrame:
    """Driver tuples as columns named `names`: `texts` as Python objects (not pandas' str, whose
    conversion costs more than it saves; null stays None), `days` (dates, or SQLite's ISO text)
    as datetime64[ns], `nullable` integers as pandas' Int64 (null as NA, every value exact), the
    others int64. Without the cyclic collector (`no_cyclic_gc`: the columns' tuples and arrays of
    objects hold no cycles)."""
    data: dict[str, Any] = {}
    with no_cyclic_gc():
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
        for name, values in zip(names, columns, strict=True):
            if name in texts:
                data[name] = pd.Series(np.array(values, dtype=object), dtype=object)
            elif name in days:  # numpy parses ISO text and converts dates alike
                data[name] = np.array(values, dtype="datetime64[D]").astype("datetime64[ns]")
            elif name in nullable:
                data[name] = pd.array(list(values), dtype="Int64")
            else:
                data[name] = np.fromiter(values, dtype=np.int64, count=len(values))
        return pd.DataFrame(data)


def read_frame(
    connection: Connection,
    query: ClauseElement,
    names: Sequence[str],
    *,
    texts: Sequence[str] = (),
    days: Sequence[str] = (),
) -> pd.DataFrame:
    """The rows of `query` as columns named `names`: `texts` as strings (null is None or NaN),
    `days` as datetime64, the others int64. PostgreSQL sends Arrow (ADBC): no Python object per
    value; the read runs on a connection of its own, so it sees what `connection` sees only when
    nothing can commit in between (the caller holds a lock that keeps writers out). SQLite reads
    through `connection`'s own DB-API cursor."""
    if is_postgresql(connection):
        frame = _arrow_frame(connection, query)
        frame.columns = list(names)
    else:
        frame = _cursor_frame(connection, query, names, texts, days)
    for name in names:
        if name in days:
            frame[name] = frame[name].astype("datetime64[ns]")
        elif name not in texts:
            frame[name] = frame[name].astype(np.int64)
    return frame


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Millions of row tuples hold no cycles, but their allocation triggers the cyclic collector
    over and over (reading a million rows took 3x longer with it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _cursor_frame(
    connection: Connection,
    query: ClauseElement,
    names: Sequence[str],
    texts: Sequence[str],
    days: Sequence[str],
) -> pd.DataFrame:
    with no_cyclic_gc():
        (rows,) = driver_rows(connection, query)  # one batch; exhausting it closes the cursor
        return tuples_frame(rows, names, texts=texts, days=days)


def _arrow_frame(connection: Connection, query: ClauseElement) -> pd.DataFrame:
    import adbc_driver_postgresql.dbapi as adbc

    dialect = postgresql.dialect(paramstyle="numeric_dollar")
    compiled = cast(SQLCompiler, query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}))
    params = [compiled.params[name] for name in compiled.positiontup or ()]
    statement = str(compiled)
    with as_sqlalchemy_errors(statement, adbc.Error, dialect):
        with adbc.connect(adbc_uri(connection)) as arrow, arrow.cursor() as cursor:
            cursor.execute(statement, params)
            table = cursor.fetch_arrow_table()
    return table.to_pandas(date_as_object=False)


@contextmanager
def as_sqlalchemy_errors(statement: str, driver_error: type[Exception], dialect: Any) -> Iterator[None]:
    """The driver's own errors raised as SQLAlchemy's `DBAPIError` subclasses (`OperationalError`,
    `DataError`, ...), the `orig` kept, as SQLAlchemy's own execution raises them: so a read that
    bypasses SQLAlchemy's rows fails like any other query (an overflow is a 409, a lost server a
    503), and callers catch one family. Parameters stay out of the message (`hide_parameters`)."""
    try:
        yield
    except driver_error as error:
        raise DBAPIError.instance(statement, None, error, driver_error, hide_parameters=True, dialect=dialect) from error


def adbc_uri(bind: Connection | Any) -> str:
    """The PostgreSQL URI of a connection's or an engine's database, for ADBC (libpq)."""
    return str(bind.engine.url.set(drivername="postgresql").render_as_string(hide_password=False))


def begin_snapshot(session: Session, *, work_mem: str = "128MB") -> None:
    """Make the session's reads one snapshot: PostgreSQL REPEATABLE READ, with `work_mem` for
    the sorts and hashes of this transaction; on SQLite, a read transaction (the driver would
    otherwise run each SELECT in its own)."""
    if session.in_transaction():
        connection = session.connection()
    elif is_postgresql(session):
        connection = session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    else:
        connection = session.connection()
    if is_sqlite(connection):
        begin_sqlite(connection)
    else:
        connection.exec_driver_sql(f"SET LOCAL work_mem = '{_memory_setting(work_mem)}'")


@contextmanager
def snapshot_reads(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads are one snapshot and take no lock, for a transaction that ends
    with the block: PostgreSQL REPEATABLE READ; on SQLite a read transaction (`BEGIN`, not
    `BEGIN IMMEDIATE`: writers go on meanwhile)."""
    with engine.connect() as connection:
        if is_postgresql(connection):
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            begin_sqlite(connection)
            yield connection


def _memory_setting(value: str) -> str:
    if not value[:-2].isdigit() or value[-2:] not in ("kB", "MB", "GB"):
        raise ValueError(f"not a memory setting: {value!r}")
    return value


def byte_order(session: Session, column: Any) -> Any:
    """`column` sorted by bytes. PostgreSQL sorts by the database's collation: unless that is
    already byte order (C, POSIX, C.UTF-8), ask for "C" (which costs PostgreSQL a sort of its own)."""
    connection = session.connection()
    if not is_postgresql(connection):
        return column
    if "byte_order" not in connection.info:
        collation = connection.exec_driver_sql(
            "SELECT datcollate FROM pg_database WHERE datname = current_database()"
        ).scalar()
        connection.info["byte_order"] = str(collation).lower().replace("-", "") in ("c", "posix", "c.utf8")
    return column if connection.info["byte_order"] else column.collate("C")


def without_index(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """`column` as an expression (`column + 0`) that no index can answer: the planner scans the
    table instead. For a read of most of a table, where walking an index visits its rows in
    random order (SQLite keeps no statistics to choose the scan itself)."""
    return column + 0


def inserted_by_this_transaction(connection: Connection, table: Any) -> ColumnElement[bool] | None:
    """A condition true of the rows of `table` that the connection's open transaction inserted:
    PostgreSQL's `xmin` is this transaction's id (modulo 2**32, as `xmin` is stored). SQLite has
    no such column: None (its one writer at a time lets the caller tell them by seq instead)."""
    if not is_postgresql(connection):
        return None
    xmin = sql_cast(literal_column(f"{table.name}.xmin::text"), BigInteger)
    return xmin == func.txid_current() % 4294967296
