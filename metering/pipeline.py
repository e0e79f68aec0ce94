"""The rollup: new events since the watermark → priced → merged into the rollup tables.

A run reads the events of one tenant past its watermark, in chunks, prices them with the
tenant's price book, summarizes them (`metering.rollup`), and writes the result and the new
watermark in ONE transaction: a run killed mid-way leaves nothing behind, and the next run does
the same work again. The watermark only moves by compare-and-set, so two concurrent runs never
both apply the same events. When the tenant's prices change, the next run rebuilds the tenant's
rollup from the first event, so unpriced events become priced once a price is added.

A stored event that cannot be rolled up (`metering.quarantine`: a time outside what every layer
can represent, impossible token counts) is left out of the summary and moved to the quarantine
in the transaction that advances the watermark: one such event never stops a tenant's rollup.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version as package_version
from multiprocessing import get_context
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql as pgsql
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from metering import quarantine
from metering.bulk import write_frame
from metering.db import make_engine
from metering.errors import Conflict
from metering.ingest import ingest_lock_key
from metering.prices import EVENT_COLUMNS as PRICED_COLUMNS
from metering.prices import price_usage
from metering.ratecards import PriceBook
from metering.rollup import (
    DAILY_KEYS,
    DETAIL_KEYS,
    TASK_COLUMNS,
    USAGE_COLUMNS,
    Summary,
    merge_additive,
    merge_tasks,
    summarize,
)
from metering.tables import (
    NAMING_CONVENTION,
    events,
    rollup_state,
    task_usage,
    task_usage_detail,
    usage_daily,
)
from metering.tenant_prices import stored_price_settings
from metering.tenants import Tenant

EVENT_COLUMNS = (
    "seq", "time_us", "type", "customer", "task", "task_type", "provider", "model",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cache_write_1h_tokens",
)  # fmt: skip
DEFAULT_CHUNK = 2_000_000
PARALLEL_MIN_EVENTS = 2_000_000
"""A backlog this large is split between worker processes."""
ROLLUP_TABLES = (task_usage, task_usage_detail, usage_daily)


class RollupConflict(Conflict):
    """Another rollup of the tenant moved the watermark first; this run's work was discarded."""


@dataclass
class RollupResult:
    tenant: str
    events_read: int = 0
    tasks_updated: int = 0
    watermark: int = 0
    rebuilt: bool = False
    unpriced_models: list[dict[str, Any]] = field(default_factory=list)
    quarantined: int = 0  # events moved to the quarantine by this run
    seconds: float = 0.0


def tenant_overrides(connection: Connection, tenant_id: int) -> list[dict[str, Any]]:
    """The tenant's prices and model aliases (`metering.tenant_prices`), as `PriceBook` takes them."""
    return stored_price_settings(connection, tenant_id)


def price_version(overrides: list[dict[str, str]]) -> str:
    """Names the prices in force: the genai-prices release and a digest of the tenant's prices."""
    digest = hashlib.sha256(repr(overrides).encode()).hexdigest()[:12]
    return f"genai-prices@{package_version('genai-prices')}+tenant:{digest}"


def price_book(connection: Connection, tenant_id: int) -> tuple[PriceBook, str]:
    """The tenant's price book (its prices over genai-prices' snapshot) and its version."""
    overrides = tenant_overrides(connection, tenant_id)
    return PriceBook(overrides), price_version(overrides)


def rollup_tenant(
    engine: Engine,
    tenant: Tenant,
    *,
    now: datetime,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int, int], None] | None = None,
    after_chunk: Callable[[int], None] | None = None,
) -> RollupResult:
    """Bring the tenant's rollup tables up to the newest committed event.

    `progress(done, total)` reports events read; `after_chunk(n)` runs after each chunk is
    summarized (tests use it to crash a run mid-way).
    """
    started = time.perf_counter()
    result = RollupResult(tenant=tenant.name)
    with engine.connect() as connection:
        _ensure_state(connection, tenant.id, now)
        state = connection.execute(select(rollup_state).where(rollup_state.c.tenant_id == tenant.id)).one()
        overrides = tenant_overrides(connection, tenant.id)
    book, version = PriceBook(overrides), price_version(overrides)
    rebuild = version != state.price_version
    start = 0 if rebuild else state.watermark_seq
    end = _newest_committed_seq(engine, tenant.id)
    result.watermark, result.rebuilt = state.watermark_seq, rebuild
    if end <= start and not rebuild:
        result.seconds = time.perf_counter() - started
        return result

    scan = _only_tenant_in_events(engine, tenant.id)
    if end - start >= PARALLEL_MIN_EVENTS and after_chunk is None and (os.cpu_count() or 1) > 1:
        summary, unpriced, result.events_read, unprocessable = _summarize_in_workers(
            engine, tenant, overrides, start, end, chunk_size, scan=scan
        )
        if progress is not None:
            progress(end - start, end - start)
    else:
        summary, unpriced, result.events_read, unprocessable = _summarize_range(
            engine, tenant.id, tenant.timezone, book, start, end, chunk_size, progress, after_chunk, scan=scan
        )

    with engine.connect() as connection, _staged_on_sqlite(connection, tenant.id, summary if rebuild else None) as staged, connection.begin():
        moved = connection.execute(
            update(rollup_state)
            .where(
                rollup_state.c.tenant_id == tenant.id,
                rollup_state.c.watermark_seq == state.watermark_seq,
                rollup_state.c.price_version == state.price_version,
            )
            .values(watermark_seq=max(end, start), price_version=version, updated_at=now)
            .execution_options(preserve_rowcount=True)
        ).rowcount
        if moved != 1:
            raise RollupConflict(f"another rollup of tenant {tenant.name!r} ran at the same time; nothing was written")
        if unprocessable:
            result.quarantined = quarantine.move(connection, tenant.id, unprocessable, now=now)
        if connection.dialect.name == "sqlite":
            # A larger page cache keeps the B-tree pages of large deletes and inserts in memory.
            connection.exec_driver_sql("PRAGMA cache_size = -262144")
        if rebuild and summary is not None and _alone_on_postgres(connection, tenant.id):
            result.tasks_updated = _rebuild_by_swap(connection, tenant.id, summary)
        else:
            with _secondary_indexes_set_aside(connection, tenant.id, rebuild=rebuild) as alone:
                if rebuild:
                    for table in ROLLUP_TABLES:
                        # Alone in the tables, the tenant's rows are all their rows: a DELETE with no
                        # WHERE frees the pages as they are (SQLite's truncate optimization: 0.8 s
                        # instead of 3-4 s for 4.9 M rows). The transaction holds the write lock.
                        connection.execute(delete(table) if alone else delete(table).where(table.c.tenant_id == tenant.id))
                if staged:
                    _insert_staged(connection, tenant.id)
                    result.tasks_updated = len(summary.tasks)  # type: ignore[union-attr]
                elif summary is not None:
                    result.tasks_updated = _write(connection, tenant.id, summary, replace_all=rebuild)
    if rebuild:
        _refresh_statistics(engine)
    result.watermark = max(end, start)
    result.unpriced_models = [
        {"provider": p, "model": m, "events": n} for (p, m), n in sorted(unpriced.items())
    ]
    result.seconds = time.perf_counter() - started
    return result


UP_TO_DATE_ATTEMPTS = 5


def bring_up_to_date(engine: Engine, tenant: Tenant, *, now: datetime, attempts: int = UP_TO_DATE_ATTEMPTS) -> RollupResult:
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
            return rollup_tenant(engine, tenant, now=now)
        except RollupConflict:
            continue  # the other rollup has committed: roll up what it did not
    return rollup_tenant(engine, tenant, now=now)


def _summarize_range(
    engine: Engine,
    tenant_id: int,
    timezone: str,
    book: PriceBook,
    start: int,
    end: int,
    chunk_size: int,
    progress: Callable[[int, int], None] | None = None,
    after_chunk: Callable[[int], None] | None = None,
    *,
    sqlite_arrow: bool = False,
    scan: bool = False,
) -> tuple[Summary | None, dict[tuple[str, str], int], int, dict[int, list[int]]]:
    """Read, price and summarize the events with start < seq <= end, chunk by chunk; the seqs of
    those that cannot be rolled up come back by reason (`metering.quarantine`), left out."""
    summary: Summary | None = None
    unpriced: dict[tuple[str, str], int] = {}
    unprocessable: dict[int, list[int]] = {}
    read = 0
    for number, frame in enumerate(_read_events(engine, tenant_id, start, end, chunk_size, sqlite_arrow=sqlite_arrow, scan=scan)):
        last_seq = int(frame["seq"].iloc[-1])
        read += len(frame)
        frame = quarantine.split(frame, unprocessable)
        if not frame.empty:
            part = summarize(_price(frame, book, unpriced), timezone)
            summary = part if summary is None else _combine(summary, part)
        if progress is not None:
            progress(last_seq - start, end - start)
        if after_chunk is not None:
            after_chunk(number)
    return summary, unpriced, read, unprocessable


def _worker_range(
    url: str, tenant_id: int, timezone: str, overrides: list[dict[str, str]], start: int, end: int, chunk_size: int, scan: bool
) -> tuple[Summary | None, dict[tuple[str, str], int], int, dict[int, list[int]]]:
    """A worker process's share of a large rollup: its own engine, the same prices. The process
    touches the database only through ADBC, so it may read SQLite with ADBC's SQLite."""
    engine = make_engine(url)
    try:
        return _summarize_range(engine, tenant_id, timezone, PriceBook(overrides), start, end, chunk_size, sqlite_arrow=True, scan=scan)
    finally:
        engine.dispose()


def keep_freed_memory() -> None:
    """In a worker process (it lives for one rollup): glibc's malloc keeps the memory that
    numpy and pandas free, instead of unmapping each large array and mapping fresh zeroed pages
    for the next one. On the 2-core VM every first touch of a page is a fault, and faults were
    most of the pricing's time (2.7 s of system time in a 3.6 s pass; 0.6 s with this set). Two
    workers side by side: 20.0 s and 21.6 s → 18.1 s and 18.7 s, ~60 MB more peak memory each.
    Nothing happens where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_MAX, 0)  # large blocks from the heap, not one mapping each
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # freed heap stays mapped for the next allocation


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h


def _summarize_in_workers(
    engine: Engine, tenant: Tenant, overrides: list[dict[str, str]], start: int, end: int, chunk_size: int, *, scan: bool
) -> tuple[Summary | None, dict[tuple[str, str], int], int, dict[int, list[int]]]:
    """Split a large range of seqs between processes (reading and pricing use one core each)."""
    workers = min(os.cpu_count() or 1, 4)
    bounds = [start + (end - start) * i // workers for i in range(workers + 1)]
    url = engine.url.render_as_string(hide_password=False)
    # spawn, not fork: the server process has threads (uvicorn, the scheduler).
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=keep_freed_memory) as pool:
        futures = [
            pool.submit(_worker_range, url, tenant.id, tenant.timezone, overrides, lo, hi, chunk_size, scan)
            for lo, hi in zip(bounds, bounds[1:], strict=False)
        ]
        parts = [future.result() for future in futures]
    summary: Summary | None = None
    unpriced: dict[tuple[str, str], int] = {}
    unprocessable: dict[int, list[int]] = {}
    for part, missing, _, set_aside in parts:
        if part is not None:
            summary = part if summary is None else _combine(summary, part)
        for key, count in missing.items():
            unpriced[key] = unpriced.get(key, 0) + count
        for code, seqs in set_aside.items():
            unprocessable.setdefault(code, []).extend(seqs)
    return summary, unpriced, sum(read for _, _, read, _ in parts), unprocessable


@contextmanager
def _secondary_indexes_set_aside(connection: Connection, tenant_id: int, *, rebuild: bool) -> Iterator[bool]:
    """On a SQLite rebuild of the only tenant in the rollup tables, drop the tables' secondary
    indexes for the delete and the inserts and create them again afterwards, in the same
    transaction (SQLite's DDL is transactional: a failed run rolls the drops back too). For a
    12M-event rebuild, deleting and inserting 4.9 M rows took 63 s with the indexes kept up to
    date row by row, 37 s with them set aside (7 s of it creating them). With other tenants'
    rows in the tables, the indexes stay: rebuilding them would cost those rows too. Yields
    whether the tenant is alone (and its indexes set aside)."""
    if not rebuild or connection.dialect.name != "sqlite" or _other_tenants_rolled_up(connection, tenant_id):
        yield False
        return
    indexes = [index for table in ROLLUP_TABLES for index in sorted(table.indexes, key=lambda index: str(index.name))]
    for index in indexes:
        index.drop(connection, checkfirst=True)
    yield True
    for index in indexes:
        index.create(connection)


@contextmanager
def _staged_on_sqlite(connection: Connection, tenant_id: int, summary: Summary | None) -> Iterator[bool]:
    """A SQLite rebuild's rows, written beforehand into staging files beside the database by
    ADBC (Arrow columns into SQLite in C, no Python object per value), one file per rollup
    table, written side by side by threads (ADBC writes without the GIL), and attached to
    `connection`, so that the rebuild's transaction copies them with one INSERT ... SELECT per
    table (`_insert_staged`). Python's sqlite3 binding 4.9 M rows of ~15 values took ~30 s of
    a 12M-event rebuild; staging and copying them, about half that.

    ATTACH and DETACH are not allowed inside a transaction: the files are attached before the
    rebuild's transaction begins and detached after it ends, committed or not. ADBC has closed
    the staging files before sqlite3 opens them (two SQLite libraries must not hold one file
    open in one process, see `_read_events`). Yields whether the rows are staged: not for an
    in-memory database or a small rebuild (`STAGE_MIN_TASKS`), which take the usual inserts."""
    database = connection.engine.url.database
    if connection.dialect.name != "sqlite" or summary is None or len(summary.tasks) < STAGE_MIN_TASKS or database in (None, "", ":memory:"):
        yield False
        return
    folder = os.path.dirname(os.path.abspath(str(database)))
    _remove_dead_staging(folder)
    paths: dict[str, str] = {}
    try:
        for table in ROLLUP_TABLES:
            handle, paths[table.name] = tempfile.mkstemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", suffix=".db", dir=folder)
            os.close(handle)
        _stage(paths, summary)
        attached: list[str] = []
        try:
            for table in ROLLUP_TABLES:
                connection.exec_driver_sql(_ATTACH[table.name], (paths[table.name],))
                attached.append(table.name)
            connection.commit()  # ends SQLAlchemy's transaction around the ATTACHes; sqlite3 began none
            yield True
        finally:
            if connection.in_transaction():
                connection.rollback()
            for name in attached:  # all of them, or those attached before one failed
                connection.exec_driver_sql(_DETACH[name])
            connection.commit()
    finally:
        for path in paths.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


# Each rollup table's staging file, attached under a schema of its own (constant statements:
# an attached schema's name cannot be a bound parameter).
_ATTACH = {
    "task_usage": "ATTACH DATABASE ? AS staged_task_usage",
    "task_usage_detail": "ATTACH DATABASE ? AS staged_task_usage_detail",
    "usage_daily": "ATTACH DATABASE ? AS staged_usage_daily",
}
_DETACH = {
    "task_usage": "DETACH DATABASE staged_task_usage",
    "task_usage_detail": "DETACH DATABASE staged_task_usage_detail",
    "usage_daily": "DETACH DATABASE staged_usage_daily",
}


_STAGING_PREFIX = ".taskmeter-rebuild-"


def _remove_dead_staging(folder: str) -> None:
    """Staging files left by a rollup process that was killed (named by its process id); the
    files of running processes stay."""
    for name in os.listdir(folder):
        if not name.startswith(_STAGING_PREFIX):
            continue
        pid = name.removeprefix(_STAGING_PREFIX).split("-", 1)[0]
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


STAGE_MIN_TASKS = 50_000
"""Rebuilds of fewer tasks insert their rows directly: staging costs a file and two connections."""


def _stage(paths: dict[str, str], summary: Summary) -> None:
    """Each rollup table's rebuild rows into a table of the same name in its file (`paths`, by
    table name), in primary-key order, with the table's own column types (texts, integers, days
    as ISO text as SQLAlchemy stores a SQLite Date). Three threads: converting a frame to Arrow
    holds the GIL, sorting and writing do not (12M-event rebuild: 10.5 s one table after the
    other, sorted in pandas)."""
    with ThreadPoolExecutor(len(ROLLUP_TABLES)) as pool:
        futures = [pool.submit(_stage_table, paths[table.name], table, frame, keys) for table, frame, keys in _rebuild_frames(summary)]
        for future in futures:
            future.result()


def _stage_table(path: str, table: Table, frame: pd.DataFrame, keys: tuple[str, ...]) -> None:
    import adbc_driver_sqlite.dbapi as adbc

    rows = _arrow_rows(frame, [column for column in table.columns if column.name != "tenant_id"])
    # Key order, as `_key_order` (code points; days as ISO text sort as dates), sorted by Arrow.
    rows = rows.take(pc.sort_indices(rows, sort_keys=[(name, "ascending") for name in keys]))
    # A scratch file: no journal, no syncs (autocommit: these pragmas refuse a transaction).
    with adbc.connect(path, autocommit=True) as staging, staging.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode = OFF")
        cursor.execute("PRAGMA synchronous = OFF")
        cursor.adbc_ingest(table.name, rows, mode="create")


def _rebuild_frames(summary: Summary) -> tuple[tuple[Table, pd.DataFrame, tuple[str, ...]], ...]:
    return ((task_usage, summary.tasks, ("task",)), (task_usage_detail, summary.detail, DETAIL_KEYS), (usage_daily, summary.daily, DAILY_KEYS))


def _arrow_rows(frame: pd.DataFrame, columns: Sequence[Column]) -> pa.Table:
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


def _insert_staged(connection: Connection, tenant_id: int) -> None:
    """Copy the staged rows (`_staged_on_sqlite`) into the rollup tables, in key order."""
    for table in ROLLUP_TABLES:
        names = [column.name for column in table.columns if column.name != "tenant_id"]
        source = Table(table.name, MetaData(), *(Column(name) for name in names), schema=f"staged_{table.name}")
        rows = select(literal(tenant_id, Integer), *source.c).order_by(literal_column("rowid"))
        connection.execute(insert(table).from_select(["tenant_id", *names], rows))


def _alone_on_postgres(connection: Connection, tenant_id: int) -> bool:
    """On PostgreSQL, whether the tenant is alone in the rollup tables, asked under a lock that
    keeps other writers out of them until the transaction ends (readers go on)."""
    if connection.dialect.name != "postgresql":
        return False
    connection.exec_driver_sql("LOCK TABLE task_usage, task_usage_detail, usage_daily IN EXCLUSIVE MODE")
    return not _other_tenants_rolled_up(connection, tenant_id)


def _rebuild_by_swap(connection: Connection, tenant_id: int, summary: Summary) -> int:
    """A PostgreSQL rebuild of the only tenant in the rollup tables: the rows go into new tables
    without indexes, which get their primary key and indexes afterwards (one sort each), and then
    take the old tables' place and names, all in the rollup's transaction. Readers see the old
    rows until the commit and wait only for the swap itself. Deleting and inserting 4.9 M rows in
    place took ~45 s (index upkeep row by row, unique checks against the rows just deleted)."""
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def run(statement: str, *names: str) -> None:
        cursor.execute(pgsql.SQL(statement).format(*(pgsql.Identifier(name) for name in names)))

    def columns(names: Sequence[str]) -> pgsql.Composable:
        return pgsql.SQL(", ").join(pgsql.Identifier(name) for name in names)

    # Index builds sort in memory rather than on disk (the default is 64 MB); this transaction only.
    cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
    staged = {table: _staging(table) for table in ROLLUP_TABLES}
    for table, stage in staged.items():
        run("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)", stage.name, table.name)
    written = _write(connection, tenant_id, summary, replace_all=True, into=staged)
    for table, stage in staged.items():
        cursor.execute(pgsql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
            pgsql.Identifier(stage.name), pgsql.Identifier(_staged_name(_pk_name(table))),
            columns([column.name for column in table.primary_key.columns]),
        ))  # fmt: skip
        for index in table.indexes:
            cursor.execute(pgsql.SQL("CREATE {}INDEX {} ON {} ({})").format(
                pgsql.SQL("UNIQUE " if index.unique else ""), pgsql.Identifier(_staged_name(str(index.name))),
                pgsql.Identifier(stage.name), columns([column.name for column in index.columns]),
            ))  # fmt: skip
    for table, stage in staged.items():
        run("DROP TABLE {}", table.name)
        run("ALTER TABLE {} RENAME TO {}", stage.name, table.name)
        run("ALTER TABLE {} RENAME CONSTRAINT {} TO {}", table.name, _staged_name(_pk_name(table)), _pk_name(table))
        for index in table.indexes:
            run("ALTER INDEX {} RENAME TO {}", _staged_name(str(index.name)), str(index.name))
    return written


def _staging(table: Table) -> Table:
    """A table of the same columns, under the staging name (for writing into it)."""
    return Table(_staged_name(table.name), MetaData(), *(Column(c.name, c.type, nullable=c.nullable) for c in table.columns))


def _staged_name(name: str) -> str:
    return f"{name}__rebuild"


def _pk_name(table: Table) -> str:
    return NAMING_CONVENTION["pk"] % {"table_name": table.name}


def _other_tenants_rolled_up(connection: Connection, tenant_id: int) -> bool:
    """Whether any rollup table holds another tenant's rows."""
    return _other_tenants_in(connection, ROLLUP_TABLES, tenant_id)


def _other_tenants_in(connection: Connection, tables: Sequence[Table], tenant_id: int) -> bool:
    """Whether any of `tables` holds another tenant's rows: two probes of each table's index
    that leads with tenant_id, one below the tenant and one above."""
    return any(
        connection.execute(select(table.c.tenant_id).where(other).limit(1)).first() is not None
        for table in tables
        for other in (table.c.tenant_id < tenant_id, table.c.tenant_id > tenant_id)
    )


def _refresh_statistics(engine: Engine) -> None:
    """Fresh statistics for the query planner after a rebuild (a tenant's first run is one);
    best effort (SQLite needs the write lock for it, and a busy database simply keeps its old
    statistics until the next rebuild). Without them, PostgreSQL plans the reports' joins over
    freshly bulk-loaded tables as if they were empty: a nested loop that took 40 s instead of
    70 ms for 15,000 tasks (found by tests/reliability/test_load.py)."""
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("ANALYZE task_usage, task_usage_detail, usage_daily")
                connection.commit()
            else:
                # Every index of the tables (a rebuild may have created them anew, without
                # statistics). Not sampled (`analysis_limit`): a sample of one tenant's rows
                # made tenant_id look 1,000 times more selective than it is.
                connection.exec_driver_sql("ANALYZE task_usage")
                connection.exec_driver_sql("ANALYZE task_usage_detail")
                connection.exec_driver_sql("ANALYZE usage_daily")
                connection.commit()
    except OperationalError:
        pass


def _ensure_state(connection: Connection, tenant_id: int, now: datetime) -> None:
    dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(
        dialect_insert(rollup_state)
        .values(tenant_id=tenant_id, watermark_seq=0, price_version="", updated_at=now)
        .on_conflict_do_nothing(index_elements=["tenant_id"])
    )
    connection.commit()


def _newest_committed_seq(engine: Engine, tenant_id: int) -> int:
    """The highest seq below which every event of the tenant is committed.

    On SQLite one writer at a time assigns seqs and commits in order. On PostgreSQL a transaction
    can commit seq 11 while seq 10 is still in flight, so the read waits for in-flight ingest
    transactions (which hold the tenant's advisory lock shared) to finish.
    """
    # Newest first along the primary key: stops at the tenant's latest event instead of scanning.
    query = select(events.c.seq).where(events.c.tenant_id == tenant_id).order_by(events.c.seq.desc()).limit(1)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(ingest_lock_key(tenant_id))))
        return int(connection.execute(query).scalar() or 0)


def _only_tenant_in_events(engine: Engine, tenant_id: int) -> bool:
    """On SQLite, whether every stored event is the tenant's: then reading its events along the
    table (`_read_events`'s `scan`) skips nothing."""
    if engine.dialect.name != "sqlite":
        return False
    with engine.connect() as connection:
        return not _other_tenants_in(connection, (events,), tenant_id)


def _read_events(
    engine: Engine, tenant_id: int, after: int, upto: int, chunk_size: int, *, sqlite_arrow: bool = False, scan: bool = False
) -> Iterator[pd.DataFrame]:
    """The tenant's events with after < seq <= upto, in seq order, a chunk at a time.

    `scan` (`_only_tenant_in_events`) has SQLite walk the table along seq, its rowid, and check
    each row's tenant, instead of finding each row from the (tenant_id, seq) index and then
    looking it up in the table: 2.3 s instead of 2.8-3.4 s for 2M events.

    `sqlite_arrow` reads a SQLite file through ADBC's own copy of SQLite: only in a process that
    opens the file through nothing else (a worker, `_worker_range`). Two SQLite libraries in one
    process break each other's POSIX locks (closing a file drops every lock the process holds
    on it): reads see stale pages, and writes could corrupt the file.
    """
    while after < upto:
        query = (
            select(*[events.c[name] for name in EVENT_COLUMNS])
            # `tenant_id + 0`: an expression, which SQLite cannot look up in an index.
            .where((events.c.tenant_id + 0 if scan else events.c.tenant_id) == tenant_id, events.c.seq > after, events.c.seq <= upto)
            .order_by(events.c.seq)
            .limit(chunk_size)
        )
        if engine.dialect.name == "postgresql":
            frame = _fetch_postgres(engine, query)
        elif sqlite_arrow:
            frame = _fetch_sqlite_arrow(engine, query, chunk_size)
        else:
            frame = _fetch_sqlite(engine, query)
        if frame.empty:
            return
        yield frame
        after = int(frame["seq"].iloc[-1])


def _fetch_sqlite(engine: Engine, query: Any) -> pd.DataFrame:
    """Through the engine's `sqlite3`: one Python object per value (~3.5 µs per event)."""
    compiled = query.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    raw = engine.raw_connection()
    blocks = []
    try:
        cursor = raw.cursor()
        cursor.execute(str(compiled), tuple(compiled.params[name] for name in compiled.positiontup or ()))
        while rows := cursor.fetchmany(100_000):
            blocks.append(np.array(rows, dtype=object))
        cursor.close()
    finally:
        raw.close()
    table = np.concatenate(blocks) if blocks else np.empty((0, len(EVENT_COLUMNS)), dtype=object)
    return _columns_frame(table)


_TEXT_COLUMNS = ("type", "customer", "task", "task_type", "provider", "model")


def _columns_frame(table: np.ndarray) -> pd.DataFrame:
    """A 2-D object array of event rows as typed columns: int64 numbers, categorical texts."""
    data: dict[str, Any] = {}
    for index, name in enumerate(EVENT_COLUMNS):
        column = table[:, index]
        if name in _TEXT_COLUMNS:
            codes, uniques = pd.factorize(column, sort=False)
            data[name] = pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object))
        else:
            data[name] = column.astype(np.int64)
    return pd.DataFrame(data)


def _fetch_sqlite_arrow(engine: Engine, query: Any, limit: int) -> pd.DataFrame:
    """Arrow straight from SQLite's C API (ADBC): ~1.7 µs per event. See `_read_events`."""
    import adbc_driver_sqlite.dbapi as adbc

    compiled = query.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    params = [compiled.params[name] for name in (compiled.positiontup or ())]
    with adbc.connect(engine.url.database) as connection, connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout = 30000")  # as make_engine's connections wait
        # The driver infers each column's type from its first batch and fails on a later batch
        # that disagrees (a text column whose first rows are all NULL). One batch for the whole
        # chunk (the query has a LIMIT) lets the inference see every row.
        cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(max(limit, 1))})
        cursor.execute(str(compiled), params)
        return _arrow_frame(cursor.fetch_arrow_table())


def _fetch_postgres(engine: Engine, query: Any) -> pd.DataFrame:
    """Arrow straight from libpq (ADBC): no Python object per value. The query goes with its
    parameters written into it: ADBC runs a query with bound parameters as a prepared statement
    whose whole result libpq holds as text rows before converting them, and one without as a
    binary COPY streamed into Arrow (a 6M-event worker's read: 40 s → 20 s). `_read_events`'s
    parameters are integers (tenant id, seq bounds, chunk size), checked here."""
    import adbc_driver_postgresql.dbapi as adbc

    if not all(type(value) is int for value in query.compile().params.values()):
        raise TypeError("only integer parameters are written into the query")
    compiled = query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    uri = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with adbc.connect(uri) as connection, connection.cursor() as cursor:
        cursor.execute(str(compiled))
        return _arrow_frame(cursor.fetch_arrow_table())


def _arrow_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow event columns as pandas: int64 numbers, categorical texts (dictionary-encoded by
    Arrow: one code per row and one string per distinct value, no Python string per row)."""
    columns = {}
    for name in EVENT_COLUMNS:
        column = table[name]
        if name in _TEXT_COLUMNS:
            # A text column that is NULL in every row of a SQLite chunk comes back as int64.
            columns[name] = (column if pa.types.is_string(column.type) else column.cast(pa.string())).dictionary_encode()
        else:
            columns[name] = column.cast(pa.int64())
    return pa.table(columns).to_pandas()


def _price(frame: pd.DataFrame, book: PriceBook, unpriced: dict[tuple[str, str], int]) -> pd.DataFrame:
    """The events with their exact cost (`cost_nanos`, `cost_rem`) and `priced`; counts the
    unpriced usage events per (provider, model) into `unpriced`."""
    usage = (frame["type"] == "usage").to_numpy()
    nanos, rem = np.zeros(len(frame), dtype=np.int64), np.zeros(len(frame), dtype=np.int64)
    priced = np.ones(len(frame), dtype=bool)
    if usage.any():
        used = frame.loc[usage, list(PRICED_COLUMNS)]  # only what pricing reads: no copy of the rest
        prices = price_usage(used, book)
        nanos[usage] = prices["cost_nanos"].to_numpy()
        rem[usage] = prices["cost_rem"].to_numpy()
        priced[usage] = prices["priced"].to_numpy()
        missing = used.loc[~prices["priced"].to_numpy(), ["provider", "model"]]
        for (provider, model), count in missing.value_counts().items():
            if count:  # categorical columns also list combinations that did not occur
                unpriced[(provider, model)] = unpriced.get((provider, model), 0) + int(count)
    frame["cost_nanos"], frame["cost_rem"], frame["priced"] = nanos, rem, priced
    return frame


def _combine(a: Summary, b: Summary) -> Summary:
    return Summary(
        tasks=merge_tasks(a.tasks, b.tasks),
        detail=merge_additive(a.detail, b.detail, DETAIL_KEYS),
        daily=merge_additive(a.daily, b.daily, DAILY_KEYS),
    )


def _write(connection: Connection, tenant_id: int, summary: Summary, *, replace_all: bool, into: dict[Table, Table] | None = None) -> int:
    """Write the summary's rows: merged into the stored ones, or (`replace_all`) as they are,
    into the rollup tables or the tables `into` puts in their place."""
    target = into or {}
    tasks = summary.tasks
    if not replace_all and not tasks.empty:
        stored = _stored_tasks(connection, tenant_id, tasks["task"].tolist())
        if not stored.empty:
            tasks = merge_tasks(stored, tasks)
    task_columns = ("tenant_id", *TASK_COLUMNS)
    write_frame(
        connection, target.get(task_usage, task_usage), _key_order(tasks, ("task",), replace_all).assign(tenant_id=tenant_id), task_columns,
        on_conflict="error" if replace_all else "replace", keys=("tenant_id", "task"),
    )  # fmt: skip
    for table, frame, keys in ((task_usage_detail, summary.detail, DETAIL_KEYS), (usage_daily, summary.daily, DAILY_KEYS)):
        columns = ("tenant_id", *keys, *USAGE_COLUMNS)
        write_frame(
            connection, target.get(table, table), _key_order(frame, keys, replace_all).assign(tenant_id=tenant_id), columns,
            on_conflict="error" if replace_all else "add", keys=("tenant_id", *keys), add=USAGE_COLUMNS,
        )  # fmt: skip
    return len(tasks)


def _key_order(frame: pd.DataFrame, keys: tuple[str, ...], replace_all: bool) -> pd.DataFrame:
    """On a rebuild (the tenant's rows were just deleted), rows in primary-key order: each insert
    appends to the end of the key's B-tree instead of landing on a random page of it. Strings
    sort by code point, which is SQLite's BINARY order and PostgreSQL's under a C collation
    (Arrow compares UTF-8 bytes, the same order). Arrow's sort, not pandas': pandas sorts each
    text column's distinct values with Python comparisons (1 M task names per rebuild)."""
    if not replace_all:
        return frame
    columns = pa.table({name: frame[name] for name in keys})
    order = pc.sort_indices(columns, sort_keys=[(name, "ascending") for name in keys])
    return frame.take(order.to_numpy()).reset_index(drop=True)


def _stored_tasks(connection: Connection, tenant_id: int, names: list[str]) -> pd.DataFrame:
    frames = []
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        rows = connection.execute(
            select(*[task_usage.c[name] for name in TASK_COLUMNS]).where(
                task_usage.c.tenant_id == tenant_id, task_usage.c.task.in_(chunk)
            )
        ).all()
        if rows:
            frames.append(pd.DataFrame(rows, columns=list(TASK_COLUMNS)))
    if not frames:
        return pd.DataFrame(columns=list(TASK_COLUMNS))
    stored = pd.concat(frames, ignore_index=True)
    for name in ("task_type_us", "task_type_seq", "ended_us", "status_seq", "started_us"):
        stored[name] = stored[name].astype("Int64")
    return stored


def rollup_all(engine: Engine, tenants: list[Tenant], *, now: datetime) -> list[RollupResult]:
    return [bring_up_to_date(engine, tenant, now=now) for tenant in tenants]

