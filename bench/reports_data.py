"""A synthetic month straight into the rollup tables, for the reports bench and the memory test.

Building a million tasks through events and the rollup takes minutes; the reports read only the
rollup tables (`task_usage`, `task_usage_detail`, `usage_daily`), so these are written directly,
consistent with each other: a task's usage is the sum of its detail rows, and `usage_daily` the
sum of the detail rows by customer, day and model. The tenant's rollup state says it is up to
date at its current prices, so a rollup (or a close) finds nothing to do.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sqlalchemy import Engine, delete, insert, select

from metering.core.db import unit_of_work, write_rows
from metering.core.tables import rollup_state, task_usage, task_usage_detail, usage_daily
from metering.core.tenants import Tenant
from metering.costs.price_buckets import scheme_for
from metering.rollup.pipeline import price_version, tenant_overrides
from metering.rollup.reprice import settings_text
from pricing import service

MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-20250514"),
          ("anthropic", "claude-3-5-haiku-latest"), ("google", "gemini-2.5-flash"), ("acme-ai", "acme-large"),
          ("openai", "o4-mini"), ("google", "gemini-2.5-pro"), ("mistral", "mistral-large-latest"),
          ("deepseek", "deepseek-chat")]  # fmt: skip
TASK_TYPES = np.array(["support_ticket", "code_review", "research", "triage"], dtype=object)
MEASURES = ("usage_events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
            "reasoning_tokens", "cost_nanos", "cost_rem", "unpriced_events")  # fmt: skip
CHUNK = 100_000


def config(customers: int) -> dict[str, Any]:
    return {
        "plans": [
            {"id": "jobs", "type": "per_job", "prices": {"default": "0.40", "support_ticket": "0.80", "code_review": "1.50"}, "failed": "0.05"},
            {"id": "tokens", "type": "per_token", "markup": "0.40"},
        ],
        "customers": [{"id": f"cust-{i:04d}", "plan": "jobs" if i % 2 else "tokens", "compare_with": ["tokens" if i % 2 else "jobs"]}
                      for i in range(customers)],
    }  # fmt: skip


def build_month(engine: Engine, tenant: Tenant, *, tasks: int, customers: int, month: date = date(2026, 10, 1),
                seed: int = 11, first_task: int = 0, configure: bool = True) -> None:  # fmt: skip
    """`tasks` tasks of `customers` customers in the UTC month starting on `month`."""
    if configure:
        with unit_of_work(engine) as session:
            service.load_config(
                session, tenant, yaml.safe_dump(config(customers)), now=datetime(2020, 1, 1, tzinfo=UTC)
            )
    rng = np.random.default_rng(seed)
    start_us = int(datetime.combine(month, datetime.min.time(), tzinfo=UTC).timestamp() * 1_000_000)
    days = (date(month.year + month.month // 12, month.month % 12 + 1, 1) - month).days
    for lo in range(0, tasks, CHUNK):
        n = min(CHUNK, tasks - lo)
        _chunk(engine, tenant, rng, first_task + lo, n, customers, start_us, days, month)
    with engine.connect() as connection:  # planner statistics, as the rollup refreshes them after a rebuild
        connection.exec_driver_sql("ANALYZE")
        connection.commit()
    with unit_of_work(engine) as session:
        overrides = tenant_overrides(session.connection(), tenant.id)
        # The figures' bucket edges that storing the plans put on their job prices, kept.
        edges = session.execute(select(rollup_state.c.cost_edges).where(rollup_state.c.tenant_id == tenant.id)).scalar()
        session.execute(delete(rollup_state).where(rollup_state.c.tenant_id == tenant.id))
        # With its price buckets, as a rollup leaves it: without them a close would rebuild the
        # tenant from its events (there are none here) and find an empty month.
        session.execute(insert(rollup_state).values(tenant_id=tenant.id, watermark_seq=0, price_version=price_version(overrides),
                                                    price_buckets=scheme_for(overrides).text, price_settings=settings_text(overrides), cost_edges=edges,
                                                    updated_at=datetime(2020, 1, 1, tzinfo=UTC)))  # fmt: skip


def _chunk(engine: Engine, tenant: Tenant, rng: np.random.Generator, first: int, n: int, customers: int, start_us: int,
           days: int, month: date) -> None:  # fmt: skip
    ids = np.arange(first, first + n)
    task = np.array([f"task-{i:08d}" for i in ids], dtype=object)
    customer = np.array([f"cust-{c:04d}" for c in rng.integers(0, customers, n)], dtype=object)
    began = start_us + rng.integers(0, days * 86_400 - 3_600, n) * 1_000_000
    ended = began + rng.integers(30, 3_000, n) * 1_000_000
    roll = rng.random(n)
    status = np.where(
        roll < 0.85, "completed", np.where(roll < 0.94, "failed", np.where(roll < 0.97, "cancelled", "open"))
    )
    ended_us = np.where(status == "open", -1, ended)
    kind = TASK_TYPES[rng.integers(0, len(TASK_TYPES), n)]
    # One detail row per task, a second on another model for a fifth of them.
    second = rng.random(n) < 0.2
    rows = np.concatenate([np.arange(n), np.nonzero(second)[0]])
    m = len(rows)
    model = rng.integers(0, len(MODELS), m)
    inputs = rng.integers(500, 60_000, m)
    cache_read = (inputs * rng.random(m) * 0.5).astype(np.int64)
    outputs = rng.integers(50, 6_000, m)
    reasoning = (outputs * rng.random(m) * 0.3).astype(np.int64)
    nanos = (
        inputs * 2_500 + outputs * 10_000 - cache_read * 2_000
    )  # ~2.50 / 10.00 per million, cache reads cheaper
    detail = pd.DataFrame({
        "task": task[rows], "customer": customer[rows], "day_index": (began[rows] - start_us) // 86_400_000_000,
        "provider": [MODELS[i][0] for i in model], "model": [MODELS[i][1] for i in model],
        "usage_events": rng.integers(1, 6, m), "input_tokens": inputs, "output_tokens": outputs,
        "cache_read_tokens": cache_read, "cache_write_tokens": np.zeros(m, dtype=np.int64), "reasoning_tokens": reasoning,
        "cost_nanos": nanos, "cost_rem": rng.integers(0, 1_000_000, m), "unpriced_events": np.zeros(m, dtype=np.int64),
    })  # fmt: skip
    detail = detail.drop_duplicates(["task", "provider", "model"])
    day_text = np.array([(month.toordinal() + d) for d in range(days)])
    detail["day"] = [date.fromordinal(int(day_text[d])) for d in detail["day_index"]]
    sums = detail.groupby("task", sort=False)[list(MEASURES)].sum()
    per_task = sums.loc[task]
    tasks_rows = list(zip(
        [tenant.id] * n, task.tolist(), customer.tolist(), began.tolist(), [1] * n, kind.tolist(), began.tolist(), [1] * n,
        status.tolist(), [None if e < 0 else int(e) for e in ended_us], [1] * n, began.tolist(), began.tolist(),
        np.maximum(ended, began).tolist(), (per_task["usage_events"].to_numpy() + 2).tolist(),
        *(per_task[c].to_numpy().tolist() for c in MEASURES), [1] * n, strict=True,
    ))  # fmt: skip
    task_columns = ("tenant_id", "task", "customer", "customer_us", "customer_seq", "task_type", "task_type_us", "task_type_seq",
                    "status", "ended_us", "status_seq", "started_us", "first_event_us", "last_event_us", "events",
                    *MEASURES, "last_seq")  # fmt: skip
    detail_columns = ("tenant_id", "task", "day", "provider", "model", "customer", *MEASURES)
    detail_rows = list(
        zip([tenant.id] * len(detail), *(detail[c].tolist() for c in detail_columns[1:]), strict=True)
    )
    daily = (
        detail.groupby(["customer", "day", "provider", "model"], sort=False)[list(MEASURES)]
        .sum()
        .reset_index()
    )
    daily_columns = ("tenant_id", "customer", "day", "provider", "model", *MEASURES)
    daily_rows = list(
        zip([tenant.id] * len(daily), *(daily[c].tolist() for c in daily_columns[1:]), strict=True)
    )
    with engine.begin() as connection:
        write_rows(connection, task_usage, task_columns, tasks_rows)
        write_rows(connection, task_usage_detail, detail_columns, detail_rows)
        write_rows(connection, usage_daily, daily_columns, daily_rows, on_conflict="add",
                   keys=("tenant_id", "customer", "day", "provider", "model", "actor", "agent"), add=MEASURES)  # fmt: skip
