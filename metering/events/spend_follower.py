"""The follower of deferred spend counting: start, run and stop it for a tenant.

With `TASKMETER_SPEND_COUNTING=deferred` each server process runs `follow_tenants` every
`TASKMETER_SPEND_FOLLOW_INTERVAL_SECONDS` (`api.follower`), and `taskmeter ingest` catches up once
at the end of its file. The counting itself, its exactly-once rules and its locks are
`metering.spend.deferred`'s; this module decides how far it may go and when a tenant changes mode.

- `catch_up` counts up to `committed_through` (the rollup's bound: on PostgreSQL a batch with a
  higher seq can commit while a lower one is still in flight; the read waits for those, without
  holding back the batches that start meanwhile), one
  page at a time: read and counted from a snapshot without the follower lock, written under it
  (`deferred.read_page`, `deferred.write_page`).
- `start` (inline to deferred): in one transaction holding the tenant's ingest lock alone, the
  watermark is set to the newest committed seq: ingestion counted everything up to it, and every
  later batch reads the watermark after taking the lock shared, so it leaves counting to the
  follower.
- `stop` (deferred to inline): in one transaction holding the ingest lock alone, the follower
  counts everything stored and the watermark is dropped; later batches count themselves.

Each process applies its own setting to every tenant on each run, so a deployment whose processes
disagree stays exact (every switch is), only busier; the log says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Engine, func, select

from metering.core.db import snapshot_reads, write_lock
from metering.core.tables import events
from metering.events.ingest import committed_through, newest_committed
from metering.spend import deferred
from metering.spend.budget_tables import budgets, spend_watermarks

log = logging.getLogger("taskmeter.spend")


@dataclass
class Followed:
    """What one run of the follower did."""

    events: int = 0  # events counted
    alerts: int = 0  # alerts raised
    started: list[int] = field(default_factory=list)  # tenants now followed (deferred)
    stopped: list[int] = field(default_factory=list)  # tenants counted at ingestion again
    reread: int = 0  # pages read again: another follower or a recount wrote first

    def add(self, counted: deferred.Counted) -> None:
        self.events += counted.events
        self.alerts += counted.alerts

    def merge(self, other: Followed) -> None:
        self.events += other.events
        self.alerts += other.alerts
        self.started += other.started
        self.stopped += other.stopped
        self.reread += other.reread


def _hold_ingestion(connection: Connection, tenant_id: int) -> int:
    """Hold the tenant's ingest lock alone for the rest of the transaction and return its
    newest (committed) seq. SQLite: the write lock first, so the read sees the newest."""
    write_lock(connection)
    return newest_committed(connection, tenant_id)


def start(engine: Engine, tenant_id: int, *, now: datetime) -> bool:
    """Follow the tenant from now on (ingestion stops counting its batches). False when it is
    followed already."""
    with engine.begin() as connection:
        return deferred.begin(connection, tenant_id, _hold_ingestion(connection, tenant_id), now=now)


def stop(engine: Engine, tenant_id: int, *, now: datetime) -> Followed:
    """Count what the follower has not counted yet and hand the tenant back to ingestion, in one
    transaction during which the tenant's ingestion waits."""
    done = Followed()
    with engine.begin() as connection:
        newest = _hold_ingestion(connection, tenant_id)
        while True:
            counted = deferred.count_page(connection, tenant_id, newest, now=now)
            done.add(counted)
            if not counted.more:
                break
        if counted.through is not None:
            deferred.end(connection, tenant_id)
            done.stopped.append(tenant_id)
    return done


def catch_up(engine: Engine, tenant_id: int, *, now: datetime, page: int = deferred.PAGE) -> Followed:
    """Count the tenant's committed events past its watermark, a page at a time (nothing when the
    tenant is counted at ingestion): each page read and counted from a snapshot, without the
    follower lock, then written in a short transaction under it; a page that another follower or
    a recount overtook meanwhile is read again."""
    done = Followed()
    through = committed_through(engine, tenant_id)
    while True:
        with snapshot_reads(engine) as connection:
            read = deferred.read_page(connection, tenant_id, through, page=page)
        if read is None:
            return done
        with engine.begin() as connection:
            counted = deferred.write_page(connection, tenant_id, read, now=now)
        if counted is None:
            done.reread += 1
            continue
        done.add(counted)
        if not counted.more:
            return done


def uncounted(engine: Engine, tenant_id: int) -> int:
    """How many of the tenant's stored events its follower has not counted yet (0 when
    ingestion counts them)."""
    with engine.connect() as connection:
        through = deferred.counted_through(connection, tenant_id)
        if through is None:
            return 0
        query = select(func.count()).select_from(events).where(events.c.tenant_id == tenant_id, events.c.seq > through)
        return int(connection.execute(query).scalar_one())


def following(connection: Connection, tenant_id: int) -> bool:
    return deferred.counted_through(connection, tenant_id) is not None


def follow_tenants(engine: Engine, *, mode: str, now: datetime) -> Followed:
    """One run of a process's follower. `deferred`: follow every tenant that has budgets, and
    count what each followed tenant has stored since its watermark. `inline`: hand every
    followed tenant back to ingestion (after counting what it stored meanwhile)."""
    w = spend_watermarks
    newest = (
        select(events.c.seq).where(events.c.tenant_id == w.c.tenant_id).order_by(events.c.seq.desc()).limit(1)
    ).scalar_subquery()
    with engine.connect() as connection:
        followed = connection.execute(select(w.c.tenant_id, w.c.counted_through, newest).order_by(w.c.tenant_id)).all()
        unfollowed = (
            connection.execute(
                select(budgets.c.tenant_id).distinct().where(budgets.c.tenant_id.not_in(select(w.c.tenant_id)))
            ).scalars().all()
            if mode == "deferred" else []
        )  # fmt: skip
    done = Followed()
    if mode != "deferred":
        for tenant_id, _, _ in followed:
            log.warning(
                "tenant %s was counted by a follower (TASKMETER_SPEND_COUNTING=deferred in another process?); "
                "this process counts at ingestion (inline): catching up and handing it back", tenant_id,
            )  # fmt: skip
            done.merge(stop(engine, tenant_id, now=now))
        return done
    for tenant_id in sorted(unfollowed):
        if start(engine, tenant_id, now=now):
            done.started.append(tenant_id)
    for tenant_id, through, latest in followed:
        if latest is not None and latest > through:  # something stored since: worth the locks
            done.merge(catch_up(engine, tenant_id, now=now))
    return done
