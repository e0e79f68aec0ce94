"""Engines, sessions and the unit of work; which database a bind is."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import adbc_driver_manager
import psycopg
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parents[3] / "migrations"

# Lost connections, a restarting server, a locked SQLite file, a saturated pool: the server's
# trouble, and passing. The driver's own errors arrive unwrapped where it is used directly
# (PostgreSQL COPY, ADBC's columnar reads: a server that went away mid-connect is ADBC's
# OperationalError, status IO).
UNAVAILABLE = (OperationalError, PoolTimeout, psycopg.OperationalError, adbc_driver_manager.OperationalError)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is away for now (retry later), not that a query is wrong."""
    if is_overflow(exc):
        return False
    if isinstance(exc, UNAVAILABLE):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def is_overflow(exc: BaseException) -> bool:
    """Whether `exc` is a sum past 2**63 - 1 in SQL: SQLite's `sum()` raises "integer overflow"
    (an OperationalError, not a passing trouble); PostgreSQL's bigint arithmetic "out of range"
    (through psycopg, or through ADBC for a columnar read)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause)
    if isinstance(cause, sqlite3.OperationalError):
        return "integer overflow" in text
    if type(cause).__module__.startswith("adbc_driver_manager"):  # a columnar read (`read_frame`)
        return "out of range" in text
    return isinstance(cause, psycopg.errors.NumericValueOutOfRange)


def make_engine(url: str, *, small_pool: bool = False, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite files get WAL, foreign keys and a busy timeout. A
    `small_pool` (a helper's engine beside the server's) holds 2 to 4 PostgreSQL connections.

    Bound parameters stay out of SQLAlchemy's logs and error messages (`hide_parameters`): they
    carry key hashes and customer data, and an error is logged with its message."""
    kwargs.setdefault("hide_parameters", True)
    _sql_logging_is_opt_in()
    if url.startswith("sqlite"):
        connect_args = {"timeout": 30, "check_same_thread": False}
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 2 if small_pool else 10)
    kwargs.setdefault("max_overflow", 2 if small_pool else 20)
    return create_engine(url, **kwargs)


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (relative to the working directory), or None: another
    database, or SQLite in memory."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if parsed.query.get("uri") == "true":  # sqlite:///file:name?mode=...&uri=true
        if parsed.query.get("mode") == "memory":
            return None
        database = database.removeprefix("file:")
    if database in ("", ":memory:"):
        return None
    return Path(database)


def _sql_logging_is_opt_in() -> None:
    """A root logger at DEBUG must not turn on SQLAlchemy's statement and row logs (rows hold
    key hashes and customer data): they log only when the `sqlalchemy.engine` logger's own
    level is set."""
    logger = logging.getLogger("sqlalchemy.engine")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA cache_size=-16384")  # 16 MB per connection (the default is 2 MB)
    cursor.close()


def is_sqlite(bind: Engine | Connection | Session) -> bool:
    return _dialect_name(bind) == "sqlite"


def is_postgresql(bind: Engine | Connection | Session) -> bool:
    return _dialect_name(bind) == "postgresql"


def begin_sqlite(connection: Connection, statement: str = "BEGIN") -> None:
    """On SQLite, start the driver's transaction with `statement` (`BEGIN`: a read snapshot;
    `BEGIN IMMEDIATE`: the write lock taken now) unless one is open: the driver would otherwise
    begin only at the first write, and run each SELECT before it in a transaction of its own.
    Nothing happens on PostgreSQL."""
    if is_sqlite(connection):
        dbapi = connection.connection.dbapi_connection
        if dbapi is not None and not dbapi.in_transaction:
            connection.exec_driver_sql(statement)


def _dialect_name(bind: Engine | Connection | Session) -> str:
    return (bind.get_bind() if isinstance(bind, Session) else bind).dialect.name


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[Session]:
    """One transaction: commit when the block succeeds, roll back when it raises."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to the newest migration (alembic `upgrade head`)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
