"""The month of usage that rating reads: the frame contracts, and their validation and encoding.

Frames (built from the metering rollup by `pricing.repository`):
- token usage (`TOKEN_USAGE_COLUMNS`), one row per customer, tenant-local `day` (datetime64
  midnight), provider and model: `input_tokens` (billable: input − cache reads − cache writes),
  `output_tokens`, `cache_read_tokens`, `cache_write_tokens`, `provider_cost_nanos`,
  `unpriced_events` (int64);
- tasks that ended in the month (`TASK_COLUMNS`): `customer`, `task`, `task_type` (null → default
  price), `status` (completed, failed, cancelled), `ended_at` (tz-aware), `provider_cost_nanos`.
  Open tasks are absent: they are billed in the month they end. Optionally `task_count` (int64,
  ≥ 1): the row stands for that many tasks of one customer, task type and status that ended under
  one version of each plan, `provider_cost_nanos` their costs' sum and `ended_at` any of their
  ends (the per customer-month figures give a month so: `pricing.open_month`). Rating and
  comparison count such a row as its tasks, with the same lines and figures to the last digit as
  one row per task. What needs each task is refused for grouped rows: a per-job allowance
  without tiers (the month's first tasks by end time) and `compare`'s per-task model usage.
`prepare_month` validates both once and encodes them as integer codes and arrays (`MonthUsage`),
so that several plans rate the same month cheaply.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from metering.core.vocabulary import OUTCOMES, TOKEN_CLASSES
from pricing.plans import PerTokenPlan, PlanBook

TOKEN_COLUMNS = tuple(f"{c}_tokens" for c in TOKEN_CLASSES)
TOKEN_USAGE_COLUMNS: Mapping[str, str] = {
    "customer": "str", "day": "day", "provider": "str", "model": "str",
    **dict.fromkeys(TOKEN_COLUMNS, "int"), "provider_cost_nanos": "int", "unpriced_events": "int",
}  # fmt: skip
TASK_COLUMNS: Mapping[str, str] = {
    "customer": "key", "task": "key", "task_type": "str?", "status": "key", "ended_at": "instant",
    "provider_cost_nanos": "int",
}  # fmt: skip
TASK_COUNT = "task_count"
"""The optional column of the tasks frame: how many tasks a row stands for (absent: one)."""
INT64_MAX = 2**63 - 1


def summable(values: pd.Series | np.ndarray) -> pd.Series:
    """Non-negative integers ready for an exact (grouped) sum: int64 when no sum of them can pass
    2**63 - 1, else Python ints (object), which do not wrap around into a negative amount."""
    series = pd.Series(values, copy=False)
    if len(series) and int(series.max()) * len(series) > INT64_MAX:
        return series.astype(object)
    return series


@dataclass(frozen=True)
class MonthUsage:
    """A month's usage, validated and encoded once so that several plans rate it cheaply."""

    month: date
    tz: ZoneInfo
    customers: pd.Index  # the name of each customer code
    names: list[str]  # the same, for fast scalar access
    tokens: pd.DataFrame  # token usage with `cust` (code) and `day` (int64 days since the epoch)
    task_customer: np.ndarray
    task_status: np.ndarray  # index into OUTCOMES
    task_type: np.ndarray  # index into task_types, -1 when null
    task_types: pd.Index
    task_ended: np.ndarray  # int64 nanoseconds since the epoch, UTC
    task_cost: np.ndarray  # int64 nanos
    task_id: np.ndarray
    task_count: np.ndarray | None = None  # int64 tasks per row (`TASK_COUNT`); None: one each

    @property
    def grouped(self) -> bool:
        """Whether a row may stand for more than one task."""
        return self.task_count is not None and bool((self.task_count != 1).any())

    def unpriced_by_customer(self) -> dict[str, int]:
        sums = self.tokens.groupby("cust")["unpriced_events"].sum()
        return {self.names[c]: n for c, n in zip(sums.index.tolist(), sums.tolist(), strict=True) if n}


def month_bounds(month: date) -> tuple[date, date]:
    """First and last tenant-local day of the month that starts on `month`."""
    if month.day != 1:
        raise ValueError("a billing month is given by its first day")
    return month, month.replace(day=calendar.monthrange(month.year, month.month)[1])


def instant(day: date | None, tz: ZoneInfo) -> int:
    """Nanoseconds since the epoch of a tenant-local midnight (None and early dates: int64 min)."""
    if day is None or day.year < 1700:
        return int(np.iinfo(np.int64).min)
    return int(datetime.combine(day, time(), tzinfo=tz).timestamp()) * 10**9


def check_frame(frame: pd.DataFrame, contract: Mapping[str, str], name: str) -> None:
    if missing := [c for c in contract if c not in frame.columns]:
        raise ValueError(f"{name} lacks columns {missing}")
    for column, kind in contract.items():
        series = frame[column]
        if kind == "int":
            if not pd.api.types.is_integer_dtype(series) or pd.api.types.is_bool_dtype(series):
                raise TypeError(f"{name}.{column} must hold exact integers, not {series.dtype}")
            if len(series) and series.min() < 0:
                raise ValueError(f"{name}.{column} must not be negative")
        elif kind == "day" and not pd.api.types.is_datetime64_dtype(series):
            raise TypeError(f"{name}.{column} must be a tenant-local datetime64 date, not {series.dtype}")
        elif kind == "instant" and not isinstance(series.dtype, pd.DatetimeTZDtype):
            raise TypeError(f"{name}.{column} must be a tz-aware timestamp, not {series.dtype}")
        elif kind == "str" and series.isna().any():
            raise ValueError(f"{name}.{column} must not be null")


def prepare_month(
    month: date,
    token_usage: pd.DataFrame,
    tasks: pd.DataFrame,
    *,
    tz: str = "UTC",
    customers: Iterable[str] = (),
) -> MonthUsage:
    """Validate both frames against their contracts and the month, and encode them."""
    check_frame(token_usage, TOKEN_USAGE_COLUMNS, "token_usage")
    check_frame(tasks, TASK_COLUMNS, "tasks")
    zone = ZoneInfo(tz)
    first, last = month_bounds(month)
    tok_codes, tok_names = pd.factorize(token_usage["customer"])
    task_codes, task_names = pd.factorize(tasks["customer"])
    if len(task_codes) and task_codes.min() < 0:  # "key" columns: null checks ride on factorize
        raise ValueError("tasks.customer must not be null")
    names = pd.Index(sorted(set(tok_names) | set(task_names) | set(customers)))

    days = token_usage["day"].to_numpy().astype("datetime64[D]").astype(np.int64)  # days since the epoch
    if len(days) and (days.min() < day_number(first) or days.max() > day_number(last)):
        raise ValueError(f"token_usage has days outside {first:%Y-%m}")
    tokens = token_usage[
        ["provider", "model", *TOKEN_COLUMNS, "provider_cost_nanos", "unpriced_events"]
    ].assign(cust=names.get_indexer(tok_names)[tok_codes], day=days)

    status_codes, status_names = pd.factorize(tasks["status"])
    if (status_codes < 0).any() or not set(status_names) <= set(OUTCOMES):
        raise ValueError(f"tasks.status has values other than {OUTCOMES}: {sorted(set(status_names))}")
    ended = pd.DatetimeIndex(tasks["ended_at"]).as_unit("ns").asi8  # nanoseconds since the epoch
    start, end = instant(first, zone), instant(last + timedelta(days=1), zone)
    if len(ended) and (ended.min() < start or ended.max() >= end):
        raise ValueError(f"tasks has ended_at outside {first:%Y-%m} in {tz}")
    type_codes, type_names = pd.factorize(tasks["task_type"], sort=True)
    count = None
    if TASK_COUNT in tasks.columns:
        series = tasks[TASK_COUNT]
        if not pd.api.types.is_integer_dtype(series) or pd.api.types.is_bool_dtype(series):
            raise TypeError(f"tasks.{TASK_COUNT} must hold exact integers, not {series.dtype}")
        count = series.to_numpy(dtype=np.int64)
        if len(count) and count.min() < 1:
            raise ValueError(f"tasks.{TASK_COUNT} must be at least 1")
    return MonthUsage(
        month=first,
        tz=zone,
        customers=names,
        names=names.tolist(),
        tokens=tokens,
        task_customer=names.get_indexer(task_names)[task_codes],
        task_status=pd.Index(OUTCOMES).get_indexer(status_names)[status_codes].astype(np.int8),
        task_type=type_codes,
        task_types=type_names,
        task_ended=ended,
        task_cost=tasks["provider_cost_nanos"].to_numpy(dtype=np.int64),
        task_id=tasks["task"].to_numpy(),
        task_count=count,
    )


def tasks_per_key(keys: np.ndarray, size: int, weights: np.ndarray | None = None) -> list[int]:
    """Per integer key in [0, size): how many rows (or the sum of their int64 `weights`, the
    tasks each stands for), exactly (np.bincount's weights would go through float64)."""
    if weights is None:
        return np.bincount(keys, minlength=size).tolist()
    out = np.zeros(size, dtype=np.int64)
    np.add.at(out, keys, weights)
    return out.tolist()


def token_days_matter(plans: PlanBook, month: date) -> bool:
    """Whether rating the month's token usage needs its days: a per-token plan version that starts
    inside the month (its unit prices split it), or per-token rates with an included allowance
    (consumed day by day). Otherwise each customer's usage of a model summed over the month rates
    the same as its days, to the digit (`pricing.repository.month_usage`)."""
    first, last = month_bounds(month)
    for history in plans.versions.values():
        for plan in history:
            if not isinstance(plan, PerTokenPlan):
                continue
            if plan.effective_from is not None and first < plan.effective_from <= last:
                return True
            if plan.included and plan.basis == "rates":
                return True
    return False


def task_counts(tasks: pd.DataFrame) -> np.ndarray:
    """How many tasks each row of a tasks frame stands for (`TASK_COUNT`), as int64."""
    if TASK_COUNT in tasks.columns:
        return tasks[TASK_COUNT].to_numpy(dtype=np.int64)
    return np.ones(len(tasks), dtype=np.int64)


def day_number(day: date | None) -> int:
    return int(np.datetime64(day or date(1, 1, 1), "D").astype(np.int64))
