"""Random histories for the tests that hold a rollup table equal to its recomputation: event
times around month ends, batches with replays, random cost changes of stored rows."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from metering.core.db import unit_of_work
from metering.core.tenants import Tenant
from metering.events.ingest import ingest_events


def near_month_ends(rng: random.Random) -> datetime:
    """A time in the four days from the start or the end of September to November (UTC), so
    that month ends, in UTC and in the tenant's zone, split tasks and late events cross months."""
    base = datetime(2026, rng.choice((9, 10, 11)), 1, tzinfo=UTC) + timedelta(days=rng.choice((0, 27, 29)))
    return base + timedelta(hours=rng.randrange(0, 96), seconds=rng.randrange(60))


def random_batches(rng: random.Random, make_event: Callable[[], dict[str, Any]], batches: int) -> Iterator[list[dict[str, Any]]]:
    """`batches` batches of 1 to 39 new events, four in ten of them (after the first) with up to
    5 events already sent again: replays, which must change nothing."""
    sent: list[dict[str, Any]] = []
    for _ in range(batches):
        events = [make_event() for _ in range(rng.randrange(1, 40))]
        if sent and rng.random() < 0.4:
            events += rng.sample(sent, min(len(sent), 5))
        yield events
        sent += events


def cost_change(rng: random.Random, nanos: int, rem: int) -> tuple[int, int]:
    """A random change (nanos, remainder in millionths of a nano) of a stored cost of `nanos`
    and `rem`: up or down, often carried, never below zero."""
    d_nanos = rng.choice((0, 1, 999, 10**6, 3 * 10**9, rng.randrange(10**10))) - rng.randrange(nanos + 1)
    d_rem = rng.randrange(10**6)
    if d_nanos + nanos + (rem + d_rem) // 10**6 < 0:
        d_nanos = -nanos
    return d_nanos, d_rem


def send(engine: Engine, tenant: Tenant, events: list[dict[str, Any]], now: datetime) -> None:
    """Ingest `events` for `tenant` in one transaction, as of `now`."""
    with unit_of_work(engine) as session:
        ingest_events(session, tenant.id, events, now=now)
