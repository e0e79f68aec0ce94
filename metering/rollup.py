"""Per-task usage from events: pure pandas, no I/O.

`summarize` turns a frame of events (already priced) into three frames: one row per task, per
task/day/model, and per customer/day/model. `merge_tasks` merges two task frames exactly as if
their events had been summarized together, which is what makes the rollup incremental: each run
summarizes only new events and merges them into the stored rows.

A task's attributes are decided by events in (time, seq) order: its customer by the earliest
event, its task type by the latest event that names one, its status by the latest terminal event
(`open` while there is none). Usage measures add up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
USAGE_COLUMNS = ("usage_events", *TOKEN_COLUMNS, "cost_nanos", "cost_rem", "unpriced_events")
TERMINAL = ("task.completed", "task.failed", "task.cancelled")
US_PER_DAY = 86_400_000_000

TASK_COLUMNS = (
    "task", "customer", "customer_us", "customer_seq", "task_type", "task_type_us", "task_type_seq",
    "status", "ended_us", "status_seq", "started_us", "first_event_us", "last_event_us", "events",
    *USAGE_COLUMNS, "last_seq",
)  # fmt: skip
DETAIL_KEYS = ("task", "day", "provider", "model", "customer")
DAILY_KEYS = ("customer", "day", "provider", "model")


@dataclass
class Summary:
    tasks: pd.DataFrame  # TASK_COLUMNS
    detail: pd.DataFrame  # DETAIL_KEYS + USAGE_COLUMNS
    daily: pd.DataFrame  # DAILY_KEYS + USAGE_COLUMNS


def local_days(time_us: pd.Series | np.ndarray, timezone: str) -> np.ndarray:
    """Tenant-local calendar day of each UTC microsecond timestamp, as datetime64[D]."""
    moments = pd.to_datetime(np.asarray(time_us, dtype=np.int64), unit="us", utc=True)
    if timezone != "UTC":
        moments = moments.tz_convert(timezone)
    return moments.tz_localize(None).to_numpy().astype("datetime64[D]")


def summarize(events: pd.DataFrame, timezone: str) -> Summary:
    """Summarize priced events.

    `events` has: seq, time_us, type, customer, task, task_type, provider, model, the five token
    counts, and for usage events the exact cost (`cost_nanos`, `cost_rem`) and `priced`.
    """
    order = np.lexsort((events["seq"].to_numpy(), events["time_us"].to_numpy()))
    ev = events.iloc[order].reset_index(drop=True)
    time_us = ev["time_us"].astype("Int64")
    seq = ev["seq"].astype("Int64")
    kind = ev["type"]
    is_usage = (kind == "usage").to_numpy()
    typed = ev["task_type"].notna()
    terminal = kind.isin(TERMINAL)
    frame = pd.DataFrame({
        "task": ev["task"],
        "customer": ev["customer"],
        "customer_us": time_us,
        "customer_seq": seq,
        "task_type": ev["task_type"].where(typed),
        "task_type_us": time_us.where(typed),
        "task_type_seq": seq.where(typed),
        "status": kind.where(terminal).str.removeprefix("task."),
        "ended_us": time_us.where(terminal),
        "status_seq": seq.where(terminal),
        "started_us": time_us.where(kind == "task.started"),
        "first_event_us": time_us,
        "last_event_us": time_us,
        "last_seq": seq,
    })  # fmt: skip
    usage = _usage_measures(ev, is_usage)
    for name in USAGE_COLUMNS:
        frame[name] = usage[name]
    grouped = frame.groupby("task", sort=False)
    tasks = grouped.agg(
        customer=("customer", "first"),
        customer_us=("customer_us", "first"),
        customer_seq=("customer_seq", "first"),
        task_type=("task_type", "last"),
        task_type_us=("task_type_us", "last"),
        task_type_seq=("task_type_seq", "last"),
        status=("status", "last"),
        ended_us=("ended_us", "last"),
        status_seq=("status_seq", "last"),
        started_us=("started_us", "min"),
        first_event_us=("first_event_us", "min"),
        last_event_us=("last_event_us", "max"),
        events=("last_seq", "size"),
        last_seq=("last_seq", "max"),
        **{name: (name, "sum") for name in USAGE_COLUMNS},
    ).reset_index()
    tasks["status"] = tasks["status"].fillna("open")
    tasks = _task_dtypes(tasks)

    used = ev.loc[is_usage, ["task", "customer", "provider", "model"]]
    used["day"] = local_days(ev.loc[is_usage, "time_us"], timezone)
    used_measures = usage.loc[is_usage].reset_index(drop=True)
    used = pd.concat([used.reset_index(drop=True), used_measures], axis=1)
    detail = used.groupby(list(DETAIL_KEYS), sort=False)[list(USAGE_COLUMNS)].sum().reset_index()
    daily = used.groupby(list(DAILY_KEYS), sort=False)[list(USAGE_COLUMNS)].sum().reset_index()
    return Summary(tasks=tasks[list(TASK_COLUMNS)], detail=detail, daily=daily)


def _usage_measures(ev: pd.DataFrame, is_usage: np.ndarray) -> pd.DataFrame:
    """Additive measures per event: zero for events that are not usage."""
    zero = np.zeros(len(ev), dtype=np.int64)
    measures = {"usage_events": is_usage.astype(np.int64)}
    for name in TOKEN_COLUMNS:
        measures[name] = np.where(is_usage, ev[name].to_numpy(dtype=np.int64), zero)
    measures["cost_nanos"] = np.where(is_usage, ev["cost_nanos"].to_numpy(dtype=np.int64), zero)
    measures["cost_rem"] = np.where(is_usage, ev["cost_rem"].to_numpy(dtype=np.int64), zero)
    measures["unpriced_events"] = (is_usage & ~ev["priced"].to_numpy(dtype=bool)).astype(np.int64)
    return pd.DataFrame(measures)


_NULLABLE_INTS = ("task_type_us", "task_type_seq", "ended_us", "status_seq", "started_us")


def _task_dtypes(tasks: pd.DataFrame) -> pd.DataFrame:
    for name in _NULLABLE_INTS:
        tasks[name] = tasks[name].astype("Int64")
    for name in ("customer_us", "customer_seq", "first_event_us", "last_event_us", "events", "last_seq", *USAGE_COLUMNS):
        tasks[name] = tasks[name].astype(np.int64)
    return tasks


def merge_tasks(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Merge task rows as if all their events had been summarized at once."""
    both = pd.concat([old[list(TASK_COLUMNS)], new[list(TASK_COLUMNS)]], ignore_index=True)
    sums = both.groupby("task", sort=False)[["events", *USAGE_COLUMNS]].sum()
    merged = both.groupby("task", sort=False).agg(
        started_us=("started_us", "min"),
        first_event_us=("first_event_us", "min"),
        last_event_us=("last_event_us", "max"),
        last_seq=("last_seq", "max"),
    )
    merged = merged.join(sums)
    merged = merged.join(_pick(both, ["customer", "customer_us", "customer_seq"], ["customer_us", "customer_seq"], "first"))
    typed = both[both["task_type_us"].notna()]
    merged = merged.join(_pick(typed, ["task_type", "task_type_us", "task_type_seq"], ["task_type_us", "task_type_seq"], "last"))
    ended = both[both["ended_us"].notna()]
    merged = merged.join(_pick(ended, ["status", "ended_us", "status_seq"], ["ended_us", "status_seq"], "last"))
    merged["status"] = merged["status"].fillna("open")
    return _task_dtypes(merged.reset_index())[list(TASK_COLUMNS)]


def _pick(frame: pd.DataFrame, columns: list[str], order: list[str], keep: str) -> pd.DataFrame:
    """Per task, the columns of the first or last row in `order`."""
    ranked = frame.sort_values(order, kind="stable").drop_duplicates("task", keep=keep)  # type: ignore[arg-type]
    return ranked.set_index("task")[columns]


def merge_additive(old: pd.DataFrame, new: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Sum usage measures over the keys."""
    both = pd.concat([old, new], ignore_index=True)
    return both.groupby(list(keys), sort=False)[list(USAGE_COLUMNS)].sum().reset_index()
