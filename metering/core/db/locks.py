"""Locks: a tenant's advisory locks, a transaction's write lock, a job's try-lock.

PostgreSQL has advisory locks; SQLite has one writer at a time, which orders what the advisory
locks order on PostgreSQL, and no try-lock (a job falls back to a lease in a table)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Connection,
    Engine,
    Integer,
    Text,
    column,
    func,
    literal,
    select,
    table,
)

from metering.core.db.engine import begin_sqlite, is_postgresql


def ingest_lock_key(tenant_id: int) -> int:
    """The PostgreSQL advisory lock that orders a tenant's ingest commits before its rollup reads."""
    return (0x746D_6576 << 16) + tenant_id


def follower_lock_key(tenant_id: int) -> int:
    """The PostgreSQL advisory lock of a tenant's deferred spend counting (`metering.spend.deferred`):
    one follower, recount or switch of counting mode at a time. Taken after the ingest lock when a
    transaction holds both."""
    return (0x746D_6366 << 16) + tenant_id


def tenant_lock(connection: Connection, key: int, *, shared: bool = False) -> None:
    """Hold the advisory lock `key` until the transaction ends: `shared` with other holders
    that are shared, or alone. On SQLite nothing happens: a writer holds the whole database."""
    if is_postgresql(connection):
        lock = func.pg_advisory_xact_lock_shared if shared else func.pg_advisory_xact_lock
        connection.execute(select(lock(key)))


def write_lock(connection: Connection) -> None:
    """Take the database's write lock for the rest of the transaction, before reading what will
    be written: SQLite's BEGIN IMMEDIATE (a transaction that has written already holds it).
    PostgreSQL locks rows instead (SELECT ... FOR UPDATE), so nothing happens there."""
    begin_sqlite(connection, "BEGIN IMMEDIATE")


@contextmanager
def try_advisory_lock(engine: Engine, key: tuple[int, int]) -> Iterator[bool | None]:
    """Try the advisory lock `key` without waiting, held in a transaction of its own for the
    block: yields whether it was taken, or None where the database has no advisory locks
    (SQLite), so that the caller uses another mechanism."""
    if not is_postgresql(engine):
        yield None
        return
    with engine.connect() as connection, connection.begin():
        yield bool(connection.execute(select(func.pg_try_advisory_xact_lock(*key))).scalar_one())


def name_locks(connection: Connection, space: int, names: Sequence[str]) -> None:
    """Hold an advisory lock per name in lock space `space` until the transaction ends, taken in
    one statement in the names' order (callers pass them sorted, so two transactions never wait
    on each other in a cycle). On SQLite nothing happens: a writer holds the whole database."""
    if is_postgresql(connection) and names:
        hashed = func.unnest(literal(list(names), ARRAY(Text))).column_valued("name")
        connection.execute(select(func.count(func.pg_advisory_xact_lock(space, func.hashtext(hashed)))))


_pg_locks = table(
    "pg_locks", column("locktype", Text), column("classid", BigInteger), column("objid", BigInteger),
    column("objsubid", Integer), column("granted", Boolean), column("virtualtransaction", Text),
)  # fmt: skip
HOLDERS_POLL = 0.001
"""Seconds between two looks at the holders in `wait_for_holders`."""


def wait_for_holders(connection: Connection, key: int) -> None:
    """Wait until every transaction that holds the advisory lock `key` now (shared or alone) has
    ended, without asking for the lock: PostgreSQL queues a request for a lock behind one that
    waits for it, so waiting with `tenant_lock(key)` would hold back every transaction that asks
    for it shared meanwhile; this holds back none. It looks at `pg_locks` every `HOLDERS_POLL`
    seconds, outside any transaction of the caller's (`connection` must not be in one). On SQLite
    nothing happens: a writer holds the whole database, so no transaction is in flight beside a
    committed read."""
    if not is_postgresql(connection):
        return
    locks = _pg_locks.c
    query = select(locks.virtualtransaction).where(
        locks.locktype == "advisory", locks.classid == key >> 32, locks.objid == key & 0xFFFF_FFFF,
        locks.objsubid == 1, locks.granted,
    )  # fmt: skip
    holders = set(connection.execute(query).scalars())
    connection.rollback()
    while holders:
        time.sleep(HOLDERS_POLL)
        holders &= set(connection.execute(query).scalars())  # a transaction that ended never comes back
        connection.rollback()
