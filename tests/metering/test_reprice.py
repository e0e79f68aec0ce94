"""Re-pricing from the rollup's own rows: the same tables, to the byte, as a rebuild from events."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, delete, func, insert, select, update

from metering.core.db import unit_of_work
from metering.core.tables import (
    customer_months,
    metadata,
    rollup_state,
    tenant_model_aliases,
    tenant_prices,
    usage_months,
)
from metering.core.tenants import Tenant
from metering.costs.price_buckets import BucketScheme, scheme_for
from metering.costs.prices import REM_PER_NANO, price_sums, price_usage
from metering.costs.ratecards import PriceBook, TenantPrice
from metering.events.ingest import ingest_events
from metering.rollup.pipeline import RollupResult, rollup_tenant
from metering.rollup.reprice import LEVELS, PricesMoved, reprice_tenant
from metering.rollup.stores import store_for
from metering.rollup.stores.common import ROLLUP_TABLES, sorted_unique
from metering.rollup.stores.sqlite import HINTING, primary_key_update
from tests.factories import make_event
from tests.support.migrations import migrate

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
MODELS = [
    ("openai", "gpt-4o"), ("google", "gemini-2.5-pro"), ("anthropic", "claude-sonnet-4-20250514"),
    ("deepseek", "deepseek-chat"), ("deepseek", "deepseek-v4-flash"), ("acme-ai", "acme-large"), ("azure", "my-deploy-1"),
]  # fmt: skip


def random_events(rng: random.Random, n: int, prefix: str = "ev") -> list[dict]:
    """Usage around genai-prices' and the tenant's version dates, any minute (time-of-day
    prices), inputs on both sides of tier thresholds, cache reads and (1-hour) writes."""
    base = datetime(2026, 8, 10, tzinfo=UTC)
    boundaries = [datetime(2026, 8, 17, tzinfo=UTC), datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 9, 10, tzinfo=UTC)]
    out = []
    for i in range(n):
        if rng.random() < 0.5:
            at = base + timedelta(minutes=rng.randrange(60 * 24 * 45))
        else:  # within hours of a version's start: another tenant-local day in most timezones
            at = rng.choice(boundaries) + timedelta(minutes=rng.randrange(-60 * 12, 60 * 12))
        provider, model = rng.choice(MODELS)
        inputs = rng.choice([rng.randrange(1, 5_000), rng.randrange(100_000, 300_000), 200_000, 200_001, 128_000])
        cache_read = rng.randrange(inputs // 3 + 1)
        cache_write = rng.randrange((inputs - cache_read) // 2 + 1)
        event = make_event(
            id=f"{prefix}{i}", task=f"task{rng.randrange(12)}", customer=rng.choice(["acme", "globex"]),
            time=at.isoformat().replace("+00:00", "Z"), provider=provider, model=model, input_tokens=inputs, output_tokens=rng.randrange(5_000),
            cache_read_tokens=cache_read, cache_write_tokens=cache_write,
            cache_write_1h_tokens=rng.randrange(cache_write + 1), actor=rng.choice([None, "ann", "bob"]),
        )  # fmt: skip
        if rng.random() < 0.15:
            event = make_event(id=f"{prefix}{i}", type=rng.choice(["task.started", "task.completed"]), task=event["task"], time=event["time"])
        out.append(event)
    return out


PRICES_1 = [
    {"provider": "openai", "model": "gpt-4o", "input": "2.1234", "output": "9.87", "request": "0.0003"},
]
PRICES_2 = [
    {"provider": "openai", "model": "gpt-4o", "versions": [
        {"input": "2.1234", "output": "9.87", "request": "0.0003"},
        {"input": "1.9", "output": "8.0", "cache_read": "0.1375", "start_date": "2026-09-01"},
    ]},
    {"provider": "acme-ai", "model": "acme-large", "versions": [{
        "input": "3.0", "output": "15.0", "cache_read": "0.3", "cache_write": "3.75", "cache_write_1h": "6.0",
        "request": "0.000123", "tiers": [{"above": 200000, "input": "6.0", "output": "22.5", "cache_write_1h": "12.0"}],
    }]},
    {"provider": "google", "model": "gemini-2.5-pro", "input": "1.0", "output": "5.0",
     "tiers": [{"above": 128000, "input": "2.0"}, {"above": 200000, "output": "7.5"}]},
]  # fmt: skip
ALIASES_2 = [("my-deploy-*", "openai", "gpt-4o-mini")]


def set_prices(engine: Engine, tenant: Tenant, prices: list[dict], aliases: list[tuple[str, str, str]] = ()) -> None:  # type: ignore[assignment]
    with unit_of_work(engine) as session:
        session.execute(delete(tenant_prices).where(tenant_prices.c.tenant_id == tenant.id))
        session.execute(delete(tenant_model_aliases).where(tenant_model_aliases.c.tenant_id == tenant.id))
        for raw in prices:
            price = TenantPrice.from_mapping(raw)
            first = price.versions[0]
            session.execute(insert(tenant_prices).values(
                tenant_id=tenant.id, provider=price.provider, model=price.model, input=f"{first.input:f}", output=f"{first.output:f}",
                updated_at=NOW, spec=orjson.dumps(price.as_mapping()).decode(),
            ))  # fmt: skip
        for position, (match, provider, model) in enumerate(aliases):
            session.execute(insert(tenant_model_aliases).values(
                tenant_id=tenant.id, position=position, match=match, provider=provider, model=model, updated_at=NOW,
            ))  # fmt: skip


def send(engine: Engine, tenant: Tenant, events: list[dict]) -> None:
    with unit_of_work(engine) as session:
        assert not ingest_events(session, tenant.id, events, now=NOW).rejected


def rollup(engine: Engine, tenant: Tenant) -> RollupResult:
    return rollup_tenant(engine, tenant, now=NOW)


def tables(engine: Engine, tenant: Tenant) -> dict[str, list[tuple]]:
    """Every rollup table's rows of the tenant (and its per customer-month figures), every column, in key order."""
    with engine.connect() as connection:
        return {
            table.name: [tuple(row) for row in connection.execute(
                select(table).where(table.c.tenant_id == tenant.id).order_by(*table.primary_key.columns)
            )]
            for table in (*ROLLUP_TABLES, customer_months, usage_months)
        }  # fmt: skip


def rebuilt(engine: Engine, tenant: Tenant) -> dict[str, list[tuple]]:
    with unit_of_work(engine) as session:
        session.execute(update(rollup_state).where(rollup_state.c.tenant_id == tenant.id).values(price_buckets=None))
    assert rollup(engine, tenant).rebuilt
    return tables(engine, tenant)


class TestRepriceEqualsRebuild:
    @pytest.mark.parametrize(("timezone", "seed"), [("UTC", 1), ("Asia/Kolkata", 2), ("America/Los_Angeles", 3)])
    def test_every_table_after_price_changes(self, engine: Engine, make_tenant, timezone: str, seed: int) -> None:  # type: ignore[no-untyped-def]
        tenant = make_tenant(timezone=timezone)
        rng = random.Random(seed)
        send(engine, tenant, random_events(rng, 300))
        assert rollup(engine, tenant).rebuilt
        unpriced_before = sum(row[-1] for row in tables(engine, tenant)["usage_daily"])
        assert unpriced_before > 0  # acme-large and the Azure deployment are unknown

        steps = [(PRICES_1, []), (PRICES_2, ALIASES_2), (PRICES_2, [("my-deploy-*", "deepseek", "deepseek-v4-flash")]), ([], [])]
        for step, (prices, aliases) in enumerate(steps):
            set_prices(engine, tenant, prices, aliases)
            if step == 3:  # as after a genai-prices upgrade: the old prices unknown, every model re-priced
                with unit_of_work(engine) as session:
                    session.execute(update(rollup_state).values(price_settings=None))
            send(engine, tenant, random_events(rng, 40, prefix=f"new{step}-"))  # re-priced, then rolled up in the same run
            result = rollup(engine, tenant)
            assert result.repriced is not None and not result.rebuilt
            assert result.repriced.models and result.repriced.buckets > 0
            repriced = tables(engine, tenant)
            assert repriced == rebuilt(engine, tenant), f"step {step}"
            with engine.connect() as connection:  # every summed cost carried
                costed = [table for table in ROLLUP_TABLES if "cost_rem" in table.c]  # the buckets hold none
                assert all(connection.execute(select(func.max(table.c.cost_rem))).scalar_one() < REM_PER_NANO for table in costed)
            if step == 1:  # the aliased deployment and acme-large are priced now
                assert sum(row[-1] for row in repriced["usage_daily"]) < unpriced_before
            if step == 3:
                assert len(result.repriced.models) == len(MODELS)

    def test_only_the_models_whose_price_changed_are_read(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, random_events(random.Random(4), 200))
        rollup(engine, tenant)
        set_prices(engine, tenant, PRICES_1)
        result = rollup(engine, tenant).repriced
        assert result is not None and result.models == [("openai", "gpt-4o")]
        set_prices(engine, tenant, PRICES_1, [("my-deploy-*", "openai", "gpt-4o")])
        result = rollup(engine, tenant).repriced
        assert result is not None and result.models == [("azure", "my-deploy-1")]
        assert tables(engine, tenant) == rebuilt(engine, tenant)


class TestWhatNeedsTheEvents:
    def test_a_tier_threshold_the_buckets_do_not_separate_rebuilds(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, random_events(random.Random(5), 120))
        rollup(engine, tenant)
        assert 150_000 not in scheme_for([]).thresholds
        set_prices(engine, tenant, [{"provider": "openai", "model": "gpt-4o", "input": "2", "output": "8",
                                     "tiers": [{"above": 150000, "input": "4"}]}])  # fmt: skip
        result = rollup(engine, tenant)
        assert result.rebuilt and result.repriced is None
        with engine.connect() as connection:
            stored = connection.execute(select(rollup_state.c.price_buckets).where(rollup_state.c.tenant_id == tenant.id)).scalar_one()
        assert 150_000 in BucketScheme.parse(stored).thresholds  # type: ignore[union-attr]
        set_prices(engine, tenant, [{"provider": "openai", "model": "gpt-4o", "input": "2", "output": "8",
                                     "tiers": [{"above": 150000, "input": "5"}]}])  # fmt: skip
        result = rollup(engine, tenant)
        assert result.repriced is not None and not result.rebuilt  # the threshold is kept from now on
        assert tables(engine, tenant) == rebuilt(engine, tenant)

    def test_a_rollup_without_buckets_rebuilds_once(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, random_events(random.Random(6), 50))
        rollup(engine, tenant)
        with unit_of_work(engine) as session:  # as after migration 0018
            session.execute(update(rollup_state).values(price_buckets=None, price_settings=None))
        assert rollup(engine, tenant).rebuilt
        assert not rollup(engine, tenant).rebuilt

    def test_a_concurrent_rollup_makes_the_repricing_write_nothing(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, random_events(random.Random(7), 80))
        rollup(engine, tenant)
        before = tables(engine, tenant)
        with engine.connect() as connection:
            state = connection.execute(select(rollup_state).where(rollup_state.c.tenant_id == tenant.id)).one()
        send(engine, tenant, random_events(random.Random(8), 5, prefix="late"))
        rollup(engine, tenant)  # moves the watermark past `state`
        moved = tables(engine, tenant)
        assert moved != before
        with pytest.raises(PricesMoved):
            reprice_tenant(engine, tenant.id, state, PRICES_1, now=NOW, store=store_for(engine), timezone=tenant.timezone)
        assert tables(engine, tenant) == moved


def test_summed_usage_costs_what_its_events_cost_one_by_one() -> None:
    rng = np.random.default_rng(9)
    n = 5_000
    inputs = rng.integers(0, 400_000, n)
    cache_write = rng.integers(0, inputs // 4 + 1)
    events = pd.DataFrame({
        "provider": "acme-ai", "model": "acme-large", "time_us": np.full(n, 1_790_000_000_000_000),
        "input_tokens": inputs, "cache_read_tokens": rng.integers(0, inputs // 2 + 1), "cache_write_tokens": cache_write,
        "cache_write_1h_tokens": rng.integers(0, cache_write + 1), "output_tokens": rng.integers(0, 9_000, n),
    })  # fmt: skip
    book = PriceBook(PRICES_2)
    one_by_one = price_usage(events, book)
    scheme = scheme_for(PRICES_2)
    band = scheme.band(inputs)
    sums = events.assign(band=band, usage_events=1).groupby("band").agg(
        {name: "sum" for name in ("usage_events", "input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "output_tokens")}
    ).reset_index()  # fmt: skip
    sums = sums.assign(provider="acme-ai", model="acme-large", time_us=1_790_000_000_000_000, tier_input=scheme.tier_input(sums["band"]))
    priced = price_sums(sums, book)
    exact = int(one_by_one["cost_nanos"].sum()) * REM_PER_NANO + int(one_by_one["cost_rem"].sum())
    assert int(priced["cost_nanos"].sum()) * REM_PER_NANO + int(priced["cost_rem"].sum()) == exact
    assert (priced["cost_rem"] < REM_PER_NANO).all() and len(sums) > 1


def test_migration_0024_down_and_up(engine: Engine, tenant: Tenant) -> None:
    """Down: the buckets' cost columns back as zeros and the bucket schemes dropped, so that the
    next rollup rebuilds them with their costs; up: the columns gone, re-pricing as before."""
    send(engine, tenant, random_events(random.Random(10), 120))
    assert rollup(engine, tenant).rebuilt
    migrate(engine, "0023", down=True)
    try:
        with engine.connect() as connection:
            columns = {column["name"] for column in connection.dialect.get_columns(connection, "task_usage_buckets")}
            assert {"cost_nanos", "cost_rem", "unpriced_events"} <= columns
            assert connection.execute(select(rollup_state.c.price_buckets)).scalar_one() is None
    finally:
        migrate(engine, "head")
    with engine.connect() as connection:
        columns = {column["name"] for column in connection.dialect.get_columns(connection, "task_usage_buckets")}
        assert not columns & {"cost_nanos", "cost_rem", "unpriced_events"}
        context = MigrationContext.configure(connection, opts={
            "compare_type": True, "include_object": lambda obj, name, type_, reflected, other: getattr(obj, "table", obj).name == "task_usage_buckets",
        })  # fmt: skip
        assert compare_metadata(context, metadata) == []
    assert rollup(engine, tenant).rebuilt  # the schemes dropped by the downgrade
    set_prices(engine, tenant, PRICES_1)
    result = rollup(engine, tenant)
    assert result.repriced is not None and not result.rebuilt and "task_usage_buckets" not in result.repriced.rows_changed
    assert tables(engine, tenant) == rebuilt(engine, tenant)


def test_sqlite_cost_updates_find_their_rows_by_primary_key(engine: Engine) -> None:
    """SQLite's planner would find a detail or daily row through the (tenant_id, day) index (it
    ends with the key's columns, narrower rows): two seeks per row, in day order. The store's
    UPDATE names the primary key's index, which exists under that name."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's planner")
    for table, keys in LEVELS:
        compiled = primary_key_update(table, keys).compile(dialect=HINTING)
        assert f"UPDATE {table.name} INDEXED BY sqlite_autoindex_{table.name}_1 SET " in str(compiled)
        with engine.connect() as connection:
            cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            plan = cursor.execute("EXPLAIN QUERY PLAN " + str(compiled), [0] * len(compiled.positiontup or ())).fetchall()
            cursor.close()
        assert [row[3] for row in plan] == [f"SEARCH {table.name} USING PRIMARY KEY ({' AND '.join(f'{n}=?' for n in ('tenant_id', *keys))})"]


def test_sorted_unique_is_pythons_order() -> None:
    names = ["b", "a", "é", "B", "a", "z9", "z10", "\U0001f600", "ｚ", ""]
    assert sorted_unique(names) == sorted(set(names))
    assert sorted_unique([]) == []
