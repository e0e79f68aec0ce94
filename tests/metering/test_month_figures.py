"""The per customer-month figures (`customer_months`) stay exact under incremental rollups:
random batches, replays, late events, status changes (completed → reopened → failed), tasks
moving between months and buckets; always equal to a recomputation from `task_usage`."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import Engine, select

from metering.core.db import unit_of_work
from metering.core.tables import customer_months, tenant_prices
from metering.core.tenants import Tenant
from metering.events.ingest import ingest_events
from metering.rollup import month_figures
from metering.rollup.pipeline import rollup_tenant

NOW = datetime(2026, 12, 20, 12, 0, tzinfo=UTC)
_ids = itertools.count()
TYPES = ("usage", "usage", "usage", "task.started", "task.completed", "task.failed", "task.cancelled", "task.reopened",
         "task.rejected", "task.accepted")  # fmt: skip


def _event(rng: random.Random, tasks: int) -> dict:
    kind = rng.choice(TYPES)
    # Around month ends (UTC and the tenant's), so that ends and late events cross months.
    base = datetime(2026, rng.choice((9, 10, 11)), 1, tzinfo=UTC) + timedelta(days=rng.choice((0, 27, 29)))
    when = base + timedelta(hours=rng.randrange(0, 96), seconds=rng.randrange(60))
    event = {
        "id": f"e{next(_ids)}", "type": kind, "time": when.isoformat().replace("+00:00", "Z"),
        "customer": rng.choice(("acme", "globex")), "task": f"t{rng.randrange(tasks)}",
    }  # fmt: skip
    if rng.random() < 0.5:
        event["task_type"] = rng.choice(("support_ticket", "code_review"))
    if kind == "usage":
        tokens = rng.choice((10, 2_000, 400_000, 3_000_000))
        event |= {"provider": "openai", "model": rng.choice(("gpt-4o", "gpt-4o-mini", "no-such-model")),
                  "input_tokens": tokens, "output_tokens": rng.randrange(0, tokens)}  # fmt: skip
    return event


def _send(engine: Engine, tenant: Tenant, events: list[dict]) -> None:
    with unit_of_work(engine) as session:
        ingest_events(session, tenant.id, events, now=NOW)


def _table(engine: Engine, tenant: Tenant) -> pd.DataFrame:
    with engine.connect() as connection:
        return month_figures.stored(connection, tenant.id)


def _recomputed(engine: Engine, tenant: Tenant) -> pd.DataFrame:
    with engine.connect() as connection:
        frame = month_figures.recompute(connection, tenant.id, tenant.timezone)
    return _sorted(frame)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({name: "int64" for name in (*month_figures.MEASURES, "bucket")})
    return frame.sort_values(list(month_figures.KEYS)).reset_index(drop=True)[[*month_figures.KEYS, *month_figures.MEASURES]]


def _assert_exact(engine: Engine, tenant: Tenant) -> None:
    stored = _sorted(_table(engine, tenant))
    expected = _recomputed(engine, tenant)
    pd.testing.assert_frame_equal(stored, expected, check_dtype=False)


@pytest.mark.parametrize("timezone", ["UTC", "America/Los_Angeles"])
def test_figures_equal_a_recomputation_after_random_batches(engine: Engine, make_tenant, timezone: str) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant(f"figures-{timezone.replace('/', '-').lower()}", timezone=timezone)
    rng = random.Random(19 + len(timezone))
    sent: list[dict] = []
    for _batch in range(12):
        events = [_event(rng, 25) for _ in range(rng.randrange(1, 40))]
        if sent and rng.random() < 0.4:  # replays: duplicates change nothing
            events += rng.sample(sent, min(len(sent), 5))
        _send(engine, tenant, events)
        sent += events
        rollup_tenant(engine, tenant, now=NOW)
        _assert_exact(engine, tenant)
        assert not _table(engine, tenant).empty
    # Every task counted once, in one key.
    table = _table(engine, tenant)
    with engine.connect() as connection:
        tasks = month_figures.recompute(connection, tenant.id, timezone)["tasks"].sum()
    assert int(table["tasks"].sum()) == int(tasks) == len({e["task"] for e in sent})
    assert (table["tasks"] > 0).all()  # keys emptied by a move are deleted


def test_a_price_change_writes_the_same_figures_as_increments(engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant("figures-reprice")
    rng = random.Random(7)
    for _ in range(5):
        _send(engine, tenant, [_event(rng, 15) for _ in range(20)])
        rollup_tenant(engine, tenant, now=NOW)
    incremental = _sorted(_table(engine, tenant))
    with unit_of_work(engine) as session:  # a price for the unknown model: the next rollup re-prices
        session.execute(tenant_prices.insert().values(
            tenant_id=tenant.id, provider="openai", model="no-such-model", input="1.00", output="2.00",
            cache_read=None, cache_write=None, updated_at=NOW,
        ))  # fmt: skip
    result = rollup_tenant(engine, tenant, now=NOW)
    assert result.repriced is not None and not result.rebuilt  # from the rollup's rows (metering.rollup.reprice)
    rebuilt = _sorted(_table(engine, tenant))
    _assert_exact(engine, tenant)
    assert rebuilt["cost_nanos"].sum() > incremental["cost_nanos"].sum()  # the new price is in the figures
    assert rebuilt["tasks"].sum() == incremental["tasks"].sum()


def test_a_late_event_moves_a_task_between_months_and_statuses(engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant("figures-late")
    base = {"customer": "acme", "task": "t1", "task_type": "support_ticket"}
    _send(engine, tenant, [
        {**base, "id": "u1", "type": "usage", "time": "2026-10-30T10:00:00Z", "provider": "openai", "model": "gpt-4o",
         "input_tokens": 1000, "output_tokens": 10},
        {**base, "id": "c1", "type": "task.completed", "time": "2026-10-31T10:00:00Z"},
    ])  # fmt: skip
    rollup_tenant(engine, tenant, now=NOW)
    table = _table(engine, tenant)
    assert table[["month", "status", "tasks"]].values.tolist() == [["2026-10", "completed", 1]]
    _send(engine, tenant, [{**base, "id": "r1", "type": "task.reopened", "time": "2026-11-02T10:00:00Z"}])
    rollup_tenant(engine, tenant, now=NOW)
    assert _table(engine, tenant)[["month", "status", "tasks"]].values.tolist() == [["2026-11", "open", 1]]
    # A late failure dated before the reopening changes nothing; one after it ends the task in November.
    _send(engine, tenant, [{**base, "id": "f0", "type": "task.failed", "time": "2026-10-31T11:00:00Z"}])
    rollup_tenant(engine, tenant, now=NOW)
    assert _table(engine, tenant)[["month", "status", "tasks"]].values.tolist() == [["2026-11", "open", 1]]
    _send(engine, tenant, [{**base, "id": "f1", "type": "task.failed", "time": "2026-11-03T10:00:00Z"}])
    rollup_tenant(engine, tenant, now=NOW)
    assert _table(engine, tenant)[["month", "status", "tasks"]].values.tolist() == [["2026-11", "failed", 1]]
    _assert_exact(engine, tenant)
    with engine.connect() as connection:
        rows = connection.execute(select(customer_months).where(customer_months.c.tenant_id == tenant.id)).all()
    assert len(rows) == 1 and rows[0].usage_events == 1 and rows[0].input_tokens == 1000


def test_rebuild_from_task_usage_restores_the_table(engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant("figures-restore")
    rng = random.Random(3)
    _send(engine, tenant, [_event(rng, 10) for _ in range(30)])
    rollup_tenant(engine, tenant, now=NOW)
    before = _sorted(_table(engine, tenant))
    with unit_of_work(engine) as session:
        session.execute(customer_months.delete().where(customer_months.c.tenant_id == tenant.id))
    with engine.begin() as connection:
        written = month_figures.rebuild_from_task_usage(connection, tenant.id, tenant.timezone)
    assert written == len(before)
    pd.testing.assert_frame_equal(_sorted(_table(engine, tenant)), before)
