"""Per customer-month token usage (`usage_months`), kept current by the rollup.

`usage_daily` summed over each tenant-local month per customer, provider, model, actor and agent:
what a whole month's usage read (`pricing.repository.month_usage`) makes of the month's daily
rows, kept so that the read is one row per key instead of one per day. Each daily row contributes
its measures (`SUMS`, as stored: cost as nanos and remainder, summed, not carried), one to `days`,
its cost settled to nano-units (`provider_cost_nanos`: half up, as rating reads a row, so that
the month's settled cost is the sum of the rows' exactly), and its input and output tokens when
it has unpriced events (`unpriced_tokens`).

A daily row's settled cost and unpriced tokens are not additive in its measures, so nothing is
summed blindly (as `metering.rollup.month_figures`): an incremental rollup reads the touched daily
rows before the merge (`stored_days`), makes them as the store writes them (`merged`: added,
carried) and adds the difference of their contributions (`apply`), in the transaction that
writes `usage_daily`; a re-pricing does the same with its cost changes (`shift_costs`); a rebuild
writes the table anew from the summary's daily rows (`replace`). Everything is a function of
`usage_daily` alone: `rebuild_from_usage_daily` recomputes it (to fill it for existing data).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import ColumnElement, Connection, Select, select

from metering.core.db import by_primary_key, driver_rows, no_cyclic_gc, tuples_frame
from metering.core.tables import usage_daily, usage_months
from metering.costs.prices import REM_PER_NANO
from metering.rollup.kept_sums import KeptSums, sums_fit
from metering.rollup.summary import DAILY_KEYS

KEYS = ("customer", "month", "provider", "model", "actor", "agent")
SUMS = ("usage_events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
        "cost_nanos", "cost_rem", "unpriced_events")  # fmt: skip
"""The daily rows' measures summed as they are."""
MEASURES = ("days", *SUMS, "provider_cost_nanos", "unpriced_tokens")
DAILY_INPUT = (*DAILY_KEYS, *SUMS)
"""The `usage_daily` columns a daily row's contribution is made of."""
SUMMED = KeptSums(usage_months, KEYS, MEASURES, count="days")
"""The sums as kept (`metering.rollup.kept_sums`): a key none of whose days is left is deleted."""
_TEXTS = ("customer", "provider", "model", "actor", "agent")
_READ_BATCH = 200_000
_NAMED_CHUNK = 10_000  # customers per query (SQLite's bound parameters)
_DAYS_LISTED = 1_000  # more distinct days than this: read their range


def contributions(daily: pd.DataFrame) -> pd.DataFrame:
    """The contributions of `daily` (daily rows with `DAILY_INPUT`, `day` as datetime64), summed
    per key (`KEYS` + `MEASURES`)."""
    if daily.empty:
        return SUMMED.empty()
    day = pd.DatetimeIndex(daily["day"])
    values = {name: daily[name].to_numpy(dtype=np.int64) for name in SUMS}
    # As the SQL sum of the rows read it: each row's cost settled half up, then summed.
    settled = values["cost_nanos"] + (values["cost_rem"] + REM_PER_NANO // 2) // REM_PER_NANO
    unpriced = np.where(values["unpriced_events"] > 0, values["input_tokens"] + values["output_tokens"], 0)
    frame = pd.DataFrame({
        **{name: daily[name].astype(object).to_numpy() for name in _TEXTS},
        "month": (day.year * 100 + day.month).to_numpy(),
        "days": np.ones(len(daily), dtype=np.int64),
        **values,
        "provider_cost_nanos": settled,
        "unpriced_tokens": unpriced.astype(np.int64),
    })  # fmt: skip
    return SUMMED.summed(frame)


def delta(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """What the table changes by when the daily rows `before` (the stored rows of the touched
    keys; new keys have none) become `after`: after's contributions minus before's, without the
    keys that do not change."""
    return SUMMED.delta(contributions(before), contributions(after))


def apply(connection: Connection, tenant_id: int, before: pd.DataFrame, after: pd.DataFrame) -> None:
    """Move the tenant's rows from the daily rows `before` to `after` (see `delta`). A key whose
    sums pass int64 is kept as `too_large` (its sums zero, sticky until a rebuild:
    `metering.rollup.kept_sums`): its month is then read from its days
    (`pricing.repository.month_usage`)."""
    SUMMED.apply(connection, tenant_id, delta(before, after))


def stored_days(connection: Connection, tenant_id: int, keys: pd.DataFrame) -> pd.DataFrame:
    """The stored `usage_daily` rows (`DAILY_INPUT`, `day` as datetime64) of the keys of `keys`
    (its `DAILY_KEYS`, `day` as datetime64) that have one, in the caller's transaction: read by
    customer, day, provider and model (the table's key after the tenant), the keys matched here."""
    found = _days_of(connection, tenant_id, keys)
    if found.empty:
        return found
    wanted = pd.DataFrame({name: _key_column(keys[name]) for name in DAILY_KEYS}).drop_duplicates()
    return found.merge(wanted, on=list(DAILY_KEYS), how="inner")[list(DAILY_INPUT)]


def _days_of(connection: Connection, tenant_id: int, keys: pd.DataFrame) -> pd.DataFrame:
    """The stored `usage_daily` rows (`DAILY_INPUT`) of the customers, days, providers and models
    of `keys`: those of its keys and possibly others. On SQLite through the primary key (named:
    with the days listed, its planner takes the (tenant_id, day) index, then looks each row up in
    the table)."""
    if keys.empty:
        return _daily_frame([])
    u = usage_daily.c
    days = pd.DatetimeIndex(keys["day"]).unique().sort_values()
    if len(days) <= _DAYS_LISTED:
        on_days = [u.day.in_([d.date() for d in days])]
    else:
        on_days = [u.day >= days[0].date(), u.day <= days[-1].date()]
    customers = sorted(set(keys["customer"].tolist()))
    # Only the keys' providers and models (a re-pricing's few of a tenant's many): the other rows
    # of these customers and days are skipped by SQL, not read into Python and dropped here.
    models = [u.provider.in_(sorted(set(keys["provider"].tolist()))), u.model.in_(sorted(set(keys["model"].tolist())))]
    rows: list[Sequence[Any]] = []
    for start in range(0, len(customers), _NAMED_CHUNK):
        query = days_query(u.tenant_id == tenant_id, u.customer.in_(customers[start : start + _NAMED_CHUNK]), *on_days, *models)
        with no_cyclic_gc():  # a hundred thousand row tuples: no cycles, but many collections
            (part,) = driver_rows(connection, query, hints=True)
            rows += part
    return _daily_frame(rows)


def days_query(*where: ColumnElement[bool]) -> Select[Any]:
    """`DAILY_INPUT` of the `usage_daily` rows `where` selects, through the table's primary key on
    SQLite (`metering.core.db.by_primary_key`: compile with `metering.core.db.HINTING`)."""
    return by_primary_key(select(*[usage_daily.c[n] for n in DAILY_INPUT]).where(*where), usage_daily)


def merged(before: pd.DataFrame, added: pd.DataFrame) -> pd.DataFrame:
    """The daily rows of `added` (`DAILY_INPUT`, costs carried) once added to their stored rows
    `before` (`stored_days`), as the store writes them: measures added, a key's cost carried."""
    columns = list(DAILY_INPUT)
    new = added[columns].assign(day=_key_column(added["day"]))
    if before.empty:
        return new.reset_index(drop=True)
    both = pd.concat([before[columns], new], ignore_index=True)
    sums = both.groupby(list(DAILY_KEYS), sort=False, as_index=False).agg(
        **{name: (name, "sum") for name in SUMS}, _rows=("usage_events", "size")
    )
    stored_and_added = (sums["_rows"] > 1).to_numpy()
    rem = sums["cost_rem"].to_numpy(dtype=np.int64)
    nanos = sums["cost_nanos"].to_numpy(dtype=np.int64)
    sums["cost_nanos"] = np.where(stored_and_added, nanos + rem // REM_PER_NANO, nanos)
    sums["cost_rem"] = np.where(stored_and_added, rem % REM_PER_NANO, rem)
    return sums[columns]


def shift_costs(connection: Connection, tenant_id: int, changes: pd.DataFrame) -> int:
    """Move the tenant's rows by cost changes of some daily rows, before they are written to
    `usage_daily` (a re-pricing): `changes` holds `DAILY_KEYS`, `d_nanos`, `d_rem` (carried, in
    [0, 10**6)) and `d_unpriced`, as `metering.rollup.reprice.summed` gives them (one row per
    key). Returns the daily rows moved."""
    if changes.empty:
        return 0
    shifts = changes[[*DAILY_KEYS, "d_nanos", "d_rem", "d_unpriced"]].assign(
        **{name: _key_column(changes[name]) for name in DAILY_KEYS}
    )
    rows = _days_of(connection, tenant_id, changes).merge(shifts, on=list(DAILY_KEYS), how="inner")
    if len(rows) != len(changes):
        raise ValueError("a re-priced daily row has no usage_daily row")
    nanos, rem = rows["cost_nanos"].to_numpy(dtype=np.int64), rows["cost_rem"].to_numpy(dtype=np.int64)
    rem_sum = rem + rows["d_rem"].to_numpy(dtype=np.int64)
    # As the store adds them to usage_daily (`stores.common.cost_update`: carried).
    new_nanos = nanos + rows["d_nanos"].to_numpy(dtype=np.int64) + rem_sum // REM_PER_NANO
    new_unpriced = rows["unpriced_events"].to_numpy(dtype=np.int64) + rows["d_unpriced"].to_numpy(dtype=np.int64)
    SUMMED.apply(connection, tenant_id, cost_delta(rows[list(DAILY_INPUT)], new_nanos, rem_sum % REM_PER_NANO, new_unpriced))
    return len(rows)


def cost_delta(before: pd.DataFrame, nanos: np.ndarray, rem: np.ndarray, unpriced: np.ndarray) -> pd.DataFrame:
    """`delta` from the daily rows `before` to the same rows with costs `nanos`, `rem` and
    unpriced events `unpriced` instead (nothing else changes): each row's key made once, its
    contribution the change of its cost measures."""
    values = {name: before[name].to_numpy(dtype=np.int64) for name in SUMS}
    old = _cost_measures(values["cost_nanos"], values["cost_rem"], values["unpriced_events"], values)
    new = _cost_measures(nanos, rem, unpriced, values)
    if not sums_fit((*old.values(), *new.values()), 2 * len(before)):  # the differences could pass int64
        return delta(before, before.assign(cost_nanos=nanos, cost_rem=rem, unpriced_events=unpriced))
    day = pd.DatetimeIndex(before["day"])
    zeros = np.zeros(len(before), dtype=np.int64)
    frame = pd.DataFrame({
        **{name: pd.Series(before[name].to_numpy(dtype=object), dtype=object) for name in _TEXTS},
        "month": (day.year * 100 + day.month).to_numpy(),
        **{name: new[name] - old[name] if name in old else zeros for name in MEASURES},
    })  # fmt: skip
    return SUMMED.changes(frame)


def _cost_measures(nanos: np.ndarray, rem: np.ndarray, unpriced: np.ndarray, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The measures of a daily row's contribution that its costs decide (see `contributions`)."""
    return {
        "cost_nanos": nanos,
        "cost_rem": rem,
        "unpriced_events": unpriced,
        "provider_cost_nanos": nanos + (rem + REM_PER_NANO // 2) // REM_PER_NANO,
        "unpriced_tokens": np.where(unpriced > 0, values["input_tokens"] + values["output_tokens"], 0).astype(np.int64),
    }


def replace(connection: Connection, tenant_id: int, daily: pd.DataFrame | None) -> None:
    """Put the rows of `daily` (all the tenant's daily rows; None: none) in place of the tenant's."""
    SUMMED.replace(connection, tenant_id, contributions(daily) if daily is not None and not daily.empty else None)


def rebuild_from_usage_daily(connection: Connection, tenant_id: int) -> int:
    """Recompute the tenant's rows from its `usage_daily` rows (in the caller's transaction): to
    fill the table for data rolled up before it existed. Returns the rows written."""
    return SUMMED.replace(connection, tenant_id, recompute(connection, tenant_id))


def recompute(connection: Connection, tenant_id: int) -> pd.DataFrame:
    """The tenant's rows as `usage_daily` holds them now, read in batches (not written)."""
    u = usage_daily.c
    query = select(*[u[n] for n in DAILY_INPUT]).where(u.tenant_id == tenant_id)
    return SUMMED.total(contributions(_daily_frame(batch)) for batch in driver_rows(connection, query, batch_size=_READ_BATCH))


def stored(connection: Connection, tenant_id: int) -> pd.DataFrame:
    """The tenant's rows of `usage_months`, as `KEYS` + `MEASURES`, in key order."""
    return SUMMED.stored(connection, tenant_id)


def _daily_frame(rows: Iterable[Sequence[Any]]) -> pd.DataFrame:
    """Driver tuples of `DAILY_INPUT` as a frame: days (dates, or SQLite's ISO text) as datetime64."""
    return tuples_frame(list(rows), DAILY_INPUT, texts=[name for name in DAILY_INPUT if name not in SUMS and name != "day"], days=("day",))


def _key_column(column: pd.Series) -> pd.Series:
    """A key column as `_daily_frame` makes it (days as datetime64[ns], texts as objects)."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return pd.Series(column.to_numpy().astype("datetime64[ns]"), index=column.index)
    return column.astype(object)

