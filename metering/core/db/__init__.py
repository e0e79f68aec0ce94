"""The database adapter: the one place that knows SQLite from PostgreSQL (with the rollup's
stores, `metering.rollup.stores`). Engines, sessions and the unit of work (`engine`); upserts and bulk
writes (`writes`); driver and columnar reads, snapshots and planner hints (`reads`); locks
(`locks`)."""

from metering.core.db.engine import (
    MIGRATIONS_DIR,
    UNAVAILABLE,
    is_overflow,
    is_postgresql,
    is_sqlite,
    is_unavailable,
    make_engine,
    session_factory,
    sqlite_file,
    unit_of_work,
    upgrade_schema,
)
from metering.core.db.locks import (
    follower_lock_key,
    ingest_lock_key,
    name_locks,
    tenant_lock,
    try_advisory_lock,
    wait_for_holders,
    write_lock,
)
from metering.core.db.reads import (
    HINTING,
    Prepared,
    adbc_uri,
    begin_snapshot,
    by_primary_key,
    byte_order,
    driver_rows,
    inserted_by_this_transaction,
    no_cyclic_gc,
    prepare,
    prepare_columns,
    prepared_columns,
    prepared_rows,
    read_frame,
    snapshot_reads,
    tuples_frame,
    without_index,
)
from metering.core.db.writes import add_rows, dialect_insert, frame_rows, upsert, write_frame, write_rows

__all__ = [
    "HINTING", "follower_lock_key", "ingest_lock_key",
    "MIGRATIONS_DIR", "UNAVAILABLE", "adbc_uri", "add_rows", "begin_snapshot", "by_primary_key", "byte_order", "dialect_insert", "driver_rows", "name_locks", "inserted_by_this_transaction", "frame_rows",
    "is_overflow", "is_postgresql", "is_sqlite", "is_unavailable", "make_engine", "no_cyclic_gc", "Prepared", "prepare", "prepare_columns", "prepared_columns", "prepared_rows", "read_frame", "tuples_frame",
    "session_factory", "snapshot_reads", "sqlite_file", "tenant_lock", "try_advisory_lock", "unit_of_work", "upgrade_schema",
    "upsert", "without_index", "wait_for_holders", "write_frame", "write_lock", "write_rows",
]  # fmt: skip
