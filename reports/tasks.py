"""The tasks file, streamed: every task with an event in the month, by task, with the month's
share of its usage, formatted a batch at a time.

While the file streams, `TaskScan` keeps what the other files need of the tasks, in compact
arrays rather than rows: per customer, the task counts of the customers file; and the tasks that
ended in the month, as `pricing.compare` reads them (`pricing.usage.TASK_COLUMNS`, each task's
whole provider cost settled to nanos as `pricing.repository.ended_tasks` does), so that the
month is read once.

Each task's cost is rounded cumulatively within its customer (`RunningCost`): the customer's
rounded running total minus the previous one, so that the column adds up to the customers file to
the micro-unit; each task differs from its own rounding by less than one micro-unit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from metering.core.periods import Period
from metering.core.tenants import Tenant
from metering.core.vocabulary import OUTCOMES
from metering.costs.prices import settle_nanos
from metering.events.ingest import to_us
from pricing.usage import TASK_COLUMNS
from reports import repository
from reports.cells import instants_array_text, instants_text
from reports.csvwriter import Batch
from reports.repository import TaskCounts


class RunningCost:
    """Cumulative rounding of task costs per customer, in file order. Vectorized over a batch;
    one running total per customer is carried between batches (memory grows with customers)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.nanos = self.rem = self.shown = np.zeros(0, dtype=np.int64)

    def codes(self, names: Sequence[str]) -> np.ndarray:
        known = np.array([self.index.setdefault(n, len(self.index)) for n in names], dtype=np.int64)
        if len(self.index) > len(self.nanos):
            grow = np.zeros(len(self.index) - len(self.nanos), dtype=np.int64)
            self.nanos, self.rem, self.shown = (
                np.concatenate([a, grow]) for a in (self.nanos, self.rem, self.shown)
            )
        return known

    def texts(self, customers: Sequence[str], nanos: Sequence[Any], rems: Sequence[Any]) -> list[str]:
        if not customers:
            return []
        local, names = pd.factorize(np.asarray(customers, dtype=object))
        code = self.codes(names.tolist())[local]
        order = np.argsort(code, kind="stable")  # each customer's rows together, in file order
        group = code[order]
        n = _ints(nanos)[order]
        r = _ints(rems)[order]
        first = np.ones(len(group), dtype=bool)
        first[1:] = group[1:] != group[:-1]
        last = np.ones(len(group), dtype=bool)
        last[:-1] = first[1:]
        runs = np.cumsum(first) - 1
        n_sum, r_sum = np.cumsum(n), np.cumsum(r)
        total_n = n_sum - (n_sum - n)[first][runs] + self.nanos[group]
        total_r = r_sum - (r_sum - r)[first][runs] + self.rem[group]
        # cells.micro_units(total_n, total_r), split so that no product leaves int64
        micro = total_n // 1000 + ((total_n % 1000) * 1_000_000 + total_r + 500_000_000) // 1_000_000_000
        before = np.empty_like(micro)
        before[1:] = micro[:-1]
        before[first] = self.shown[group[first]]
        shown = np.empty_like(micro)
        shown[order] = micro - before
        ends = group[last]
        self.nanos[ends], self.rem[ends], self.shown[ends] = total_n[last], total_r[last], micro[last]
        return [f"{m // 1_000_000}.{m % 1_000_000:06d}" for m in shown.tolist()]


def _ints(values: Sequence[Any]) -> np.ndarray:
    return np.fromiter(map(int, values), dtype=np.int64, count=len(values))


def _instants(values: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
    """int64 microseconds (0 where missing) and the missing mask."""
    column = np.array(values, dtype=object)
    missing = column == None  # noqa: E711 - elementwise, on an object array
    column[missing] = 0
    return column.astype(np.int64), missing


class _Names:
    """Small integer codes for repeated strings (customers, task types)."""

    def __init__(self) -> None:
        self.index: dict[Any, int] = {}

    def codes(self, values: np.ndarray) -> np.ndarray:
        local, names = pd.factorize(values, use_na_sentinel=False)
        known = np.array([self.index.setdefault(n, len(self.index)) for n in names.tolist()], dtype=np.int32)
        return known[local]

    def names(self) -> np.ndarray:
        out = np.empty(len(self.index), dtype=object)
        for name, code in self.index.items():
            out[code] = name
        return out


class TaskScan:
    """What the other files need of the month's tasks, gathered while the tasks file streams:
    counts per customer, and the tasks that ended in the month as compact arrays (codes for
    customers, types and statuses; only task names are kept as strings)."""

    def __init__(self, period: Period) -> None:
        self.start, self.end = to_us(period.start), to_us(period.end)
        self.counts: dict[str, TaskCounts] = {}
        self._customers, self._types = _Names(), _Names()
        self._ended: list[tuple[np.ndarray, ...]] = []

    def add(self, columns: dict[str, Any]) -> None:
        customer = np.asarray(columns["customer"], dtype=object)
        status = np.asarray(columns["status"], dtype=object)
        ended, missing = columns["ended_us"], columns["ended_missing"]
        code, names = pd.factorize(customer)
        in_month = ~missing & (ended >= self.start) & (ended < self.end) & (status != "open")
        masks = {"open": missing | (ended >= self.end)} | {s: in_month & (status == s) for s in OUTCOMES}
        tallies = {s: np.bincount(code[mask], minlength=len(names)).tolist() for s, mask in masks.items()}
        for i, name in enumerate(names.tolist()):
            counts = self.counts.get(name)
            if counts is None:
                counts = self.counts[name] = TaskCounts()
            counts.completed += tallies["completed"][i]
            counts.failed += tallies["failed"][i]
            counts.cancelled += tallies["cancelled"][i]
            counts.open += tallies["open"][i]
        if in_month.any():
            rows = np.flatnonzero(in_month)
            state = np.select([masks[s][rows] for s in OUTCOMES], [0, 1, 2]).astype(np.int8)
            cost = settle_nanos(
                _ints(columns["task_cost_nanos"])[rows], _ints(columns["task_cost_rem"])[rows]
            )
            self._ended.append((
                self._customers.codes(customer[rows]), np.asarray(columns["task"], dtype=object)[rows],
                self._types.codes(np.asarray(columns["task_type"], dtype=object)[rows]), state, ended[rows], cost,
            ))  # fmt: skip

    def ended(self) -> pd.DataFrame:
        """The tasks that ended in the month, as `pricing.repository.ended_tasks` gives them."""
        empty = (np.zeros(0, np.int32), np.zeros(0, object), np.zeros(0, np.int32), np.zeros(0, np.int8),
                 np.zeros(0, np.int64), np.zeros(0, np.int64))  # fmt: skip
        customer, task, kind, state, ended, cost = (
            np.concatenate(p) for p in zip(*(self._ended or [empty]), strict=True)
        )
        frame = pd.DataFrame({
            "customer": self._customers.names()[customer] if len(customer) else np.zeros(0, object),
            "task": task,
            "task_type": self._types.names()[kind] if len(kind) else np.zeros(0, object),
            "status": np.array(OUTCOMES, dtype=object)[state],
            "ended_at": pd.to_datetime(ended, unit="us", utc=True).as_unit("ns"),
            "provider_cost_nanos": cost.astype(np.int64),
        })  # fmt: skip
        return frame[list(TASK_COLUMNS)]


def columns_of(rows: Sequence[Any]) -> dict[str, Any]:
    """A batch of `repository.TASK_FIELDS` rows, by column."""
    names = repository.TASK_FIELDS
    columns = dict(zip(names, zip(*rows, strict=True), strict=True)) if rows else {n: () for n in names}
    columns["ended_us"], columns["ended_missing"] = _instants(columns["ended_us"])
    columns["task_type_raw"] = columns["task_type"]
    return columns


def task_batch(columns: dict[str, Any], running: RunningCost) -> Batch:
    """One batch of the file; token counts go to the CSV writer as the integers they are."""
    return {
        "task": columns["task"],
        "customer": columns["customer"],
        "task_type": ["" if t is None else t for t in columns["task_type"]],
        "status": columns["status"],
        "started_at": instants_text(columns["started_us"]),
        "ended_at": instants_array_text(columns["ended_us"], columns["ended_missing"]),
        "usage_events": columns["usage_events"],
        "input_tokens": columns["input_tokens"],
        "output_tokens": columns["output_tokens"],
        "cache_read_tokens": columns["cache_read_tokens"],
        "cache_write_tokens": columns["cache_write_tokens"],
        "reasoning_tokens": columns["reasoning_tokens"],
        "provider_cost": running.texts(columns["customer"], columns["cost_nanos"], columns["cost_rem"]),
        "priced": ["true" if not v else "false" for v in columns["unpriced_events"]],
    }


def task_batches(session: Session, tenant: Tenant, period: Period, *, customer: str | None = None,
                 batch_size: int = 20_000, scan: TaskScan | None = None) -> Iterator[Batch]:  # fmt: skip
    """The tasks file's batches; `scan` gathers what the other files need on the way."""
    running = RunningCost()
    for rows in repository.stream_tasks(session, tenant.id, period, customer=customer, batch_size=batch_size):
        columns = columns_of(rows)
        if scan is not None:
            scan.add(columns)
        yield task_batch(columns, running)


def scan_tasks(session: Session, tenant: Tenant, period: Period, *, customer: str | None = None) -> TaskScan:
    """The month's tasks read for `TaskScan` alone (no file)."""
    scan = TaskScan(period)
    for rows in repository.stream_tasks(session, tenant.id, period, customer=customer):
        scan.add(columns_of(rows))
    return scan
