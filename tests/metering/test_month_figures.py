"""The per customer-month figures (`customer_months`) stay exact under incremental rollups:
random batches, replays, late events, status changes (completed → reopened → failed), tasks
moving between months and buckets; always equal to a recomputation from `task_usage`."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select

from metering.core.db import unit_of_work
from metering.core.tables import customer_months, task_usage, tenant_prices
from metering.core.tenants import Tenant
from metering.costs.prices import settle_nanos
from metering.rollup import month_figures
from metering.rollup.pipeline import rollup_tenant
from tests.support.histories import cost_change, near_month_ends, random_batches, send

NOW = datetime(2026, 12, 20, 12, 0, tzinfo=UTC)
_ids = itertools.count()
TYPES = ("usage", "usage", "usage", "task.started", "task.completed", "task.failed", "task.cancelled", "task.reopened",
         "task.rejected", "task.accepted")  # fmt: skip


def _event(rng: random.Random, tasks: int) -> dict:
    kind = rng.choice(TYPES)
    when = near_month_ends(rng)
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
    send(engine, tenant, events, NOW)


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
    pd.testing.assert_frame_equal(stored, expected, check_dtype=False, check_exact=True)


@pytest.mark.parametrize("timezone", ["UTC", "America/Los_Angeles"])
def test_figures_equal_a_recomputation_after_random_batches(engine: Engine, make_tenant, timezone: str) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant(f"figures-{timezone.replace('/', '-').lower()}", timezone=timezone)
    rng = random.Random(19 + len(timezone))
    sent: list[dict] = []
    for events in random_batches(rng, lambda: _event(rng, 25), 12):
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
    pd.testing.assert_frame_equal(_sorted(_table(engine, tenant)), before, check_exact=True)


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Kolkata"])
def test_shifted_costs_equal_a_recomputation(engine: Engine, make_tenant, timezone: str) -> None:  # type: ignore[no-untyped-def]
    """Random cost changes of random tasks (up and down, across buckets, carried remainders):
    the figures moved by `shift_costs` equal those recomputed from the changed task rows."""
    tenant = make_tenant(f"figures-shift-{timezone.replace('/', '-').lower()}", timezone=timezone)
    rng = random.Random(41 + len(timezone))
    _send(engine, tenant, [_event(rng, 40) for _ in range(300)])
    rollup_tenant(engine, tenant, now=NOW)
    t = task_usage.c
    for _round in range(6):
        with engine.begin() as connection:
            rows = connection.execute(select(t.task, t.cost_nanos, t.cost_rem).where(t.tenant_id == tenant.id)).all()
            picked = rng.sample(rows, rng.randrange(1, len(rows)))
            changes = []
            for row in picked:
                d_nanos, d_rem = cost_change(rng, row.cost_nanos, row.cost_rem)
                changes.append((row.task, d_nanos, d_rem, row.cost_nanos, row.cost_rem))
            frame = pd.DataFrame(changes, columns=["task", "d_nanos", "d_rem", "nanos", "rem"]).assign(d_unpriced=0)
            moved = month_figures.shift_costs(connection, tenant.id, timezone, frame[["task", "d_nanos", "d_rem", "d_unpriced"]])
            assert moved == int(((frame["d_nanos"] != 0) | (frame["d_rem"] != 0)).sum())
            for task, d_nanos, d_rem, nanos, rem in changes:  # as the store writes them
                connection.execute(task_usage.update().where(t.tenant_id == tenant.id, t.task == task).values(
                    cost_nanos=nanos + d_nanos + (rem + d_rem) // 10**6, cost_rem=(rem + d_rem) % 10**6,
                ))  # fmt: skip
        _assert_exact(engine, tenant)
    assert len(set(_table(engine, tenant)["bucket"])) > 3


class TestOwnEdges:
    """A tenant's own bucket edges (`set_edges`: pricing puts them just above its job prices)."""

    def _costs(self, engine: Engine, tenant: Tenant) -> list[int]:
        with engine.connect() as connection:
            rows = connection.execute(select(task_usage.c.cost_nanos, task_usage.c.cost_rem).where(task_usage.c.tenant_id == tenant.id)).all()
        return sorted({int(settle_nanos(n, r)) for n, r in rows} - {0})

    def test_figures_with_own_edges_stay_exact_under_increments(self, engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
        tenant = make_tenant("figures-edges", timezone="America/Los_Angeles")
        rng = random.Random(5)
        _send(engine, tenant, [_event(rng, 25) for _ in range(60)])
        rollup_tenant(engine, tenant, now=NOW)
        costs = self._costs(engine, tenant)
        own = [costs[len(costs) // 3], costs[len(costs) // 3] + 1, costs[-1]]  # a task's cost: in the bucket from it
        with engine.begin() as connection:
            assert month_figures.set_edges(connection, tenant.id, tenant.timezone, own, now=NOW)
            assert not month_figures.set_edges(connection, tenant.id, tenant.timezone, reversed(own), now=NOW)  # the same: kept
            edges = month_figures.edges_of(connection, tenant.id)
        assert set(own) <= set(edges.tolist()) and len(edges) == len(month_figures.COST_EDGES_NANOS) + len(set(own))
        _assert_exact(engine, tenant)
        assert int(_table(engine, tenant)["bucket"].max()) > 0
        for _ in range(4):  # the rollup moves tasks between the new buckets
            _send(engine, tenant, [_event(rng, 25) for _ in range(25)])
            rollup_tenant(engine, tenant, now=NOW)
            _assert_exact(engine, tenant)
        with engine.begin() as connection:  # back to the dashboard's edges alone
            assert month_figures.set_edges(connection, tenant.id, tenant.timezone, [], now=NOW)
            assert np.array_equal(month_figures.edges_of(connection, tenant.id), month_figures.COST_EDGES_NANOS)
        _assert_exact(engine, tenant)

    def test_a_tenant_not_rolled_up_yet_keeps_them_for_its_first_rollup(self, engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
        tenant = make_tenant("figures-edges-first")
        with engine.begin() as connection:
            assert month_figures.set_edges(connection, tenant.id, tenant.timezone, [1_500_000], now=NOW)
        _send(engine, tenant, [_event(random.Random(9), 10) for _ in range(30)])
        assert rollup_tenant(engine, tenant, now=NOW).rebuilt
        with engine.connect() as connection:
            assert 1_500_000 in month_figures.edges_of(connection, tenant.id).tolist()
        _assert_exact(engine, tenant)

    def test_each_bucket_lies_in_one_of_the_dashboards(self) -> None:
        edges = month_figures.with_own([1_500_000, 2_000_000, 7])  # 2_000_000 is the dashboard's own
        assert len(edges) == len(month_figures.COST_EDGES_NANOS) + 2
        shown = [month_figures.display_bucket(b, edges) for b in range(len(edges) + 1)]
        # [0, 7) and [7, 1_000_000) in the first; [1_000_000, 1_500_000) and [1_500_000, 2_000_000) in the second
        assert shown[:5] == [0, 0, 1, 1, 2] and shown[-1] == len(month_figures.COST_EDGES_NANOS)
        assert month_figures.bucket_bounds(3, edges) == (1_500_000, 2_000_000)
        assert len(month_figures.with_own(range(1, 1000))) == len(month_figures.COST_EDGES_NANOS) + month_figures.MAX_OWN_EDGES


@pytest.mark.parametrize("scale", [1, 2**40], ids=["costs", "near-int64"])
def test_cost_delta_equals_the_delta_of_whole_contributions(scale: int) -> None:
    """`cost_delta` (a re-pricing's shortcut: each task's keys made once, a task that keeps its
    bucket contributing only its change of cost) is `delta` from the old rows to the re-costed
    ones: random tasks, costs up and down, across bucket edges, open and ended; with values near
    int64 it takes `delta`'s path and is still exact. No database."""
    rng = np.random.default_rng(7)
    n = 2_000
    ended = rng.integers(1_780_000_000_000_000, 1_800_000_000_000_000, n)
    status = rng.choice(np.array(["open", "completed", "failed"], dtype=object), n)
    before = pd.DataFrame({
        "task": np.array([f"t{i}" for i in range(n)], dtype=object),
        "customer": rng.choice(np.array(["acme", "globex"], dtype=object), n),
        "task_type": rng.choice(np.array(["support_ticket", None], dtype=object), n),
        "status": status,
        "ended_us": pd.array(np.where(status == "open", 0, ended), dtype="Int64").astype(object),
        "last_event_us": ended,
        "usage_events": rng.integers(1, 50, n) * scale,
        "input_tokens": rng.integers(0, 10**6, n) * scale,
        "output_tokens": rng.integers(0, 10**5, n) * scale,
        "cost_nanos": rng.integers(0, 20 * 10**9, n),
        "cost_rem": rng.integers(0, 10**6, n),
    })  # fmt: skip
    before.loc[before["status"] == "open", "ended_us"] = None
    change = rng.integers(-(10**9), 10**9, n) * rng.integers(0, 2, n)  # half keep their cost
    rem = before["cost_rem"].to_numpy() + rng.integers(0, 10**6, n)
    nanos = np.maximum(before["cost_nanos"].to_numpy() + change, 0) + rem // 10**6
    rem = rem % 10**6
    edges = month_figures.with_own([1_500_000_000, 7_000_000])
    after = before.assign(cost_nanos=nanos, cost_rem=rem)
    for timezone in ("UTC", "Asia/Kolkata"):
        expected = month_figures.delta(before, after, timezone, edges)
        got = month_figures.cost_delta(before, nanos, rem, timezone, edges)
        assert not expected.empty
        assert _sorted(got).equals(_sorted(expected))
