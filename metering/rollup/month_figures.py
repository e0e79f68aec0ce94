"""Per customer-month task figures (`customer_months`), kept current by the rollup.

Each task contributes one row's worth to one key: (customer, tenant-local month, task type, status,
cost bucket). The month is that of the task's end (`ended_us`); an open task's, that of its last
event. The figures are its count, usage events, input and output tokens and its whole-task
provider cost, settled to nano-units per task (`metering.costs.prices.settle_nanos`, as rating reads a
task's cost), so that sums over the table equal sums over the tasks exactly.

A task's key is not fixed: its status changes (open → completed → reopened → ...), its end and
so its month move with its terminal events, its cost and bucket grow with its usage. So nothing
is summed blindly: an incremental rollup subtracts the contribution of each touched task's
previous `task_usage` row and adds that of its merged row (`apply`), in the transaction that
writes `task_usage`; a re-pricing does the same for the tasks whose cost it changes
(`shift_costs`); a rebuild writes the figures of all the tenant's tasks anew (`replace`).
Everything is a function of `task_usage` alone: `rebuild_from_task_usage` recomputes the table
from it (after the tenant's bucket edges move, or to fill the table for existing data). The sums
are kept as `metering.rollup.kept_sums` keeps them: exact, and a key whose sums pass int64 kept
`too_large` (its month then read from its tasks: `pricing.open_month.usable`).

Cost buckets: the dashboard's edges (`COST_EDGES_NANOS`) and the tenant's own
(`rollup_state.cost_edges`: pricing puts an edge just above each per-job price, so that no bucket
holds tasks on both sides of a price: `set_edges`). A row's `bucket` indexes the tenant's edges
as they were when it was written (`edges_of` reads them in the same snapshot); each lies within
one dashboard bucket (`display_bucket`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, select, update

from metering.core.db import driver_rows, upsert
from metering.core.tables import customer_months, rollup_state, task_usage
from metering.costs.prices import REM_PER_NANO, settle_nanos
from metering.rollup.kept_sums import KeptSums, sums_fit
from metering.rollup.stores.common import stored_tasks

COST_EDGES_MICROS = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
                     1_000_000, 2_000_000, 5_000_000, 10_000_000)  # fmt: skip
"""Buckets of whole-task provider cost, in micro-units: below 0.001, 0.001-0.002, ..., from 10.00
(the dashboard's). Bucket i holds costs in [edges[i-1], edges[i])."""
COST_EDGES_NANOS = np.array(COST_EDGES_MICROS, dtype=np.int64) * 1000
KEYS = ("customer", "month", "task_type", "status", "bucket")
MEASURES = ("tasks", "usage_events", "input_tokens", "output_tokens", "cost_nanos")
TASK_INPUT = ("task", "customer", "task_type", "status", "ended_us", "last_event_us", "usage_events",
              "input_tokens", "output_tokens", "cost_nanos", "cost_rem")  # fmt: skip
"""The `task_usage` columns a task's contribution is made of."""
FIGURES = KeptSums(customer_months, KEYS, MEASURES, count="tasks")
"""The figures as kept (`metering.rollup.kept_sums`): a key none of whose tasks is left is deleted."""
_READ_CHUNK = 200_000


MAX_OWN_EDGES = 64
"""At most this many edges of a tenant's own (the lowest): each may split every customer's
bucket rows in two."""


def with_own(own: Iterable[int]) -> np.ndarray:
    """The dashboard's edges and `own` (nanos > 0; the lowest `MAX_OWN_EDGES`), sorted, as int64."""
    kept = sorted({int(e) for e in own if 0 < int(e) < 2**63 - 1})[:MAX_OWN_EDGES]
    return np.union1d(COST_EDGES_NANOS, np.array(kept, dtype=np.int64)).astype(np.int64)


def _own_text(edges: np.ndarray) -> str | None:
    own = np.setdiff1d(edges, COST_EDGES_NANOS)
    return ",".join(map(str, own.tolist())) or None


def edges_of(connection: Connection, tenant_id: int) -> np.ndarray:
    """The edges of the tenant's buckets (`with_own` of `rollup_state.cost_edges`)."""
    text = connection.execute(select(rollup_state.c.cost_edges).where(rollup_state.c.tenant_id == tenant_id)).scalar()
    return with_own(int(e) for e in text.split(",")) if text else COST_EDGES_NANOS


def set_edges(connection: Connection, tenant_id: int, timezone: str, own: Iterable[int], *, now: datetime) -> bool:
    """Make `own` the tenant's own edges (`with_own`), rewriting its figures from `task_usage` when
    they change (in the caller's transaction: the rollup_state row it updates first keeps a
    rollup from writing figures with the old edges meanwhile). Returns whether they changed."""
    edges = with_own(own)
    if np.array_equal(edges, edges_of(connection, tenant_id)):
        return False
    # A tenant not rolled up yet gets the row its first rollup would create (and rebuild from).
    upsert(connection, rollup_state, {"tenant_id": tenant_id, "watermark_seq": 0, "price_version": "", "updated_at": now},
           key=["tenant_id"])  # fmt: skip
    connection.execute(update(rollup_state).where(rollup_state.c.tenant_id == tenant_id).values(cost_edges=_own_text(edges)))
    rebuild_from_task_usage(connection, tenant_id, timezone, edges=edges)
    return True


def bucket_of(cost_nanos: np.ndarray, edges: np.ndarray = COST_EDGES_NANOS) -> np.ndarray:
    return np.searchsorted(edges, cost_nanos, side="right").astype(np.int64)


def bucket_bounds(bucket: int, edges: np.ndarray = COST_EDGES_NANOS) -> tuple[int, int]:
    """[low, high) of a cost bucket in nanos (high of the last: int64's max)."""
    low = 0 if bucket == 0 else int(edges[bucket - 1])
    high = int(edges[bucket]) if bucket < len(edges) else 2**63 - 1
    return low, high


def display_bucket(bucket: int, edges: np.ndarray) -> int:
    """The dashboard's bucket (of `COST_EDGES_NANOS`) that bucket `bucket` of `edges` lies in."""
    return int(np.searchsorted(COST_EDGES_NANOS, bucket_bounds(bucket, edges)[0], side="right"))


def contributions(tasks: pd.DataFrame, timezone: str, edges: np.ndarray = COST_EDGES_NANOS) -> pd.DataFrame:
    """The figures of `tasks` (task rows with `TASK_INPUT`), summed per key (`KEYS` + `MEASURES`),
    bucketed by `edges`."""
    if tasks.empty:
        return FIGURES.empty()
    cost = settle_nanos(tasks["cost_nanos"].to_numpy(dtype=np.int64), tasks["cost_rem"].to_numpy(dtype=np.int64))
    frame = pd.DataFrame({
        **_task_keys(tasks, timezone),
        "bucket": bucket_of(cost, edges),
        "tasks": np.ones(len(tasks), dtype=np.int64),
        "usage_events": tasks["usage_events"].to_numpy(dtype=np.int64),
        "input_tokens": tasks["input_tokens"].to_numpy(dtype=np.int64),
        "output_tokens": tasks["output_tokens"].to_numpy(dtype=np.int64),
        "cost_nanos": cost,
    })  # fmt: skip
    return FIGURES.summed(frame)


def _task_keys(tasks: pd.DataFrame, timezone: str) -> dict[str, np.ndarray]:
    """The keys of `tasks`' contributions but their bucket: customer, tenant-local month (yyyymm),
    task type ('' for none) and status."""
    ended = pd.array(tasks["ended_us"], dtype="Int64")
    status = tasks["status"].astype(object).to_numpy()
    when = np.where(ended.isna() | (status == "open"), tasks["last_event_us"].to_numpy(dtype=np.int64), ended.fillna(0).to_numpy())
    local = pd.to_datetime(when, unit="us", utc=True).tz_convert(timezone)
    return {
        "customer": tasks["customer"].astype(object).to_numpy(),
        "month": (local.year * 100 + local.month).to_numpy(),
        "task_type": tasks["task_type"].astype(object).where(tasks["task_type"].notna(), "").to_numpy(),
        "status": status,
    }


def cost_delta(before: pd.DataFrame, nanos: np.ndarray, rem: np.ndarray, timezone: str, edges: np.ndarray = COST_EDGES_NANOS) -> pd.DataFrame:
    """`delta` from the tasks' rows `before` to the same rows costing `nanos` and `rem` instead
    (nothing else changes): each task's keys made once, a task whose bucket stays contributing
    only its change of cost."""
    old = settle_nanos(before["cost_nanos"].to_numpy(dtype=np.int64), before["cost_rem"].to_numpy(dtype=np.int64))
    new = settle_nanos(nanos, rem)
    counts = {name: before[name].to_numpy(dtype=np.int64) for name in ("usage_events", "input_tokens", "output_tokens")}
    if not sums_fit((old, new, *counts.values()), 2 * len(before)):  # the differences could pass int64
        return delta(before, before.assign(cost_nanos=nanos, cost_rem=rem), timezone, edges)
    keys = _task_keys(before, timezone)
    old_bucket, new_bucket = bucket_of(old, edges), bucket_of(new, edges)
    stays = old_bucket == new_bucket
    moves = ~stays
    zeros = np.zeros(int(stays.sum()), dtype=np.int64)
    moved = int(moves.sum())
    columns = {
        **{name: np.concatenate([values[stays], values[moves], values[moves]]) for name, values in keys.items()},
        "bucket": np.concatenate([old_bucket[stays], new_bucket[moves], old_bucket[moves]]),
        "tasks": np.concatenate([zeros, np.ones(moved, dtype=np.int64), np.full(moved, -1, dtype=np.int64)]),
        **{name: np.concatenate([zeros, values[moves], -values[moves]]) for name, values in counts.items()},
        "cost_nanos": np.concatenate([new[stays] - old[stays], new[moves], -old[moves]]),
    }
    frame = pd.DataFrame({name: pd.Series(values, dtype=object) if values.dtype == object else values for name, values in columns.items()})
    return FIGURES.changes(frame)


def delta(before: pd.DataFrame, after: pd.DataFrame, timezone: str, edges: np.ndarray = COST_EDGES_NANOS) -> pd.DataFrame:
    """What the figures change by when the tasks of `before` (their stored rows; tasks new to the
    rollup have none) become the rows of `after`: after's contributions minus before's, without
    the keys that do not change."""
    return FIGURES.delta(contributions(before, timezone, edges), contributions(after, timezone, edges))


def apply(connection: Connection, tenant_id: int, timezone: str, before: pd.DataFrame, after: pd.DataFrame) -> None:
    """Move the tenant's figures from the tasks' `before` rows to their `after` rows (see `delta`;
    a key whose sums pass int64 kept `too_large`: `metering.rollup.kept_sums`)."""
    FIGURES.apply(connection, tenant_id, delta(before, after, timezone, edges_of(connection, tenant_id)))


def shift_costs(connection: Connection, tenant_id: int, timezone: str, changes: pd.DataFrame) -> int:
    """Move the tenant's figures by cost changes of some of its tasks, before they are written to
    `task_usage` (a re-pricing): `changes` holds `task`, `d_nanos` and `d_rem` (carried, in
    [0, 10**6)) per task, as `metering.rollup.reprice.summed` gives them. Reads only those tasks'
    rows and applies the difference of their contributions (`cost_delta`): the figures end as
    `rebuild_from_task_usage` would write them after the costs change. Returns the tasks whose
    cost changed."""
    moved = changes.loc[((changes["d_nanos"] != 0) | (changes["d_rem"] != 0)).to_numpy()]
    if moved.empty:
        return 0
    before = stored_tasks(connection, tenant_id, moved["task"].tolist(), TASK_INPUT)
    if len(before) != len(moved):
        raise ValueError("a re-priced task has no task_usage row")
    # `before` is in name order (code points, as Arrow sorts; under PostgreSQL's collation, per
    # chunk): the changes put in that order, or else found by name.
    at = pc.sort_indices(pa.array(moved["task"].tolist(), type=pa.string())).to_numpy()
    if not np.array_equal(before["task"].to_numpy(dtype=object), moved["task"].to_numpy(dtype=object)[at]):
        at = pd.Index(moved["task"]).get_indexer(before["task"])
        if (at < 0).any():
            raise ValueError("a re-priced task has no task_usage row")
    d_nanos = moved["d_nanos"].to_numpy(dtype=np.int64)[at]
    d_rem = moved["d_rem"].to_numpy(dtype=np.int64)[at]
    nanos, rem = before["cost_nanos"].to_numpy(dtype=np.int64), before["cost_rem"].to_numpy(dtype=np.int64)
    # As the store adds them to task_usage (carried).
    FIGURES.apply(connection, tenant_id, cost_delta(
        before, nanos + d_nanos + (rem + d_rem) // REM_PER_NANO, (rem + d_rem) % REM_PER_NANO, timezone, edges_of(connection, tenant_id)
    ))  # fmt: skip
    return len(before)


def replace(connection: Connection, tenant_id: int, timezone: str, tasks: pd.DataFrame | None) -> None:
    """Put the figures of `tasks` (all the tenant's task rows; None: none) in place of the tenant's."""
    figures = contributions(tasks, timezone, edges_of(connection, tenant_id)) if tasks is not None and not tasks.empty else None
    FIGURES.replace(connection, tenant_id, figures)


def rebuild_from_task_usage(connection: Connection, tenant_id: int, timezone: str, *, edges: np.ndarray | None = None) -> int:
    """Recompute the tenant's figures from its `task_usage` rows (in the caller's transaction):
    after anything that rewrote task costs outside the rollup or moved its
    bucket edges, or to fill the table for data rolled up before it existed. `edges`: the
    tenant's (`edges_of`) unless given. Returns the rows written."""
    return FIGURES.replace(connection, tenant_id, recompute(connection, tenant_id, timezone, edges=edges))


def recompute(connection: Connection, tenant_id: int, timezone: str, *, edges: np.ndarray | None = None) -> pd.DataFrame:
    """The tenant's figures as `task_usage` holds them now, read in chunks (not written)."""
    edges = edges_of(connection, tenant_id) if edges is None else edges
    return FIGURES.total(contributions(chunk, timezone, edges) for chunk in _task_chunks(connection, tenant_id))


def stored(connection: Connection, tenant_id: int) -> pd.DataFrame:
    """The tenant's rows of `customer_months`, as `KEYS` + `MEASURES`, in key order."""
    return FIGURES.stored(connection, tenant_id)


def _task_chunks(connection: Connection, tenant_id: int) -> Iterable[pd.DataFrame]:
    t = task_usage.c
    after = ""
    while True:
        query = select(*[t[name] for name in TASK_INPUT]).where(t.tenant_id == tenant_id, t.task > after)
        (rows,) = driver_rows(connection, query.order_by(t.task).limit(_READ_CHUNK))
        if not rows:
            return
        # Column by column from the driver's tuples: pandas builds a frame from SQLAlchemy's rows
        # by probing each row's attributes (a million tasks: ~10 s of the re-pricing).
        yield pd.DataFrame(dict(zip(TASK_INPUT, map(list, zip(*rows, strict=True)), strict=True)))
        after = rows[-1][0]
