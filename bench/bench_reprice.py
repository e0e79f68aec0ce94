"""A price change applied from the rollup's own rows (`metering.rollup.reprice`) vs the full rebuild.

    .venv/bin/python bench/bench_reprice.py [--events 2000000] [--db sqlite|postgresql|both]

One tenant, `--events` usage events over events/12 tasks (20 models, 1,000 customers, 2% of
requests past 200k input tokens), in its own SQLite file (TASKMETER_BENCH_DIR, default
/tmp/tm-reprice) and PostgreSQL database (taskmeter_bench_reprice), built once (not timed).
Then, on each database, in one run:

1. the tenant changes one model's price (gpt-4o): the next rollup re-prices from the buckets;
2. genai-prices is upgraded (simulated: the previous prices are unknown) and a price changes:
   the next rollup re-prices every model's buckets;
3. the same prices, rebuilt from the events (what every price change cost before): the rollup
   tables' totals must be the ones the re-pricing wrote.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import Engine, delete, func, insert, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_rollup import BASE_US, MODELS, NOW  # noqa: E402  (the rollup bench's store shape)
from bench.common import POSTGRES_URL, cpu_check, machine  # noqa: E402
from metering.core.db import make_engine, unit_of_work, upgrade_schema, write_frame  # noqa: E402
from metering.core.tables import events, rollup_state, tenant_prices, tenants  # noqa: E402
from metering.core.tenants import get_tenant  # noqa: E402
from metering.costs.ratecards import TenantPrice  # noqa: E402
from metering.events.ingest import INSERT_COLUMNS  # noqa: E402
from metering.rollup.pipeline import rollup_tenant  # noqa: E402
from metering.rollup.stores.common import ROLLUP_TABLES  # noqa: E402

FOLDER = Path(os.environ.get("TASKMETER_BENCH_DIR", "/tmp/tm-reprice"))
PG_URL = POSTGRES_URL.rsplit("/", 1)[0] + "/taskmeter_bench_reprice"
PER_TASK = 12


def build(engine: Engine, usage_events: int) -> None:
    """The tenant and its events, unless already there."""
    upgrade_schema(engine)
    with engine.connect() as connection:
        if connection.execute(select(func.count()).select_from(events)).scalar_one() >= usage_events:
            return
    with engine.begin() as connection:
        connection.execute(tenants.insert().values(id=1, name="bench", timezone="UTC", currency="USD", created_at=NOW))
    rng = np.random.default_rng(42)
    tasks, step, started = usage_events // PER_TASK, 100_000, time.perf_counter()
    for first in range(0, tasks, step):
        frame = _chunk(rng, first, min(step, tasks - first))
        with engine.begin() as connection:
            write_frame(connection, events, frame, INSERT_COLUMNS)
        print(f"  {min(first + step, tasks):,}/{tasks:,} tasks ({time.perf_counter() - started:.0f} s)", flush=True)


def _chunk(rng: np.random.Generator, first: int, tasks: int) -> pd.DataFrame:
    n = tasks * PER_TASK
    task = np.repeat(np.arange(first, first + tasks), PER_TASK)
    start = np.repeat(BASE_US + rng.integers(0, 60 * 86400, tasks) * 1_000_000, PER_TASK)
    model = np.where(rng.random(n) < 0.8, np.repeat(rng.integers(0, len(MODELS), tasks), PER_TASK), rng.integers(0, len(MODELS), n))
    inputs = np.where(rng.random(n) < 0.02, rng.integers(200_001, 400_000, n), rng.integers(500, 60_000, n))
    names = np.array([f"task-{t}" for t in range(first, first + tasks)], dtype=object)[task - first]
    return pd.DataFrame({
        "tenant_id": 1, "event_id": [f"{t}-u{j}" for t, j in zip(names, np.tile(np.arange(PER_TASK), tasks), strict=True)],
        "type": "usage", "time_us": start + np.tile(np.arange(1, PER_TASK + 1), tasks) * rng.integers(5, 60, n) * 1_000_000,
        "customer": np.array([f"cust-{c}" for c in range(1000)], dtype=object)[task % 1000], "task": names, "task_type": None,
        "provider": np.array([p for p, _ in MODELS], dtype=object)[model], "model": np.array([m for _, m in MODELS], dtype=object)[model],
        "input_tokens": inputs, "output_tokens": rng.integers(50, 4_000, n), "cache_read_tokens": (inputs * rng.random(n) * 0.6).astype(np.int64),
        "cache_write_tokens": 0, "reasoning_tokens": 0, "actor": None, "agent": None, "metadata": None, "content_hash": "x",
        "ingested_us": 0, "cache_write_1h_tokens": 0,
    })  # fmt: skip


def set_price(engine: Engine, rate: str) -> None:
    price = TenantPrice.from_mapping({"provider": "openai", "model": "gpt-4o", "input": rate, "output": "9.5", "request": "0.0001"})
    with unit_of_work(engine) as session:
        session.execute(delete(tenant_prices).where(tenant_prices.c.tenant_id == 1))
        session.execute(insert(tenant_prices).values(
            tenant_id=1, provider="openai", model="gpt-4o", input=rate, output="9.5", updated_at=NOW,
            spec=orjson.dumps(price.as_mapping()).decode(),
        ))  # fmt: skip


def totals(engine: Engine) -> dict[str, tuple[int, ...]]:
    with engine.connect() as connection:
        return {
            table.name: tuple(int(v or 0) for v in connection.execute(select(
                func.count(), func.sum(table.c.cost_nanos), func.sum(table.c.cost_rem), func.sum(table.c.unpriced_events)
            ).where(table.c.tenant_id == 1)).one())
            for table in ROLLUP_TABLES
            if "cost_nanos" in table.c  # the buckets hold no cost (migration 0024)
        }  # fmt: skip


def measure(url: str, usage_events: int) -> None:
    engine = make_engine(url)
    build(engine, usage_events)
    with engine.connect() as connection:
        tenant = get_tenant(connection, "bench")
        stored = connection.execute(select(func.count()).select_from(events)).scalar_one()
    print(f"{engine.dialect.name}: {stored:,} events, {usage_events // PER_TASK:,} tasks", flush=True)
    first = rollup_tenant(engine, tenant, now=NOW)
    print(f"  first rollup (rebuild: {first.rebuilt}): {first.seconds:.1f} s", flush=True)

    set_price(engine, "2.25")
    one = rollup_tenant(engine, tenant, now=NOW)
    assert one.repriced is not None and not one.rebuilt
    print(f"  one model's price changed, re-priced: {one.seconds:.2f} s ({one.repriced.buckets:,} buckets of "
          f"{len(one.repriced.models)} model(s); rows changed {one.repriced.rows_changed})", flush=True)  # fmt: skip

    with unit_of_work(engine) as session:  # as after a genai-prices upgrade: every model re-priced
        session.execute(update(rollup_state).values(price_settings=None))
    set_price(engine, "2.35")
    every = rollup_tenant(engine, tenant, now=NOW)
    assert every.repriced is not None and not every.rebuilt
    print(f"  every model re-priced: {every.seconds:.2f} s ({every.repriced.buckets:,} buckets of "
          f"{len(every.repriced.models)} models; rows changed {every.repriced.rows_changed})", flush=True)  # fmt: skip
    repriced = totals(engine)

    with unit_of_work(engine) as session:  # the same prices, from the events
        session.execute(update(rollup_state).values(price_buckets=None))
    rebuild = rollup_tenant(engine, tenant, now=NOW)
    assert rebuild.rebuilt
    assert totals(engine) == repriced, (totals(engine), repriced)
    print(f"  full rebuild with the same prices: {rebuild.seconds:.1f} s; totals equal the re-priced ones", flush=True)
    print(f"  ratios: one model {rebuild.seconds / one.seconds:.0f}x faster, every model "
          f"{rebuild.seconds / every.seconds:.1f}x faster than the rebuild", flush=True)  # fmt: skip
    engine.dispose()


def again(url: str, rates: list[str]) -> None:
    """On a store a full run left behind (rolled up, buckets kept): for each rate, gpt-4o's tenant
    price set to it and the one re-pricing that follows, wall and process CPU time (to compare two
    checkouts' code on one store back to back on a shared machine)."""
    engine = make_engine(url)
    with engine.connect() as connection:
        tenant = get_tenant(connection, "bench")
    for rate in rates:
        set_price(engine, rate)
        cpu = time.process_time()
        result = rollup_tenant(engine, tenant, now=NOW)
        cpu = time.process_time() - cpu
        assert result.repriced is not None and not result.rebuilt
        print(f"  gpt-4o at {rate}: re-priced in {result.seconds:.2f} s wall, {cpu:.2f} s CPU "
              f"({result.repriced.buckets:,} buckets; rows changed {result.repriced.rows_changed})", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--again", nargs="+", metavar="RATE", help="only re-price the existing store at these gpt-4o input rates")
    args = parser.parse_args()
    print(machine(), flush=True)
    print(cpu_check(), flush=True)
    if args.again:
        urls = {"sqlite": [f"sqlite:///{FOLDER / 'rollup.db'}"], "postgresql": [PG_URL]}
        for url in urls.get(args.db, [*urls["sqlite"], *urls["postgresql"]]):
            again(url, args.again)
        return
    if args.db in ("sqlite", "both"):
        FOLDER.mkdir(parents=True, exist_ok=True)
        measure(f"sqlite:///{FOLDER / 'rollup.db'}", args.events)
    if args.db in ("postgresql", "both"):
        admin = make_engine(POSTGRES_URL.rsplit("/", 1)[0] + "/postgres")
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            if not connection.execute(text("SELECT 1 FROM pg_database WHERE datname = 'taskmeter_bench_reprice'")).first():
                connection.execute(text("CREATE DATABASE taskmeter_bench_reprice"))
        admin.dispose()
        measure(PG_URL, args.events)
    print(cpu_check(), flush=True)


if __name__ == "__main__":
    main()
