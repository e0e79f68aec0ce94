"""The rollup's SQLite store: events read along the table or through ADBC's SQLite, a rebuild's
rows staged in files beside the database and copied in, secondary indexes set aside while a
tenant alone in the tables is rebuilt."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    Update,
    insert,
    literal,
    literal_column,
    select,
)
from sqlalchemy.exc import OperationalError

from metering.core.db import HINTING
from metering.core.event_columns import EVENT_COLUMNS, TEXT_COLUMNS
from metering.core.tables import events
from metering.rollup.stores.common import (
    ROLLUP_TABLES,
    TableStore,
    arrow_events,
    cost_update,
    events_query,
    key_order,
    other_tenants_in,
    rebuild_frames,
)
from metering.rollup.summary import Summary

STAGE_MIN_TASKS = 50_000
"""Rebuilds of fewer tasks insert their rows directly: staging costs a file and two connections."""
STAGING_PREFIX = ".taskmeter-rebuild-"


class SqliteStore(TableStore):
    """`stage_min_tasks`: the smallest rebuild staged in files. `along_table`: read the events
    along the table (True), through the (tenant_id, seq) index (False), or along the table when
    the tenant is alone in it (None)."""

    def __init__(self, *, stage_min_tasks: int = STAGE_MIN_TASKS, along_table: bool | None = None) -> None:
        self.stage_min_tasks = stage_min_tasks
        self.along_table = along_table

    # --- reading ---------------------------------------------------------------------------------

    def read_events(
        self,
        engine: Engine,
        tenant_id: int,
        after: int,
        upto: int,
        chunk_size: int,
        *,
        own_process: bool = False,
    ) -> Iterator[pd.DataFrame]:
        """Along the table when the tenant is alone in it: SQLite walks the table along seq, its
        rowid, and checks each row's tenant, instead of finding each row in the (tenant_id, seq)
        index and then looking it up in the table.

        `own_process` reads through ADBC's own copy of SQLite (Arrow from SQLite's C API, no
        Python object per value): only in a process that opens the file through nothing else.
        Two SQLite libraries in one process break each other's POSIX locks (closing a file drops
        every lock the process holds on it): reads see stale pages, and writes could corrupt it."""
        fetch = _fetch_arrow if own_process else _fetch_rows
        along = self.along_table if self.along_table is not None else self.alone_in_events(engine, tenant_id, own_process=own_process)
        while after < upto:
            frame = fetch(
                engine,
                events_query(tenant_id, after, upto, chunk_size, along_table=along),
                chunk_size,
                EVENT_COLUMNS,
            )
            if frame.empty:
                return
            yield frame
            after = int(frame["seq"].iloc[-1])

    def alone_in_events(self, engine: Engine, tenant_id: int, *, own_process: bool = False) -> bool:
        """Whether every stored event is the tenant's: then reading its events along the table
        skips nothing. Two probes of the (tenant_id, seq) index, below the tenant and above."""
        fetch = _fetch_arrow if own_process else _fetch_rows
        others = (events.c.tenant_id < tenant_id, events.c.tenant_id > tenant_id)
        return all(fetch(engine, select(events.c.tenant_id).where(other).limit(1), 1, ("tenant_id",)).empty for other in others)

    # --- writing ---------------------------------------------------------------------------------

    @contextmanager
    def transaction(
        self, engine: Engine, tenant_id: int, *, replacing: Summary | None
    ) -> Iterator[Connection]:
        with engine.connect() as connection, self._staged(connection, replacing), connection.begin():
            # A larger page cache keeps the B-tree pages of large deletes and inserts in memory.
            connection.exec_driver_sql("PRAGMA cache_size = -262144")
            yield connection

    def replace_tenant(self, connection: Connection, tenant_id: int, summary: Summary | None) -> int:
        with _secondary_indexes_set_aside(connection, tenant_id) as alone:
            self.delete_tenant(connection, tenant_id, whole_tables=alone)
            if summary is not None and self._attached(connection):
                self.copy_staged(connection, tenant_id)
                return len(summary.tasks)
            if summary is not None:
                return self.write(connection, tenant_id, summary, replace_all=True)
            return 0

    def refresh_statistics(self, engine: Engine) -> None:
        """ANALYZE every index of the tables (a rebuild may have created them anew, without
        statistics). Not sampled (`analysis_limit`): a sample of one tenant's rows made tenant_id
        look 1,000 times more selective than it is. A busy database keeps its old statistics."""
        try:
            with engine.connect() as connection:
                for table in ROLLUP_TABLES:
                    connection.exec_driver_sql(f"ANALYZE {table.name}")
                connection.commit()
        except OperationalError:
            pass

    # --- staging ---------------------------------------------------------------------------------

    def staging_schema(self, table: str) -> str:
        """The schema a rollup table's staging file is attached as."""
        return f"staged_{table}"

    @contextmanager
    def _staged(self, connection: Connection, summary: Summary | None) -> Iterator[None]:
        """A rebuild's rows, written beforehand into staging files beside the database by ADBC
        (Arrow columns into SQLite in C, no Python object per value), one file per rollup table,
        written side by side by threads (ADBC writes without the GIL), and attached to
        `connection`, so that the rebuild's transaction copies them with one INSERT ... SELECT
        per table (`copy_staged`).

        ATTACH and DETACH are not allowed inside a transaction: the files are attached before
        the rebuild's transaction begins and detached after it ends, committed or not. ADBC has
        closed the staging files before sqlite3 opens them (see `read_events`). Nothing is staged
        for an in-memory database or a rebuild of fewer than `stage_min_tasks` tasks."""
        database = connection.engine.url.database
        if summary is None or len(summary.tasks) < self.stage_min_tasks or database in (None, "", ":memory:"):
            yield
            return
        folder = os.path.dirname(os.path.abspath(str(database)))
        _remove_dead_staging(folder)
        paths: dict[str, str] = {}
        try:
            for table in ROLLUP_TABLES:
                handle, paths[table.name] = tempfile.mkstemp(
                    prefix=f"{STAGING_PREFIX}{os.getpid()}-", suffix=".db", dir=folder
                )
                os.close(handle)
            _stage(paths, summary)
            attached: list[str] = []
            try:
                for table in ROLLUP_TABLES:
                    # A schema's name cannot be a bound parameter; these are the tables' own names.
                    connection.exec_driver_sql(
                        f"ATTACH DATABASE ? AS {self.staging_schema(table.name)}", (paths[table.name],)
                    )
                    attached.append(table.name)
                connection.commit()  # ends SQLAlchemy's transaction around the ATTACHes; sqlite3 began none
                yield
            finally:
                if connection.in_transaction():
                    connection.rollback()
                for name in attached:  # all of them, or those attached before one failed
                    connection.exec_driver_sql(f"DETACH DATABASE {self.staging_schema(name)}")
                connection.commit()
        finally:
            for path in paths.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def shift_costs(self, connection: Connection, tenant_id: int, table: Table, keys: Sequence[str], changes: pd.DataFrame) -> int:
        """One UPDATE by key (`cost_update`, compiled once) run by the driver's `executemany` over
        the changes in key order: SQLite reuses the prepared statement, and each row is one
        seek and rewrite of the table's B-tree (a temporary table and UPDATE ... FROM cost ~15%
        more: the changes inserted, then the join materialized). Each key value goes through its
        column type's bind processor, as SQLAlchemy's own execution would; days read as
        datetime64 (`read_buckets`) become the ISO text SQLite stores directly.

        The row is found by the table's primary key (`primary_key_update`): a secondary index
        that ends with the key's columns (`ix_task_usage_detail_tenant_day`, `ix_usage_daily_tenant_day`)
        matches every term of the WHERE too, and SQLite's planner prefers it (narrower rows),
        which costs a seek of that index and then one of the table per row, in the index's
        (day) order instead of the table's: 12 M events, 317k detail rows, 3.4 s -> 2.0 s."""
        if changes.empty:
            return 0
        dialect = connection.dialect
        changes = key_order(changes, tuple(keys), True)  # the table's pages visited in key order, once each
        compiled = primary_key_update(table, keys).compile(dialect=HINTING)
        columns: dict[str, list[Any]] = {"tenant": [tenant_id] * len(changes)}
        for name in (*keys, "d_nanos", "d_rem", "d_unpriced"):
            bound = f"k_{name}" if name in keys else name
            if pd.api.types.is_datetime64_any_dtype(changes[name].dtype):  # days, as the ISO text SQLite stores
                columns[bound] = np.datetime_as_string(changes[name].to_numpy().astype("datetime64[D]"), unit="D").tolist()
                continue
            values = changes[name].tolist()
            processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect) if name in keys else None
            columns[bound] = [processor(v) for v in values] if processor is not None else values
        rows = list(zip(*[columns[name] for name in compiled.positiontup or ()], strict=True))
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(str(compiled), rows)
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def _attached(self, connection: Connection) -> bool:
        schemas = {row[1] for row in connection.exec_driver_sql("PRAGMA database_list")}
        return all(self.staging_schema(table.name) in schemas for table in ROLLUP_TABLES)

    def copy_staged(self, connection: Connection, tenant_id: int) -> None:
        """Copy the staged rows into the rollup tables, in key order."""
        for table in ROLLUP_TABLES:
            names = [column.name for column in table.columns if column.name != "tenant_id"]
            source = Table(
                table.name,
                MetaData(),
                *(Column(name) for name in names),
                schema=self.staging_schema(table.name),
            )
            rows = select(literal(tenant_id, Integer), *source.c).order_by(literal_column("rowid"))
            connection.execute(insert(table).from_select(["tenant_id", *names], rows))


def primary_key_update(table: Table, keys: Sequence[str]) -> Update:
    """`cost_update` finding its row by the primary key of `table` (a WITHOUT ROWID table):
    `INDEXED BY` the index SQLite makes for its PRIMARY KEY constraint (its first and only
    automatic index). Compile it with `HINTING`."""
    if table.dialect_options["sqlite"]["with_rowid"] is not False:
        raise ValueError(f"{table.name} is not a WITHOUT ROWID table")
    return cost_update(table, keys).with_hint(f"INDEXED BY sqlite_autoindex_{table.name}_1", dialect_name="sqlite")


@contextmanager
def _secondary_indexes_set_aside(connection: Connection, tenant_id: int) -> Iterator[bool]:
    """While the only tenant in the rollup tables is rebuilt, drop the tables' secondary indexes
    for the delete and the inserts and create them again afterwards, in the same transaction
    (SQLite's DDL is transactional: a failed run rolls the drops back too); one sort per index
    instead of index upkeep row by row. With other tenants' rows in the tables, the indexes
    stay: rebuilding them would cost those rows too. Yields whether the tenant is alone."""
    if other_tenants_in(connection, ROLLUP_TABLES, tenant_id):
        yield False
        return
    indexes = [
        index for table in ROLLUP_TABLES for index in sorted(table.indexes, key=lambda index: str(index.name))
    ]
    for index in indexes:
        index.drop(connection, checkfirst=True)
    yield True
    for index in indexes:
        index.create(connection)


def _remove_dead_staging(folder: str) -> None:
    """Staging files left by a rollup process that was killed (named by its process id); the
    files of running processes stay."""
    for name in os.listdir(folder):
        if not name.startswith(STAGING_PREFIX):
            continue
        pid = name.removeprefix(STAGING_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stage(paths: dict[str, str], summary: Summary) -> None:
    """Each rollup table's rebuild rows into a table of the same name in its file (`paths`, by
    table name), in primary-key order, with the table's own column types (texts, integers, days
    as ISO text as SQLAlchemy stores a SQLite Date). Three threads: converting a frame to Arrow
    holds the GIL, sorting and writing do not."""
    with ThreadPoolExecutor(len(ROLLUP_TABLES)) as pool:
        futures = [
            pool.submit(_stage_table, paths[table.name], table, frame, keys)
            for table, frame, keys in rebuild_frames(summary)
        ]
        for future in futures:
            future.result()


def _stage_table(path: str, table: Table, frame: pd.DataFrame, keys: tuple[str, ...]) -> None:
    import adbc_driver_sqlite.dbapi as adbc

    rows = _arrow_rows(frame, [column for column in table.columns if column.name != "tenant_id"])
    # Key order, as `key_order` (code points; days as ISO text sort as dates), sorted by Arrow.
    rows = rows.take(pc.sort_indices(rows, sort_keys=[(name, "ascending") for name in keys]))
    # A scratch file: no journal, no syncs (autocommit: these pragmas refuse a transaction).
    with adbc.connect(path, autocommit=True) as staging, staging.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode = OFF")
        cursor.execute("PRAGMA synchronous = OFF")
        cursor.adbc_ingest(table.name, rows, mode="create")


def _arrow_rows(frame: pd.DataFrame, columns: Sequence[Column[Any]]) -> pa.Table:
    arrays = {}
    for column in columns:
        values = frame[column.name]
        if column.type.python_type is str:
            arrays[column.name] = pa.array(values, type=pa.string(), from_pandas=True)
        elif pd.api.types.is_datetime64_any_dtype(values.dtype):
            arrays[column.name] = pa.array(values.to_numpy().astype("datetime64[D]")).cast(pa.string())
        else:  # integers, NULL where missing (a float column with NaN must hold whole numbers)
            arrays[column.name] = pa.array(values, from_pandas=True).cast(pa.int64())
    return pa.table(arrays)


# --- reading -----------------------------------------------------------------------------------


def _compiled(engine: Engine, query: Any) -> tuple[str, list[Any]]:
    compiled = query.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    return str(compiled), [compiled.params[name] for name in compiled.positiontup or ()]


def _fetch_rows(engine: Engine, query: Any, limit: int, names: Sequence[str]) -> pd.DataFrame:
    """Through the engine's `sqlite3`: one Python object per value."""
    statement, params = _compiled(engine, query)
    raw = engine.raw_connection()
    blocks = []
    try:
        cursor = raw.cursor()
        cursor.execute(statement, tuple(params))
        while rows := cursor.fetchmany(100_000):
            blocks.append(np.array(rows, dtype=object))
        cursor.close()
    finally:
        raw.close()
    table = np.concatenate(blocks) if blocks else np.empty((0, len(names)), dtype=object)
    return _columns_frame(table, names)


def _columns_frame(table: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """A 2-D object array of rows as typed columns: int64 numbers, categorical texts."""
    data: dict[str, Any] = {}
    for index, name in enumerate(names):
        column = table[:, index]
        if name in TEXT_COLUMNS:
            codes, uniques = pd.factorize(column, sort=False)
            data[name] = pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object))
        else:
            data[name] = column.astype(np.int64)
    return pd.DataFrame(data)


def _fetch_arrow(engine: Engine, query: Any, limit: int, names: Sequence[str]) -> pd.DataFrame:
    """Arrow straight from SQLite's C API (ADBC). See `SqliteStore.read_events`."""
    import adbc_driver_sqlite.dbapi as adbc

    statement, params = _compiled(engine, query)
    with adbc.connect(engine.url.database) as connection, connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout = 30000")  # as make_engine's connections wait
        # The driver infers each column's type from its first batch and fails on a later batch
        # that disagrees (a text column whose first rows are all NULL). One batch for the whole
        # chunk (the query has a LIMIT) lets the inference see every row.
        cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(max(limit, 1))})
        cursor.execute(statement, params)
        table = cursor.fetch_arrow_table()
    return arrow_events(table) if tuple(names) == EVENT_COLUMNS else table.to_pandas()
