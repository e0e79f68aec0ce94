"""The per customer-month usage (`usage_months`) stays exact under incremental rollups: random
batches, replays, late events across month ends, unpriced models priced later (a re-pricing from
the rollup's rows), rebuilds; always equal to a recomputation from `usage_daily`, and a month's
usage read from it (`pricing.repository.month_usage`, not by day) equal to the sums of its days
made in SQL (`summed_days`), to the nano."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime

import pandas as pd
import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from metering.core.db import HINTING, is_overflow, unit_of_work
from metering.core.periods import parse_month
from metering.core.tables import rollup_state, tenant_prices, usage_daily, usage_months
from metering.core.tenants import Tenant
from metering.events.schemas import MAX_TOKENS
from metering.rollup import usage_months as sums
from metering.rollup.pipeline import rollup_tenant
from metering.rollup.summary import DAILY_KEYS
from pricing import repository as pricing_repository
from tests.support.histories import cost_change, near_month_ends, random_batches, send
from tests.support.migrations import migrate

NOW = datetime(2026, 12, 20, 12, 0, tzinfo=UTC)
_ids = itertools.count()
MONTHS = ("2026-08", "2026-09", "2026-10", "2026-11", "2026-12")


def _event(rng: random.Random, tasks: int) -> dict:
    when = near_month_ends(rng)
    tokens = rng.choice((10, 2_000, 400_000, 3_000_000, 7_777_777))
    event = {
        "id": f"u{next(_ids)}", "type": "usage", "time": when.isoformat().replace("+00:00", "Z"),
        "customer": rng.choice(("acme", "globex", "initech")), "task": f"t{rng.randrange(tasks)}",
        "provider": "openai", "model": rng.choice(("gpt-4o", "gpt-4o-mini", "no-such-model", "never-priced")),
        "input_tokens": tokens, "output_tokens": rng.randrange(0, tokens), "cache_read_tokens": rng.choice((0, tokens // 3)),
    }  # fmt: skip
    event |= rng.choice(({}, {"actor": "ben@acme.com"}, {"actor": "ben@acme.com", "agent": "ben/codex-3"}, {"actor": "ana@acme.com"}))
    if rng.random() < 0.2:
        event = {**event, "type": rng.choice(("task.completed", "task.failed"))}
        for name in ("provider", "model", "input_tokens", "output_tokens", "cache_read_tokens"):
            event.pop(name)
    return event


def _send(engine: Engine, tenant: Tenant, events: list[dict]) -> None:
    send(engine, tenant, events, NOW)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({name: "int64" for name in sums.MEASURES})
    return frame.sort_values(list(sums.KEYS)).reset_index(drop=True)[[*sums.KEYS, *sums.MEASURES]]


def _table(engine: Engine, tenant: Tenant) -> pd.DataFrame:
    with engine.connect() as connection:
        return _sorted(sums.stored(connection, tenant.id))


def _assert_exact(engine: Engine, tenant: Tenant) -> None:
    """The table is its recomputation from `usage_daily`, and each month's usage read from it is
    the sums of its days made in SQL, to the nano (the whole tenant and one customer)."""
    with engine.connect() as connection:
        expected = _sorted(sums.recompute(connection, tenant.id))
    pd.testing.assert_frame_equal(_table(engine, tenant), expected, check_dtype=False, check_exact=True)
    keys = ["customer", "provider", "model", "actor", "agent"]
    with Session(engine) as session:
        for label in MONTHS:
            period = parse_month(label, tenant.timezone)
            for customer in (None, "acme"):
                new = pricing_repository.month_usage(session, tenant.id, period, customer, by_day=False)
                old = pricing_repository.summed_days(session, tenant.id, period, customer)
                assert new.dtypes.to_dict() == old.dtypes.to_dict()
                pd.testing.assert_frame_equal(new.sort_values(keys).reset_index(drop=True), old.sort_values(keys).reset_index(drop=True), check_exact=True)


@pytest.mark.parametrize("timezone", ["UTC", "America/Los_Angeles"])
def test_the_sums_equal_a_recomputation_after_random_batches(engine: Engine, make_tenant, timezone: str) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant(f"usage-months-{timezone.replace('/', '-').lower()}", timezone=timezone)
    rng = random.Random(23 + len(timezone))
    for batch, events in enumerate(random_batches(rng, lambda: _event(rng, 25), 10)):
        _send(engine, tenant, events)
        if batch == 6:  # a price for the unknown model: the next rollup re-prices from the rollup's rows
            with unit_of_work(engine) as session:
                session.execute(tenant_prices.insert().values(
                    tenant_id=tenant.id, provider="openai", model="no-such-model", input="1.123456789", output="2.3000001",
                    cache_read="0.3333333", cache_write=None, updated_at=NOW,
                ))  # fmt: skip
        result = rollup_tenant(engine, tenant, now=NOW)
        assert (result.repriced is not None) == (batch == 6) and result.rebuilt == (batch == 0)
        _assert_exact(engine, tenant)
    table = _table(engine, tenant)
    assert (table["days"] > 0).all() and table["unpriced_tokens"].sum() > 0 and len(set(table["month"])) >= 3
    assert len(set(table["actor"])) == 3 and (table["provider_cost_nanos"] != table["cost_nanos"]).any()
    # A rebuild from the events (buckets dropped) writes the same sums.
    with unit_of_work(engine) as session:
        session.execute(update(rollup_state).where(rollup_state.c.tenant_id == tenant.id).values(price_buckets=None))
    assert rollup_tenant(engine, tenant, now=NOW).rebuilt
    pd.testing.assert_frame_equal(_table(engine, tenant), table, check_exact=True)
    _assert_exact(engine, tenant)


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Kolkata"])
def test_shifted_costs_equal_a_recomputation(engine: Engine, make_tenant, timezone: str) -> None:  # type: ignore[no-untyped-def]
    """Random cost changes of random daily rows (up and down, carried remainders, unpriced events
    priced and unpriced): the sums moved by `shift_costs` equal those recomputed from the changed
    daily rows."""
    tenant = make_tenant(f"usage-months-shift-{timezone.replace('/', '-').lower()}", timezone=timezone)
    rng = random.Random(43 + len(timezone))
    _send(engine, tenant, [_event(rng, 40) for _ in range(300)])
    rollup_tenant(engine, tenant, now=NOW)
    u = usage_daily.c
    for _round in range(6):
        with engine.begin() as connection:
            rows = connection.execute(select(*[u[k] for k in DAILY_KEYS], u.cost_nanos, u.cost_rem, u.unpriced_events, u.usage_events)
                                      .where(u.tenant_id == tenant.id)).all()  # fmt: skip
            picked = rng.sample(rows, rng.randrange(1, len(rows)))
            changes = []
            for row in picked:
                d_nanos, d_rem = cost_change(rng, row.cost_nanos, row.cost_rem)
                d_unpriced = rng.choice((0, -row.unpriced_events, row.usage_events - row.unpriced_events))
                changes.append((*[getattr(row, k) for k in DAILY_KEYS], d_nanos, d_rem, d_unpriced, row.cost_nanos, row.cost_rem))
            frame = pd.DataFrame(changes, columns=[*DAILY_KEYS, "d_nanos", "d_rem", "d_unpriced", "nanos", "rem"])
            frame["day"] = pd.to_datetime(frame["day"])
            moved = sums.shift_costs(connection, tenant.id, frame[[*DAILY_KEYS, "d_nanos", "d_rem", "d_unpriced"]])
            assert moved == len(changes)
            for *key, d_nanos, d_rem, d_unpriced, nanos, rem in changes:  # as the store writes them
                connection.execute(usage_daily.update().where(u.tenant_id == tenant.id, *[u[k] == v for k, v in zip(DAILY_KEYS, key, strict=True)])
                                   .values(cost_nanos=nanos + d_nanos + (rem + d_rem) // 10**6, cost_rem=(rem + d_rem) % 10**6,
                                           unpriced_events=u.unpriced_events + d_unpriced))  # fmt: skip
        _assert_exact(engine, tenant)



def test_the_upgrade_fills_the_sums_of_the_days_rolled_up_before(engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
    tenants = [make_tenant("usage-months-upgrade"), make_tenant("usage-months-upgrade-la", timezone="America/Los_Angeles")]
    rng = random.Random(5)
    for tenant in tenants:
        _send(engine, tenant, [_event(rng, 20) for _ in range(80)])
        rollup_tenant(engine, tenant, now=NOW)
        _send(engine, tenant, [_event(rng, 20) for _ in range(40)])
        rollup_tenant(engine, tenant, now=NOW)
    before = {tenant.id: _table(engine, tenant) for tenant in tenants}
    migrate(engine, "0021", down=True)
    try:
        with engine.connect() as connection:
            assert "usage_months" not in connection.dialect.get_table_names(connection)
    finally:
        migrate(engine, "head")
    for tenant in tenants:
        assert not before[tenant.id].empty
        pd.testing.assert_frame_equal(_table(engine, tenant), before[tenant.id], check_exact=True)
        _assert_exact(engine, tenant)
    with engine.connect() as connection:
        assert connection.execute(select(usage_months.c.tenant_id).distinct()).scalars().all() != []


@pytest.mark.parametrize("rollups", [1, 3])
def test_a_sum_past_int64_reads_the_days(engine: Engine, make_tenant, rollups: int) -> None:  # type: ignore[no-untyped-def]
    """Three days of 4e18 nano-units each: a month's sum past int64, which the table cannot hold
    (numpy's sums would wrap around to a negative cost). The key is kept `too_large` (written by a
    rebuild, or reached by increments) and its month read from its days, as before the table."""
    tenant = make_tenant(f"usage-months-huge-{rollups}")
    with unit_of_work(engine) as session:
        session.execute(tenant_prices.insert().values(
            tenant_id=tenant.id, provider="acme-ai", model="acme-max", input="2000", output="2000", cache_read=None,
            cache_write=None, updated_at=NOW,
        ))  # fmt: skip
    events = [{"id": f"h{i}", "type": "usage", "time": f"2026-11-0{i + 1}T10:00:00Z", "customer": "acme", "task": f"t{i}",
               "provider": "acme-ai", "model": "acme-max", "input_tokens": MAX_TOKENS, "output_tokens": MAX_TOKENS,
               "task_type": f"kind-{i}"}  # apart in customer_months (whose increments PostgreSQL refuses past int64)
              for i in range(3)]  # fmt: skip
    for part in ([events] if rollups == 1 else [[e] for e in events]):
        _send(engine, tenant, part)
        rollup_tenant(engine, tenant, now=NOW)
    with engine.connect() as connection:
        [row] = connection.execute(select(usage_months).where(usage_months.c.tenant_id == tenant.id)).all()
    assert row.too_large == 1 and row.days == 3 and row.cost_nanos == 0
    period = parse_month("2026-11", tenant.timezone)
    with Session(engine) as session:
        if engine.dialect.name == "postgresql":  # sum(bigint) is numeric there
            read = pricing_repository.month_usage(session, tenant.id, period, by_day=False)
            # past int64 (read as columns): the days, which rating sums exactly itself, as before the table
            pd.testing.assert_frame_equal(read, pricing_repository.month_usage(session, tenant.id, period, by_day=True), check_exact=True)
            assert sum(int(v) for v in read["provider_cost_nanos"]) == 12 * 10**18
        else:  # SQLite's sum() cannot make it: the caller's 409, as before the table
            with pytest.raises(OperationalError) as raised:
                pricing_repository.month_usage(session, tenant.id, period, by_day=False)
            assert is_overflow(raised.value)


def test_sqlite_reads_the_days_by_primary_key(engine: Engine) -> None:
    """With the days listed, SQLite's planner would take the (tenant_id, day) index and then look
    each row up in the table; the read names the primary key's index."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's planner")
    u = usage_daily.c
    query = sums.days_query(
        u.tenant_id == 1, u.customer.in_(["a", "b"]), u.day.in_([date(2026, 10, 1), date(2026, 10, 2)]),
        u.provider.in_(["openai"]), u.model.in_(["gpt-4o", "gpt-4o-mini"]),
    )  # fmt: skip
    compiled = query.compile(dialect=HINTING, compile_kwargs={"render_postcompile": True})
    assert "FROM usage_daily INDEXED BY sqlite_autoindex_usage_daily_1" in str(compiled)
    with engine.connect() as connection:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        plan = cursor.execute("EXPLAIN QUERY PLAN " + str(compiled), [compiled.params[n] for n in compiled.positiontup or ()]).fetchall()
        cursor.close()
    assert [row[3] for row in plan] == ["SEARCH usage_daily USING PRIMARY KEY (tenant_id=? AND customer=? AND day=? AND provider=? AND model=?)"]


@pytest.mark.parametrize("scale", [1, 2**40], ids=["costs", "near-int64"])
def test_cost_delta_equals_the_delta_of_whole_contributions(scale: int) -> None:
    """`cost_delta` (a re-pricing's shortcut: each daily row's key made once, its contribution
    the change of its cost measures) is `delta` from the old rows to the re-costed ones: costs up
    and down, rows becoming priced or unpriced, half-up settling at the edges; with values near
    int64 it takes `delta`'s path and is still exact. No database."""
    import numpy as np

    rng = np.random.default_rng(11)
    n = 3_000
    days = np.datetime64("2026-09-28") + rng.integers(0, 70, n).astype("timedelta64[D]")
    before = pd.DataFrame({
        "customer": rng.choice(np.array(["acme", "globex"], dtype=object), n),
        "day": days.astype("datetime64[ns]"),
        "provider": np.array(["openai"] * n, dtype=object),
        "model": rng.choice(np.array(["gpt-4o", "gpt-4o-mini"], dtype=object), n),
        "actor": rng.choice(np.array(["", "ana"], dtype=object), n),
        "agent": rng.choice(np.array(["", "bot-1"], dtype=object), n),
        **{name: rng.integers(0, 10**6, n) * scale for name in sums.SUMS if name not in ("cost_nanos", "cost_rem", "unpriced_events")},
        "cost_nanos": rng.integers(0, 10**9, n),
        "cost_rem": rng.choice(np.array([0, 499_999, 500_000, 999_999]), n),
        "unpriced_events": rng.integers(0, 3, n),
    })[list(sums.DAILY_INPUT)]  # fmt: skip
    nanos = np.maximum(before["cost_nanos"].to_numpy() + rng.integers(-(10**8), 10**8, n) * rng.integers(0, 2, n), 0)
    rem = rng.choice(np.array([0, 499_999, 500_000, 999_999]), n)
    unpriced = np.maximum(before["unpriced_events"].to_numpy() + rng.integers(-2, 2, n), 0)
    expected = sums.delta(before, before.assign(cost_nanos=nanos, cost_rem=rem, unpriced_events=unpriced))
    got = sums.cost_delta(before, nanos, rem, unpriced)
    order = list(sums.KEYS)
    assert not expected.empty
    pd.testing.assert_frame_equal(
        got.sort_values(order).reset_index(drop=True)[[*sums.KEYS, *sums.MEASURES]].astype({m: object for m in sums.MEASURES}),
        expected.sort_values(order).reset_index(drop=True)[[*sums.KEYS, *sums.MEASURES]].astype({m: object for m in sums.MEASURES}),
        check_dtype=False,
        check_exact=True,  # (otherwise within a relative tolerance: a nano-unit off would pass)
    )
