"""Benchmark: rating + comparison of 1,000,000 tasks across 1,000 customers under 3 plans.

Runs `pricing.compare.compare_plans` (which rates every customer under its billed plan and the
two others) and the same computation in DuckDB SQL on the same frames, checks that both give the
same revenue, provider cost and task counts per customer and plan, and prints both times.

    .venv/bin/python bench/bench_rating.py [--tasks 1000000] [--customers 1000] [--repeat 3]
        [--db sqlite,postgresql]

Target: pandas ≤ 5 s and within 3× of DuckDB.

With `--db`, the same month is also written into the rollup tables (`usage_daily`, `task_usage`)
of a fresh database, read back through `pricing.repository` (the adapter that close, compare and
the draft invoice use) and compared: the figures must equal the in-memory run's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from pricing.compare import compare_plans
from pricing.config import validate_config

DB_PATH = "/tmp/taskmeter-bench-rating.db"

MONTH = date(2026, 10, 1)
MODELS = [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4"), ("google", "gemini-2.5-flash")]
TASK_TYPES = ["support_ticket", "code_review", "research", "triage", None]
PLAN_IDS = ["tokens", "tokens-plus", "jobs"]
CONFIG: dict[str, Any] = {
    "plans": [
        {
            "id": "tokens", "type": "per_token", "platform_fee": "20.00",
            "rates": {"input": "3.00", "output": "15.00", "cache_read": "0.30", "cache_write": "3.75"},
            "model_rates": [{"provider": "openai", "model": "gpt-4o", "input": "2.50", "output": "10.00",
                             "cache_read": "1.25", "cache_write": "0"}],
        },
        {"id": "tokens-plus", "type": "per_token", "markup": "0.40", "minimum": "100.00"},
        {
            "id": "jobs", "type": "per_job", "included": 50, "failed": "0.05", "platform_fee": "10.00",
            "tiers": {"mode": "graduated", "steps": [
                {"up_to": 500, "price": "0.90"}, {"up_to": 2000, "price": "0.70", "flat": "25.00"},
                {"up_to": None, "price": "0.50"}]},
        },
    ],
}  # fmt: skip


def make_data(n_tasks: int, n_customers: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    names = np.array([f"c{i:04d}" for i in range(n_customers)], dtype=object)
    days = pd.date_range(MONTH, periods=31, freq="D")
    grid = pd.MultiIndex.from_product([range(n_customers), range(31), range(len(MODELS))]).to_frame(
        index=False
    )
    n = len(grid)
    token_usage = pd.DataFrame(
        {
            "customer": pd.array(names[grid[0].to_numpy()], dtype="str"),
            "day": days[grid[1].to_numpy()],
            "provider": pd.array([MODELS[m][0] for m in grid[2]], dtype="str"),
            "model": pd.array([MODELS[m][1] for m in grid[2]], dtype="str"),
            "input_tokens": rng.integers(0, 3_000_000, n, dtype=np.int64),
            "output_tokens": rng.integers(0, 600_000, n, dtype=np.int64),
            "cache_read_tokens": rng.integers(0, 5_000_000, n, dtype=np.int64),
            "cache_write_tokens": rng.integers(0, 400_000, n, dtype=np.int64),
            "provider_cost_nanos": rng.integers(0, 40_000_000_000, n, dtype=np.int64),
            "unpriced_events": (rng.random(n) < 0.001).astype(np.int64),
        }
    )
    start = pd.Timestamp(MONTH, tz="UTC").value
    span = pd.Timestamp(date(2026, 11, 1), tz="UTC").value - start
    tasks = pd.DataFrame(
        {
            "customer": pd.array(names[rng.integers(0, n_customers, n_tasks)], dtype="str"),
            "task": pd.array([f"t{i:07d}" for i in range(n_tasks)], dtype="str"),
            "task_type": pd.array(np.array(TASK_TYPES, dtype=object)[rng.integers(0, len(TASK_TYPES), n_tasks)], dtype="str"),
            "status": pd.array(rng.choice(["completed", "failed", "cancelled"], n_tasks, p=[0.85, 0.1, 0.05]), dtype="str"),
            "ended_at": pd.to_datetime(start + rng.integers(0, span, n_tasks), utc=True),
            "provider_cost_nanos": rng.integers(0, 60_000_000, n_tasks, dtype=np.int64),
        }
    )  # fmt: skip
    return token_usage, tasks


DUCKDB_SQL = """
WITH
tok AS (
    SELECT customer, provider = 'openai' AND model = 'gpt-4o' AS special,
           sum(input_tokens) AS i, sum(output_tokens) AS o, sum(cache_read_tokens) AS cr,
           sum(cache_write_tokens) AS cw, sum(provider_cost_nanos) AS cost, sum(unpriced_events) AS unpriced
    FROM token_usage GROUP BY ALL
),
token_lines AS (
    SELECT customer,
        CASE WHEN special THEN round(i::DECIMAL(38,0) * 2.50 * 0.000001, 2) + round(o::DECIMAL(38,0) * 10.00 * 0.000001, 2)
                             + round(cr::DECIMAL(38,0) * 1.25 * 0.000001, 2)
             ELSE round(i::DECIMAL(38,0) * 3.00 * 0.000001, 2) + round(o::DECIMAL(38,0) * 15.00 * 0.000001, 2)
                + round(cr::DECIMAL(38,0) * 0.30 * 0.000001, 2) + round(cw::DECIMAL(38,0) * 3.75 * 0.000001, 2)
        END AS amount
    FROM tok
),
usage AS (SELECT customer, sum(cost) AS cost, sum(unpriced) AS unpriced FROM tok GROUP BY customer),
task_counts AS (
    SELECT customer, count(*) FILTER (status = 'completed') AS completed,
           count(*) FILTER (status = 'failed') AS failed, count(*) FILTER (status = 'cancelled') AS cancelled,
           coalesce(sum(provider_cost_nanos) FILTER (status <> 'completed'), 0) AS failed_cost
    FROM tasks GROUP BY customer
),
jobs AS (SELECT *, greatest(completed - 50, 0) AS q FROM task_counts),
revenue AS (
    SELECT customer, 'tokens' AS plan, sum(amount) + 20.00 AS revenue FROM token_lines GROUP BY customer
    UNION ALL
    SELECT customer, 'tokens-plus', greatest(round(cost::DECIMAL(38,0) * 0.000000001 * 1.40, 2), 100.00) FROM usage
    UNION ALL
    SELECT customer, 'jobs',
        round(least(q, 500) * 0.90, 2) + round(least(greatest(q - 500, 0), 1500) * 0.70, 2)
        + CASE WHEN q > 500 THEN 25.00 ELSE 0 END + round(greatest(q - 2000, 0) * 0.50, 2)
        + round((failed + cancelled) * 0.05, 2) + 10.00
    FROM jobs
),
by_customer AS (
    SELECT r.customer, r.plan, r.revenue, round(u.cost::DECIMAL(38,0) * 0.000000001, 6) AS provider_cost,
        r.revenue - round(u.cost::DECIMAL(38,0) * 0.000000001, 6) AS margin,
        u.cost::DECIMAL(38,0) * 0.000000001 AS cost_exact, j.completed, j.failed, j.cancelled, round(j.failed_cost::DECIMAL(38,0) * 0.000000001, 6) AS failed_cost,
        u.unpriced
    FROM revenue r JOIN usage u USING (customer) JOIN jobs j USING (customer)
)
SELECT b.*,
    CASE WHEN b.revenue = 0 THEN NULL ELSE round(margin / b.revenue, 4) END AS margin_pct,
    CASE WHEN completed = 0 THEN NULL ELSE round(b.revenue / completed, 6) END AS revenue_per_completed_task,
    CASE WHEN completed = 0 THEN NULL ELSE round(t.revenue / completed, 6) END AS break_even_job_price,
    CASE WHEN completed = 0 THEN NULL ELSE round(cost_exact / (completed * 0.4), 6) END AS target_margin_job_price
FROM by_customer b JOIN billing USING (customer)
JOIN revenue t ON t.customer = b.customer
    -- the per-token plan whose revenue a job price must match: the row's own, else the billed one,
    -- else the first compared (tokens)
    AND t.plan = CASE WHEN b.plan <> 'jobs' THEN b.plan WHEN billing.plan <> 'jobs' THEN billing.plan ELSE 'tokens' END
ORDER BY b.customer, b.plan
"""
DUCKDB_TASK_TYPES = """
SELECT task_type, count(*) FILTER (status = 'completed') AS completed, count(*) FILTER (status = 'failed') AS failed,
       count(*) FILTER (status = 'cancelled') AS cancelled, sum(provider_cost_nanos) AS cost,
       coalesce(sum(provider_cost_nanos) FILTER (status <> 'completed'), 0) AS failed_cost
FROM tasks GROUP BY task_type
"""
DUCKDB_MODELS = """
WITH c AS (SELECT customer, count(*) FILTER (status = 'completed') AS completed FROM tasks GROUP BY customer)
SELECT customer, provider, model, sum(provider_cost_nanos) AS cost,
       sum(input_tokens) / any_value(completed) AS input_per_task, sum(output_tokens) / any_value(completed) AS output_per_task
FROM token_usage JOIN c USING (customer) GROUP BY ALL
"""


def billing(token_usage: pd.DataFrame, tasks: pd.DataFrame) -> list[dict[str, Any]]:
    """Customers cycle through the plans; each is compared with the two others."""
    names = sorted(set(tasks["customer"]) | set(token_usage["customer"]))
    return [
        {"id": name, "plan": PLAN_IDS[i % 3], "compare_with": [p for p in PLAN_IDS if p != PLAN_IDS[i % 3]]}
        for i, name in enumerate(names)
    ]


def run_duckdb(
    token_usage: pd.DataFrame, tasks: pd.DataFrame, customers: list[dict[str, Any]]
) -> pd.DataFrame:
    con = duckdb.connect()
    con.register(
        "billing",
        pd.DataFrame({"customer": [c["id"] for c in customers], "plan": [c["plan"] for c in customers]}),
    )
    con.register("token_usage", token_usage)
    con.register("tasks", tasks)
    result = con.execute(DUCKDB_SQL).df()
    con.execute(DUCKDB_TASK_TYPES).df()
    con.execute(DUCKDB_MODELS).df()
    con.close()
    return result


def run_pandas(
    token_usage: pd.DataFrame, tasks: pd.DataFrame, customers: list[dict[str, Any]]
) -> pd.DataFrame:
    config = validate_config(CONFIG | {"customers": customers})
    comparison = compare_plans(
        month=MONTH, customers=config.customers, plans=config.plans, token_usage=token_usage, tasks=tasks,
        currency="USD", target_margin=Decimal("0.6"),
    )  # fmt: skip
    return comparison.by_customer.sort_values(["customer", "plan"]).reset_index(drop=True)


def write_rollup(engine: Any, token_usage: pd.DataFrame, tasks: pd.DataFrame) -> Any:
    """The synthetic month as the rollup would have stored it, for one tenant."""
    from metering.core.db import frame_rows, unit_of_work, write_rows
    from metering.core.tables import task_usage, usage_daily
    from metering.core.tenants import create_tenant

    with unit_of_work(engine) as session:
        tenant = create_tenant(session, "bench", now=pd.Timestamp.now(tz="UTC").to_pydatetime())
    zeros = np.zeros(len(token_usage), dtype=np.int64)
    daily = pd.DataFrame({
        "tenant_id": tenant.id, "customer": token_usage["customer"], "day": token_usage["day"].dt.date,
        "provider": token_usage["provider"], "model": token_usage["model"], "usage_events": zeros + 1,
        "input_tokens": token_usage["input_tokens"] + token_usage["cache_read_tokens"] + token_usage["cache_write_tokens"],
        "output_tokens": token_usage["output_tokens"], "cache_read_tokens": token_usage["cache_read_tokens"],
        "cache_write_tokens": token_usage["cache_write_tokens"], "reasoning_tokens": zeros,
        "cost_nanos": token_usage["provider_cost_nanos"], "cost_rem": zeros, "unpriced_events": token_usage["unpriced_events"],
    })  # fmt: skip
    ended_us = (tasks["ended_at"].astype("int64") // 1000).to_numpy()
    n = len(tasks)
    ones, none = np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    task_rows = pd.DataFrame({
        "tenant_id": tenant.id, "task": tasks["task"], "customer": tasks["customer"], "customer_us": ended_us,
        "customer_seq": ones, "task_type": tasks["task_type"], "task_type_us": ended_us, "task_type_seq": ones,
        "status": tasks["status"], "ended_us": ended_us, "status_seq": ones, "started_us": ended_us,
        "first_event_us": ended_us, "last_event_us": ended_us, "events": ones, "usage_events": none,
        "input_tokens": none, "output_tokens": none, "cache_read_tokens": none, "cache_write_tokens": none,
        "reasoning_tokens": none, "cost_nanos": tasks["provider_cost_nanos"], "cost_rem": none, "unpriced_events": none,
        "last_seq": ones,
    })  # fmt: skip
    with engine.begin() as connection:
        for table, frame in ((usage_daily, daily), (task_usage, task_rows)):
            columns = tuple(frame.columns)
            for start in range(0, len(frame), 200_000):
                write_rows(connection, table, columns, frame_rows(frame.iloc[start : start + 200_000], columns))
    return tenant


def run_database(engine: Any, tenant: Any, customers: list[dict[str, Any]]) -> tuple[float, float, pd.DataFrame]:
    """Read the month through pricing.repository, then compare: (read s, total s, result)."""
    from metering.core.periods import parse_month
    from pricing import repository

    config = validate_config(CONFIG | {"customers": customers})
    period = parse_month(f"{MONTH:%Y-%m}", "UTC")
    started = time.perf_counter()
    with engine.connect() as connection:
        from sqlalchemy.orm import Session

        with Session(bind=connection) as session:
            token_usage = repository.token_usage(session, tenant.id, period)
            tasks = repository.ended_tasks(session, tenant.id, period)
    read = time.perf_counter() - started
    comparison = compare_plans(
        month=MONTH, customers=config.customers, plans=config.plans, token_usage=token_usage, tasks=tasks,
        currency="USD", target_margin=Decimal("0.6"),
    )  # fmt: skip
    total = time.perf_counter() - started
    return read, total, comparison.by_customer.sort_values(["customer", "plan"]).reset_index(drop=True)


def best_of(repeat: int, run: Callable[[], pd.DataFrame]) -> tuple[float, pd.DataFrame]:
    times, result = [], pd.DataFrame()
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", default="", help="also read the month from these databases: sqlite,postgresql")
    args = parser.parse_args()
    token_usage, tasks = make_data(args.tasks, args.customers)
    print(
        f"{len(tasks):,} tasks, {len(token_usage):,} daily token rows, {args.customers:,} customers, 3 plans"
    )

    customers = billing(token_usage, tasks)
    pandas_s, ours = best_of(args.repeat, lambda: run_pandas(token_usage, tasks, customers))
    duck_s, theirs = best_of(args.repeat, lambda: run_duckdb(token_usage, tasks, customers))

    for column, other in [("revenue", "revenue"), ("provider_cost", "provider_cost"), ("margin", "margin"),
                          ("tasks_completed", "completed"), ("failed_cost", "failed_cost"),
                          ("margin_pct", "margin_pct"), ("break_even_job_price", "break_even_job_price"),
                          ("target_margin_job_price", "target_margin_job_price")]:  # fmt: skip
        left = [Decimal(str(x)) for x in ours[column]]
        right = [Decimal(str(x)) for x in theirs[other]]
        assert left == right, f"{column} differs between pandas and DuckDB"
    print(f"results agree on revenue, cost, margin, counts ({len(ours):,} customer × plan rows)")
    print(f"pandas (taskmeter): {pandas_s:.3f} s")
    print(f"DuckDB SQL:         {duck_s:.3f} s")
    print(f"ratio:              {pandas_s / duck_s:.2f}×  (best of {args.repeat})")

    for backend in [b for b in args.db.split(",") if b]:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from bench.common import fresh_postgres, fresh_sqlite

        engine = fresh_sqlite(DB_PATH) if backend == "sqlite" else fresh_postgres()
        if engine is None:
            continue
        started = time.perf_counter()
        tenant = write_rollup(engine, token_usage, tasks)
        print(f"{backend}: wrote the month into the rollup tables in {time.perf_counter() - started:.1f} s")
        runs = [run_database(engine, tenant, customers) for _ in range(args.repeat)]
        read_s, total_s, from_db = min(runs, key=lambda r: r[1])
        pd.testing.assert_frame_equal(from_db, ours)
        print(f"{backend}: read through pricing.repository {read_s:.3f} s, read + rate + compare {total_s:.3f} s"
              f" (best of {args.repeat}; same figures as in memory)")  # fmt: skip
        engine.dispose()


if __name__ == "__main__":
    main()
