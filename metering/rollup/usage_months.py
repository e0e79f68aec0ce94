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
from sqlalchemy import Connection, delete, select

from metering.core.db import driver_rows, write_frame
from metering.core.tables import usage_daily, usage_months
from metering.costs.prices import REM_PER_NANO
from metering.rollup.summary import DAILY_KEYS

KEYS = ("customer", "month", "provider", "model", "actor", "agent")
SUMS = ("usage_events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
        "cost_nanos", "cost_rem", "unpriced_events")  # fmt: skip
"""The daily rows' measures summed as they are."""
MEASURES = ("days", *SUMS, "provider_cost_nanos", "unpriced_tokens")
DAILY_INPUT = (*DAILY_KEYS, *SUMS)
"""The `usage_daily` columns a daily row's contribution is made of."""
_TEXTS = ("customer", "provider", "model", "actor", "agent")
_READ_BATCH = 200_000
_NAMED_CHUNK = 10_000  # customers per query (SQLite's bound parameters)
_DAYS_LISTED = 1_000  # more distinct days than this: read their range
_SAFE = 2.0**62
_INT64 = (-(2**63), 2**63 - 1)


def contributions(daily: pd.DataFrame) -> pd.DataFrame:
    """The contributions of `daily` (daily rows with `DAILY_INPUT`, `day` as datetime64), summed
    per key (`KEYS` + `MEASURES`)."""
    if daily.empty:
        return pd.DataFrame({**{k: pd.Series([], dtype=object) for k in KEYS}, **{m: pd.Series([], dtype=np.int64) for m in MEASURES}})
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
    return _summed(frame)


def _summed(frame: pd.DataFrame) -> pd.DataFrame:
    """Measures summed per key: in int64 when no sum can pass it, else exactly (Python ints:
    numpy's sums wrap around silently)."""
    if not _small(frame, len(frame)):
        frame = frame.astype({name: object for name in MEASURES})
    out = frame.groupby(list(KEYS), sort=False, as_index=False)[list(MEASURES)].sum()
    out["month"] = [f"{m // 100:04d}-{m % 100:02d}" if not isinstance(m, str) else m for m in out["month"].tolist()]
    return out[[*KEYS, *MEASURES]]


def _small(frame: pd.DataFrame, terms: int) -> bool:
    """Whether `terms` values of the measures of `frame` at most sum within int64."""
    largest = max((float(np.abs(frame[name].to_numpy(dtype=np.float64)).max()) for name in MEASURES), default=0.0) if len(frame) else 0.0
    return largest * max(terms, 1) < _SAFE


def delta(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """What the table changes by when the daily rows `before` (the stored rows of the touched
    keys; new keys have none) become `after`: after's contributions minus before's, without the
    keys that do not change."""
    old, new = contributions(before), contributions(after)
    if old.empty:
        return new
    old[list(MEASURES)] = -old[list(MEASURES)]
    both = _summed(pd.concat([new, old], ignore_index=True))
    return both[(both[list(MEASURES)] != 0).any(axis=1)].reset_index(drop=True)


def apply(connection: Connection, tenant_id: int, before: pd.DataFrame, after: pd.DataFrame) -> None:
    """Move the tenant's rows from the daily rows `before` to `after` (see `delta`): the changed
    keys' stored rows read, the change added to them here (exactly) and written in their place.
    A key whose sums pass int64 is kept as `too_large` (its sums zero, sticky until a rebuild):
    its month is then read from its days (`pricing.repository.month_usage`)."""
    change = delta(before, after)
    if change.empty:
        return
    now = _stored_keys(connection, tenant_id, change)
    at = pd.MultiIndex.from_frame(now[list(KEYS)]).get_indexer(pd.MultiIndex.from_frame(change[list(KEYS)])) if not now.empty else np.full(len(change), -1)
    found = at >= 0
    base = pd.DataFrame({name: np.zeros(len(change), dtype=np.int64) for name in (*MEASURES, "too_large")})
    for name in (*MEASURES, "too_large"):
        column = base[name].to_numpy(copy=True)
        column[found] = now[name].to_numpy(dtype=np.int64)[at[found]]
        base[name] = column
    exact = not (_small(base, 2) and _small(change, 2))
    rows = change[list(KEYS)].copy()
    for name in MEASURES:
        old, moved = base[name].to_numpy(), change[name].to_numpy()
        rows[name] = (old.astype(object) + moved.astype(object)) if exact else old + moved.astype(np.int64)
    rows["too_large"] = base["too_large"].to_numpy()
    _write(connection, tenant_id, rows, replace=True)
    months = sorted(set(change["month"].tolist()))
    # A key whose daily rows are all gone (none is, but a delta could say so): gone.
    connection.execute(
        delete(usage_months).where(usage_months.c.tenant_id == tenant_id, usage_months.c.month.in_(months), usage_months.c.days == 0)
    )


def _stored_keys(connection: Connection, tenant_id: int, keys: pd.DataFrame) -> pd.DataFrame:
    """The stored rows (`KEYS`, `MEASURES`, `too_large`) of the months and customers of `keys`."""
    c = usage_months.c
    names = (*KEYS, *MEASURES, "too_large")
    months = sorted(set(keys["month"].tolist()))
    customers = sorted(set(keys["customer"].tolist()))
    rows: list[Sequence[Any]] = []
    for start in range(0, len(customers), _NAMED_CHUNK):
        query = select(*[c[n] for n in names]).where(c.tenant_id == tenant_id, c.month.in_(months), c.customer.in_(customers[start : start + _NAMED_CHUNK]))
        (part,) = driver_rows(connection, query)
        rows += part
    values = list(zip(*rows, strict=True)) or [()] * len(names)
    return pd.DataFrame({name: list(column) for name, column in zip(names, values, strict=True)}).astype({k: object for k in KEYS})


def stored_days(connection: Connection, tenant_id: int, keys: pd.DataFrame) -> pd.DataFrame:
    """The stored `usage_daily` rows (`DAILY_INPUT`, `day` as datetime64) of the keys of `keys`
    (its `DAILY_KEYS`, `day` as datetime64) that have one, in the caller's transaction: read by
    customer and day (the table's key after the tenant), the other keys matched here."""
    if keys.empty:
        return _daily_frame([])
    u = usage_daily.c
    days = pd.DatetimeIndex(keys["day"]).unique().sort_values()
    if len(days) <= _DAYS_LISTED:
        on_days = [u.day.in_([d.date() for d in days])]
    else:
        on_days = [u.day >= days[0].date(), u.day <= days[-1].date()]
    customers = sorted(set(keys["customer"].tolist()))
    rows: list[Sequence[Any]] = []
    for start in range(0, len(customers), _NAMED_CHUNK):
        query = select(*[u[n] for n in DAILY_INPUT]).where(u.tenant_id == tenant_id, u.customer.in_(customers[start : start + _NAMED_CHUNK]), *on_days)
        (part,) = driver_rows(connection, query)
        rows += part
    found = _daily_frame(rows)
    if found.empty:
        return found
    wanted = pd.DataFrame({name: _key_column(keys[name]) for name in DAILY_KEYS}).drop_duplicates()
    return found.merge(wanted, on=list(DAILY_KEYS), how="inner")[list(DAILY_INPUT)]


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
    [0, 10**6)) and `d_unpriced`, as `metering.rollup.reprice.summed` gives them. Returns the
    daily rows moved."""
    if changes.empty:
        return 0
    before = stored_days(connection, tenant_id, changes)
    if len(before) != len(changes.drop_duplicates(list(DAILY_KEYS))):
        raise ValueError("a re-priced daily row has no usage_daily row")
    shifts = changes[[*DAILY_KEYS, "d_nanos", "d_rem", "d_unpriced"]].assign(day=_key_column(changes["day"]))
    rows = before.merge(shifts, on=list(DAILY_KEYS), how="left")
    nanos, rem = rows["cost_nanos"].to_numpy(dtype=np.int64), rows["cost_rem"].to_numpy(dtype=np.int64)
    rem = rem + rows["d_rem"].to_numpy(dtype=np.int64)
    # As the store adds them to usage_daily (`stores.common.cost_update`: carried).
    after = rows.assign(
        cost_nanos=nanos + rows["d_nanos"].to_numpy(dtype=np.int64) + rem // REM_PER_NANO,
        cost_rem=rem % REM_PER_NANO,
        unpriced_events=rows["unpriced_events"].to_numpy(dtype=np.int64) + rows["d_unpriced"].to_numpy(dtype=np.int64),
    )[list(DAILY_INPUT)]
    apply(connection, tenant_id, before, after)
    return len(before)


def replace(connection: Connection, tenant_id: int, daily: pd.DataFrame | None) -> None:
    """Put the rows of `daily` (all the tenant's daily rows; None: none) in place of the tenant's."""
    connection.execute(delete(usage_months).where(usage_months.c.tenant_id == tenant_id))
    if daily is not None and not daily.empty:
        _write(connection, tenant_id, contributions(daily), replace=False)


def rebuild_from_usage_daily(connection: Connection, tenant_id: int) -> int:
    """Recompute the tenant's rows from its `usage_daily` rows (in the caller's transaction): to
    fill the table for data rolled up before it existed. Returns the rows written."""
    rows = recompute(connection, tenant_id)
    connection.execute(delete(usage_months).where(usage_months.c.tenant_id == tenant_id))
    _write(connection, tenant_id, rows, replace=False)
    return len(rows)


def recompute(connection: Connection, tenant_id: int) -> pd.DataFrame:
    """The tenant's rows as `usage_daily` holds them now, read in batches (not written)."""
    u = usage_daily.c
    query = select(*[u[n] for n in DAILY_INPUT]).where(u.tenant_id == tenant_id)
    parts = [contributions(_daily_frame(batch)) for batch in driver_rows(connection, query, batch_size=_READ_BATCH)]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return contributions(_daily_frame([]))
    return _summed(pd.concat(parts, ignore_index=True)) if len(parts) > 1 else parts[0]


def stored(connection: Connection, tenant_id: int) -> pd.DataFrame:
    """The tenant's rows of `usage_months`, as `KEYS` + `MEASURES`, in key order."""
    c = usage_months.c
    rows = connection.execute(
        select(*[c[name] for name in (*KEYS, *MEASURES)]).where(c.tenant_id == tenant_id).order_by(*[c[k] for k in KEYS])
    ).all()
    return pd.DataFrame(rows, columns=[*KEYS, *MEASURES])


def _daily_frame(rows: Iterable[Sequence[Any]]) -> pd.DataFrame:
    """Driver tuples of `DAILY_INPUT` as a frame: days (dates, or SQLite's ISO text) as datetime64."""
    values = list(zip(*rows, strict=True)) or [()] * len(DAILY_INPUT)
    frame = pd.DataFrame({name: list(column) for name, column in zip(DAILY_INPUT, values, strict=True)})
    frame["day"] = pd.to_datetime(frame["day"].astype(str), format="%Y-%m-%d").astype("datetime64[ns]")
    for name in SUMS:
        frame[name] = frame[name].astype(np.int64)
    return frame


def _key_column(column: pd.Series) -> pd.Series:
    """A key column as `_daily_frame` makes it (days as datetime64[ns], texts as objects)."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return pd.Series(column.to_numpy().astype("datetime64[ns]"), index=column.index)
    return column.astype(object)


def _write(connection: Connection, tenant_id: int, frame: pd.DataFrame, *, replace: bool) -> None:
    """Write `frame` (`KEYS`, `MEASURES`, perhaps exact sums past int64 and `too_large`) in place
    of the stored rows (`replace`) or as new rows: a row with a sum past int64, or already
    `too_large`, as `too_large` with its sums zero (its days counted)."""
    flagged = frame["too_large"].to_numpy(dtype=np.int64) != 0 if "too_large" in frame else np.zeros(len(frame), dtype=bool)
    for name in MEASURES:
        values = frame[name].to_numpy()
        if values.dtype == object:
            flagged |= np.array([not (_INT64[0] <= int(v) <= _INT64[1]) for v in values.tolist()], dtype=bool)
    out = frame[list(KEYS)].assign(tenant_id=tenant_id, too_large=flagged.astype(np.int64))
    for name in MEASURES:
        values = frame[name].to_numpy()
        if name != "days":
            values = np.where(flagged, 0, values)
        out[name] = values.astype(np.int64)
    columns = [column.name for column in usage_months.columns]  # the table's order (the statement's binds)
    write_frame(connection, usage_months, out, columns, on_conflict="replace" if replace else "error", keys=("tenant_id", *KEYS))
