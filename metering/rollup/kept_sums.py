"""Sums per key kept by the rollup: a table of measures summed per key over the rows of another
(`customer_months` over `task_usage`, `metering.rollup.month_figures`; `usage_months` over
`usage_daily`, `metering.rollup.usage_months`), each row contributing to one key.

What a module of such sums supplies: its rows' contributions, summed per key (`summed`). What
this one does with them: an increment adds the difference of the touched rows' contributions
before and after (`delta`) to the changed keys' stored sums (`apply`); a rebuild writes them anew
(`replace`). A key whose rows are all gone (its `count`, the rows it sums, zero) is deleted.

Sums stay exact: in int64 when no sum can pass it, else as Python ints (numpy's sums wrap around
silently). A key whose sum passes int64 is stored as `too_large`, its sums zero but its count
kept, sticky until a rebuild: its readers read the rows it sums instead. An increment is added in
SQL, where a sum that would pass int64 flags its key instead (`metering.core.db.writes.Flag`):
no sum fails the rollup ("bigint out of range" stopped a tenant's billing) or wraps around.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Table, delete, select

from metering.core.db import write_frame

FLAG = "too_large"
_SAFE = 2**62
_INT64 = (-(2**63), 2**63 - 1)


def sums_fit(columns: Iterable[Any], terms: int) -> bool:
    """Whether any `terms` of the values of `columns` (integer arrays or sequences, Python ints
    past int64 included) sum within int64 whatever their signs: a bound computed in Python's
    exact ints."""
    largest = 0
    for column in columns:
        values = np.asarray(column)
        if len(values):
            largest = max(largest, int(values.max()), -int(values.min()))
    return largest * max(terms, 1) < _SAFE


@dataclass(frozen=True)
class KeptSums:
    """The sums `measures` per tenant and `keys` (among them `month`: yyyymm while summed, text
    once summed) kept in `table`, with `too_large`; `count` the measure that counts the rows
    summed."""

    table: Table
    keys: tuple[str, ...]
    measures: tuple[str, ...]
    count: str

    def empty(self) -> pd.DataFrame:
        """No sums (`keys` + `measures`)."""
        return pd.DataFrame({**{k: pd.Series([], dtype=object) for k in self.keys},
                             **{m: pd.Series([], dtype=np.int64) for m in self.measures}})  # fmt: skip

    def summed(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The measures of `frame` summed per key, the month as text: in int64 when no sum can
        pass it, else exactly."""
        if not self._small(frame, len(frame)):
            frame = frame.astype({name: object for name in self.measures})
        out = frame.groupby(list(self.keys), sort=False, as_index=False)[list(self.measures)].sum()
        out["month"] = [f"{m // 100:04d}-{m % 100:02d}" if not isinstance(m, str) else m for m in out["month"].tolist()]
        return out[[*self.keys, *self.measures]]

    def total(self, parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
        """Sums of parts (`summed`) summed."""
        kept = [p for p in parts if not p.empty]
        if not kept:
            return self.empty()
        return self.summed(pd.concat(kept, ignore_index=True)) if len(kept) > 1 else kept[0]

    def delta(self, old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
        """What the sums change by when rows contributing `old` come to contribute `new` (both
        `summed`): new minus old, without the keys that do not change."""
        if old.empty:
            return new
        negated = old.assign(**{name: -old[name] for name in self.measures})  # the caller's frame unchanged
        return self.changes(pd.concat([new, negated], ignore_index=True))

    def changes(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`summed`, without the keys whose measures all sum to zero: a change to `apply`."""
        out = self.summed(frame)
        return out.loc[(out[list(self.measures)] != 0).any(axis=1).to_numpy()].reset_index(drop=True)

    def apply(self, connection: Connection, tenant_id: int, change: pd.DataFrame) -> None:
        """Add `change` (`delta`) to the tenant's sums, in SQL: a key that a sum would take past
        int64 (or one already `too_large`) is kept `too_large` (`metering.core.db.writes.Flag`);
        keys whose count falls to zero deleted."""
        if change.empty:
            return
        self._write(connection, tenant_id, change, add=True)
        months = sorted(set(change["month"].tolist()))
        c = self.table.c
        connection.execute(delete(self.table).where(c.tenant_id == tenant_id, c.month.in_(months), c[self.count] == 0))

    def replace(self, connection: Connection, tenant_id: int, sums: pd.DataFrame | None) -> int:
        """Put `sums` (all the tenant's, `summed`; None: none) in place of the tenant's. Returns
        the rows written."""
        connection.execute(delete(self.table).where(self.table.c.tenant_id == tenant_id))
        if sums is None or sums.empty:
            return 0
        self._write(connection, tenant_id, sums, add=False)
        return len(sums)

    def stored(self, connection: Connection, tenant_id: int) -> pd.DataFrame:
        """The tenant's rows, as `keys` + `measures`, in key order."""
        c = self.table.c
        rows = connection.execute(
            select(*[c[name] for name in (*self.keys, *self.measures)]).where(c.tenant_id == tenant_id).order_by(*[c[k] for k in self.keys])
        ).all()
        return pd.DataFrame(rows, columns=[*self.keys, *self.measures])

    def _small(self, frame: pd.DataFrame, terms: int) -> bool:
        """Whether `terms` values of the measures of `frame` at most sum within int64."""
        return sums_fit((frame[name].to_numpy() for name in self.measures), terms)

    def _write(self, connection: Connection, tenant_id: int, frame: pd.DataFrame, *, add: bool) -> None:
        """Write `frame` (`keys`, `measures`, perhaps exact sums past int64) as new rows, or
        added to the stored ones (`add`): a row with a sum past int64 as `too_large`, its sums
        zero (its count kept)."""
        flagged = np.zeros(len(frame), dtype=bool)
        for name in self.measures:
            values = frame[name].to_numpy()
            if values.dtype == object:
                flagged |= np.array([not (_INT64[0] <= int(v) <= _INT64[1]) for v in values.tolist()], dtype=bool)
        out = frame[list(self.keys)].assign(tenant_id=tenant_id, **{FLAG: flagged.astype(np.int64)})
        for name in self.measures:
            values = frame[name].to_numpy()
            if name != self.count:
                values = np.where(flagged, 0, values)
            out[name] = values.astype(np.int64)
        columns = [column.name for column in self.table.columns]  # the table's order (the statement's binds)
        keys = ("tenant_id", *self.keys)
        if add:
            write_frame(connection, self.table, out, columns, on_conflict="add", keys=keys, add=self.measures, flag=(FLAG, self.count))
            return
        # New rows without a flag leave it to the column's default: as the migrations that fill
        # the table before it had one (customer_months: 0019, 0021) write them.
        write_frame(connection, self.table, out, columns if flagged.any() else [c for c in columns if c != FLAG], keys=keys)
