"""Cross-process state of background jobs: guards, bookmarks, and APScheduler's job table.

A guard lets at most one worker act on a (job, tenant) at a time, across threads and processes.
On PostgreSQL it is a transaction-scoped advisory lock (`pg_try_advisory_xact_lock`) held on a
connection of its own: the server releases it when that transaction ends, even if the process
dies. SQLite has no such locks, so a row of `job_locks` is leased by compare-and-set and expires:
a crashed holder blocks the others for at most the lease. The holder names its process (a
digest of the host and its PID namespace, and the PID), and a SQLite file is shared only by
processes of one host: a lease whose holder process is gone (killed, crashed) is taken over at
once instead of blocking the rollup, the close and the Stripe sync until it expires.

A bookmark records how far a job got (the last month closed for a tenant). It is written in the
same unit of work as the job's effect, so a rerun resumes right after it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    Unicode,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from metering.core.db import try_advisory_lock, upsert
from metering.core.tables import metadata

DEFAULT_LEASE_SECONDS = 900.0

job_locks = Table(
    "job_locks",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("holder", String(64), nullable=False),  # a random token per acquisition; '' when free
    Column("expires_us", BigInteger, nullable=False),  # wall clock, microseconds since the epoch
    Column("acquired_us", BigInteger, nullable=False),
)

job_bookmarks = Table(
    "job_bookmarks",
    metadata,
    Column("job", String(64), primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("value", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# APScheduler 3's SQLAlchemyJobStore table, declared here so that the migrations own it (the
# store's own `create(checkfirst=True)` then finds it). Its columns are APScheduler's.
scheduler_jobs = Table(
    "apscheduler_jobs",
    metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)


def lock_name(job: str, tenant_id: int) -> str:
    return f"{job}:{tenant_id}"


def advisory_key(job: str, tenant_id: int) -> tuple[int, int]:
    """The two-int4 advisory lock key of (job, tenant).

    The two-key form lives in another key space than the bigint keys of ingest
    (`metering.core.db.ingest_lock_key`), so the two never collide.
    """
    job_key = zlib.crc32(job.encode()) - (1 << 31)  # into int4's range
    return job_key, tenant_id


@dataclass
class Guard:
    """A held guard. `renew()` extends a SQLite lease (a no-op on PostgreSQL, where the lock lasts
    as long as its transaction); it returns False when the lease was lost to another worker."""

    name: str
    _renew: Callable[[], bool]

    def renew(self) -> bool:
        return self._renew()


@contextmanager
def hold(
    engine: Engine,
    job: str,
    tenant_id: int,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    clock: Callable[[], float] = time.time,
) -> Iterator[Guard | None]:
    """Try to take the guard of (job, tenant) without waiting: yields a `Guard`, or None when
    another worker holds it. The work done inside must commit before the block ends."""
    with try_advisory_lock(engine, advisory_key(job, tenant_id)) as taken:
        if taken is not None:
            yield Guard(lock_name(job, tenant_id), lambda: True) if taken else None
            return
    # No advisory locks (SQLite): a lease in `job_locks`.
    with _lease(engine, lock_name(job, tenant_id), lease_seconds, clock) as guard:
        yield guard


def _this_host() -> str:
    """Names the host and PID namespace: PIDs compare only within one."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}/{namespace}".encode()).hexdigest()[:8]


_HOST = _this_host()


def _holder_dead(holder: str) -> bool:
    """Whether a lease's holder is a process of this host that no longer runs. A holder of
    another host, or of an old format, counts as alive: its lease is waited out."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != _HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


@contextmanager
def _lease(
    engine: Engine, name: str, lease_seconds: float, clock: Callable[[], float]
) -> Iterator[Guard | None]:
    token = f"{_HOST}:{os.getpid()}:{secrets.token_hex(16)}"
    lease_us = int(lease_seconds * 1_000_000)

    def now_us() -> int:
        return int(clock() * 1_000_000)

    with engine.begin() as connection:
        upsert(connection, job_locks, {"name": name, "holder": "", "expires_us": 0, "acquired_us": 0}, key=["name"])
        started = now_us()
        # The insert above holds SQLite's write lock: the holder read here is the one replaced.
        holder = connection.execute(select(job_locks.c.holder).where(job_locks.c.name == name)).scalar_one()
        free = job_locks.c.expires_us <= started
        if holder and _holder_dead(holder):
            free = or_(free, job_locks.c.holder == holder)
        taken = _compare_and_set(
            connection, name, free, holder=token, expires_us=started + lease_us, acquired_us=started,
        )  # fmt: skip
    if not taken:
        yield None
        return

    def renew() -> bool:
        with engine.begin() as connection:
            return _compare_and_set(
                connection, name, job_locks.c.holder == token, expires_us=now_us() + lease_us
            )

    try:
        yield Guard(name, renew)
    finally:
        with engine.begin() as connection:
            _compare_and_set(connection, name, job_locks.c.holder == token, holder="", expires_us=0)


def _compare_and_set(connection: Connection, name: str, condition: object, **values: object) -> bool:
    result = connection.execute(
        update(job_locks)
        .where(job_locks.c.name == name, condition)  # type: ignore[arg-type]
        .values(**values)
        .execution_options(preserve_rowcount=True)
    )
    return result.rowcount == 1


def get_bookmark(session: Session | Connection, job: str, tenant_id: int) -> str | None:
    return session.execute(
        select(job_bookmarks.c.value).where(
            job_bookmarks.c.job == job, job_bookmarks.c.tenant_id == tenant_id
        )
    ).scalar_one_or_none()


def set_bookmark(
    session: Session | Connection, job: str, tenant_id: int, value: str, *, now: datetime
) -> None:
    upsert(
        session,
        job_bookmarks,
        {"job": job, "tenant_id": tenant_id, "value": value, "updated_at": now},
        key=["job", "tenant_id"],
        update={"value": value, "updated_at": now},
    )
