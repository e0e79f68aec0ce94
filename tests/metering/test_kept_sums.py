"""Sums per key kept by the rollup (`metering.rollup.kept_sums`): exact past int64 while summed,
a key past int64 stored `too_large` (sums zero, its count kept, sticky until a rebuild), a key
whose count falls to zero deleted; and the migration that gave `customer_months` the flag."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select, update

from metering.core.db import unit_of_work
from metering.core.tables import customer_months, metadata, tenant_prices
from metering.core.tenants import Tenant
from metering.events.ingest import ingest_events
from metering.events.schemas import MAX_TOKENS
from metering.rollup import month_figures
from metering.rollup.kept_sums import KeptSums
from metering.rollup.pipeline import rollup_tenant
from tests.support.migrations import migrate

SUMS = KeptSums(customer_months, month_figures.KEYS, month_figures.MEASURES, count="tasks")
NOW = datetime(2026, 12, 20, 12, 0, tzinfo=UTC)
BIG = 4 * 10**18  # three of them pass int64 (9.22e18)


def _frame(rows: list[tuple[str, int, int]]) -> pd.DataFrame:
    """Contributions of one task each: (customer, month as yyyymm, cost)."""
    return pd.DataFrame({
        "customer": [r[0] for r in rows], "month": [r[1] for r in rows], "task_type": "", "status": "completed",
        "bucket": np.full(len(rows), 13, dtype=np.int64), "tasks": np.ones(len(rows), dtype=np.int64),
        "usage_events": np.ones(len(rows), dtype=np.int64), "input_tokens": np.full(len(rows), 10, dtype=np.int64),
        "output_tokens": np.zeros(len(rows), dtype=np.int64), "cost_nanos": np.array([r[2] for r in rows], dtype=np.int64),
    })  # fmt: skip


class TestSummed:
    def test_sums_that_fit_are_int64_as_a_groupby_makes_them(self) -> None:
        frame = _frame([("acme", 202610, 5), ("acme", 202610, 7), ("globex", 202611, 1)])
        out = SUMS.summed(frame)
        assert out["month"].tolist() == ["2026-10", "2026-11"] and out["cost_nanos"].tolist() == [12, 1]
        assert all(out[name].dtype == np.int64 for name in SUMS.measures)
        plain = frame.groupby(list(SUMS.keys), sort=False, as_index=False)[list(SUMS.measures)].sum()
        pd.testing.assert_frame_equal(out.drop(columns="month"), plain.drop(columns="month"), check_exact=True)

    def test_sums_past_int64_are_exact_where_numpy_wraps(self) -> None:
        frame = _frame([("acme", 202610, BIG)] * 3 + [("globex", 202610, 1)])
        assert int(frame["cost_nanos"].sum()) < 0  # numpy's own sum wraps around
        out = SUMS.summed(frame).set_index("customer")
        assert [int(v) for v in out["cost_nanos"]] == [3 * BIG, 1] and int(out.loc["acme", "tasks"]) == 3

    def test_a_delta_is_exact_and_leaves_out_the_keys_that_do_not_change(self) -> None:
        old = SUMS.summed(_frame([("acme", 202610, BIG), ("acme", 202610, BIG), ("globex", 202610, 3)]))
        new = SUMS.summed(_frame([("acme", 202610, BIG)] * 3 + [("globex", 202610, 3)]))
        kept = old.copy()
        [row] = SUMS.delta(old, new).itertuples()
        assert (row.customer, int(row.tasks), int(row.cost_nanos)) == ("acme", 1, BIG)
        pd.testing.assert_frame_equal(old, kept, check_exact=True)  # the caller's frame is left as it was

    def test_parts_total_as_one_frame_sums(self) -> None:
        rows = [("acme", 202610, BIG), ("acme", 202610, BIG), ("acme", 202610, BIG), ("globex", 202611, 2)]
        parts = [SUMS.summed(_frame(rows[:2])), SUMS.summed(_frame(rows[2:])), SUMS.empty()]
        total = SUMS.total(parts).sort_values("customer").reset_index(drop=True)
        whole = SUMS.summed(_frame(rows)).sort_values("customer").reset_index(drop=True)
        assert total.astype(object).values.tolist() == whole.astype(object).values.tolist()
        assert SUMS.total([]).empty


def _rows(engine: Engine, tenant: Tenant) -> list[tuple[str, int, int, int]]:
    c = customer_months.c
    with engine.connect() as connection:
        query = select(c.customer, c.tasks, c.cost_nanos, c.too_large).where(c.tenant_id == tenant.id).order_by(c.customer)
        return [tuple(row) for row in connection.execute(query).all()]


def test_a_key_past_int64_is_kept_too_large_until_a_rebuild(engine: Engine, tenant: Tenant) -> None:
    def apply(rows: list[tuple[str, int, int]], *, negative: bool = False) -> None:
        change = SUMS.summed(_frame(rows))
        if negative:
            change[list(SUMS.measures)] = -change[list(SUMS.measures)]
        with engine.begin() as connection:
            SUMS.apply(connection, tenant.id, change)

    apply([("acme", 202610, BIG), ("globex", 202610, 5)])
    apply([("acme", 202610, BIG)])
    assert _rows(engine, tenant) == [("acme", 2, 2 * BIG, 0), ("globex", 1, 5, 0)]
    apply([("acme", 202610, BIG)])  # past int64: kept as zero, its tasks counted
    assert _rows(engine, tenant) == [("acme", 3, 0, 1), ("globex", 1, 5, 0)]
    apply([("acme", 202610, BIG)], negative=True)  # back within int64: still too large (sticky)
    assert _rows(engine, tenant) == [("acme", 2, 0, 1), ("globex", 1, 5, 0)]
    apply([("acme", 202610, BIG)] * 2 + [("globex", 202610, 5)], negative=True)  # no task left: gone
    assert _rows(engine, tenant) == []
    with engine.begin() as connection:  # a rebuild writes the sums anew
        assert SUMS.replace(connection, tenant.id, SUMS.summed(_frame([("acme", 202610, BIG)] * 2))) == 1
    assert _rows(engine, tenant) == [("acme", 2, 2 * BIG, 0)]
    with engine.begin() as connection:
        assert SUMS.replace(connection, tenant.id, SUMS.summed(_frame([("acme", 202610, BIG)] * 3))) == 1
    assert _rows(engine, tenant) == [("acme", 3, 0, 1)]



@pytest.mark.parametrize("down", ["0022", "0021"])
def test_the_upgrade_flags_the_figures_past_int64_and_builds_the_declared_table(engine: Engine, tenant: Tenant, down: str) -> None:
    """Down before the flag, the figures as the old code wrote three tasks of 4e18 nano-units
    (numpy's sum wrapped around), and up again: the upgrade rewrites them from the tasks, the key
    past int64 flagged; the table is the declared one."""
    with unit_of_work(engine) as session:
        session.execute(tenant_prices.insert().values(
            tenant_id=tenant.id, provider="acme-ai", model="acme-max", input="2000", output="2000", cache_read=None,
            cache_write=None, updated_at=NOW,
        ))  # fmt: skip
        ingest_events(session, tenant.id, [
            {"id": f"h{i}", "type": "usage", "time": f"2026-11-0{i + 1}T10:00:00Z", "customer": "acme", "task": f"t{i}",
             "provider": "acme-ai", "model": "acme-max", "input_tokens": MAX_TOKENS, "output_tokens": MAX_TOKENS}
            for i in range(3)], now=NOW)  # fmt: skip
    rollup_tenant(engine, tenant, now=NOW)
    assert _rows(engine, tenant) == [("acme", 3, 0, 1)]
    migrate(engine, down, down=True)
    try:
        with engine.begin() as connection:
            columns = {column["name"] for column in connection.dialect.get_columns(connection, "customer_months")}
            assert "too_large" not in columns
            connection.execute(update(customer_months).values(cost_nanos=3 * BIG - 2**64))
    finally:
        migrate(engine, "head")
    assert _rows(engine, tenant) == [("acme", 3, 0, 1)]
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={
            "compare_type": True,
            "include_object": lambda obj, name, type_, reflected, other: getattr(obj, "table", obj).name in {"customer_months", "usage_months"},
        })  # fmt: skip
        assert compare_metadata(context, metadata) == []
