"""Per-task usage from events: pure numpy/pandas, no I/O.

`summarize` turns a frame of priced events into four frames: one row per task, per
task/day/model/customer, per customer/day/model, and per price bucket of each task/day/model/customer
(`metering.costs.price_buckets`: the token sums a price change re-prices from, `metering.rollup.reprice`). `merge_tasks` merges task frames exactly as
if their events had been summarized together, which is what makes the rollup incremental: a run
summarizes only new events and merges them into the stored rows. Both go through one reduction,
`_reduce_tasks`, so they cannot disagree.

A task's attributes are decided by events in (time, seq) order: its customer by the earliest
event, its task type by the latest event that names one, its status by the latest terminal event
(`open` while there is none; `task.reopened` counts as one that makes it open again, and
`task.rejected` as one that makes it failed). Usage measures add up. Everything is a grouped min, max or sum over
integer codes (`ufunc.at`), linear in the number of events.

Every summed cost is kept carried: `cost_rem` < 10**6, the rest in `cost_nanos` (both are
functions of the exact sum alone). Sums over any split of the events, and costs recomputed from
the buckets' token sums, are then the same rows, to the byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from metering.core.errors import UsageTooLarge
from metering.costs.price_buckets import BUCKET_KEYS, BucketScheme
from metering.costs.prices import REM_PER_NANO

TOKEN_COLUMNS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cache_write_1h_tokens",
)  # fmt: skip
USAGE_COLUMNS = ("usage_events", *TOKEN_COLUMNS, "cost_nanos", "cost_rem", "unpriced_events")
TERMINAL = ("task.completed", "task.failed", "task.cancelled")
# Outcome events (DESIGN.md "Outcome truth") that decide the status too: a reopening returns the
# task to open, a rejection makes it failed. An acceptance does not change the status.
OUTCOME = (*TERMINAL, "task.reopened", "task.rejected")
_STATUS_OF = {"task.reopened": "open", "task.rejected": "failed"}
# What settlement (`pricing.outcomes`) reads: the latest completion, acceptance and reopening
# (times, NULL when none) and how many reopenings and rejections the task had.
OUTCOME_TIMES = {"completed_us": "task.completed", "accepted_us": "task.accepted", "reopened_us": "task.reopened"}
OUTCOME_COUNTS = {"reopened": "task.reopened", "rejected": "task.rejected"}
US_PER_DAY = 86_400_000_000

TASK_COLUMNS = (
    "task", "customer", "customer_us", "customer_seq", "task_type", "task_type_us", "task_type_seq",
    "status", "ended_us", "status_seq", "started_us", "first_event_us", "last_event_us", "events",
    *USAGE_COLUMNS, "last_seq", *OUTCOME_TIMES, *OUTCOME_COUNTS,
)  # fmt: skip
ATTRIBUTION_KEYS = ("actor", "agent")  # '' where the usage events gave none
DETAIL_KEYS = ("task", "day", "provider", "model", "customer", *ATTRIBUTION_KEYS)
DAILY_KEYS = ("customer", "day", "provider", "model", *ATTRIBUTION_KEYS)
DAILY_KEYS_CODED = ("customer", "day", "pair", *ATTRIBUTION_KEYS)  # (provider, model) as one code while grouping
PRICE_BUCKET_KEYS = (*DETAIL_KEYS, *BUCKET_KEYS)
_MIN = np.iinfo(np.int64).min
_MAX = np.iinfo(np.int64).max
_LIMIT = 2**63 - 1  # the same, as a Python int


@dataclass
class Summary:
    tasks: pd.DataFrame  # TASK_COLUMNS
    detail: pd.DataFrame  # DETAIL_KEYS + USAGE_COLUMNS
    daily: pd.DataFrame  # DAILY_KEYS + USAGE_COLUMNS
    buckets: pd.DataFrame | None = None  # PRICE_BUCKET_KEYS + USAGE_COLUMNS


@dataclass
class _Choice:
    """Rows that may decide an attribute, with the (time, seq) that orders them."""

    valid: np.ndarray | None  # bool per row; None: every row
    us: np.ndarray  # int64 per row
    seq: np.ndarray  # int64 per row


def local_days(time_us: pd.Series | np.ndarray, timezone: str) -> np.ndarray:
    """Tenant-local calendar day of each UTC microsecond timestamp, as days since 1970-01-01."""
    micros = np.asarray(time_us, dtype=np.int64)
    if timezone == "UTC":
        return micros // US_PER_DAY
    local = pd.to_datetime(micros, unit="us", utc=True).tz_convert(timezone).tz_localize(None)
    return local.to_numpy().astype("datetime64[D]").astype(np.int64)


def summarize(events: pd.DataFrame, timezone: str, scheme: BucketScheme | None = None) -> Summary:
    """Summarize priced events; the price buckets by `scheme` (default: no tiers nor periods).

    `events` has: seq, time_us, type, customer, task, task_type, provider, model, the five token
    counts, and for usage events the exact cost (`cost_nanos`, `cost_rem`) and `priced`; `actor`
    and `agent` are optional (absent or missing: ''). A usage event's measures count for its own
    actor and agent, in the detail and daily rows.
    """
    time_us = events["time_us"].to_numpy(dtype=np.int64)
    seq = events["seq"].to_numpy(dtype=np.int64)
    # Each text column is numbered once; names are looked up only for the rows that win.
    task, customer, task_type = (_Texts.of(events[name]) for name in ("task", "customer", "task_type"))
    provider, model = _Texts.of(events["provider"]), _Texts.of(events["model"])
    kind = _Texts.of(events["type"])
    usage, started, terminal = kind.rows_of("usage"), kind.rows_of("task.started"), kind.rows_of(*OUTCOME)
    status_names = [_STATUS_OF.get(n, n.removeprefix("task.")) for n in kind.names.tolist()]
    status = _Texts(kind.codes, np.array(status_names, dtype=object))
    measures = _usage_measures(events)
    n = len(task.names)
    # Usage measures add up over usage events only: the other rows go to an extra group, n.
    usage_task = np.where(usage, task.codes, n)
    reduced = _reduce_tasks(
        task.codes,
        n,
        customer=(customer, _Choice(None, time_us, seq)),
        task_type=(task_type, _Choice(task_type.codes >= 0, time_us, seq)),
        status=(status, _Choice(terminal, time_us, seq)),
        started=(time_us, started),
        first_us=time_us,
        last_us=time_us,
        last_seq=seq,
        totals={
            "events": np.bincount(task.codes, minlength=n),
            **_carried({name: _sum_by(usage_task, n + 1, values)[:n] for name, values in measures.items()}),
        },
    )
    reduced.insert(0, "task", task.names)
    reduced["status"] = reduced["status"].fillna("open")
    _open_has_no_end(reduced)
    for name, kind_name in OUTCOME_TIMES.items():
        rows = kind.rows_of(kind_name)
        latest = _grouped(np.maximum, task.codes[rows], time_us[rows], n, _MIN)
        reduced[name] = pd.arrays.IntegerArray(np.where(latest == _MIN, 0, latest), latest == _MIN)
    for name, kind_name in OUTCOME_COUNTS.items():
        reduced[name] = np.bincount(task.codes[kind.rows_of(kind_name)], minlength=n)

    span = max(len(model.names), 1)
    pair = provider.codes * span + model.codes
    names = {"task": task.names, "customer": customer.names, "provider": provider.names, "model": model.names}
    keys = {"task": task.codes, "day": local_days(time_us, timezone), "pair": pair, "customer": customer.codes}
    for name in ATTRIBUTION_KEYS:
        given = _Texts.of(events[name]) if name in events else _Texts(np.full(len(events), -1, dtype=np.int64), np.array([], dtype=object))
        # Code -1 (not given) looks up the last name: ''.
        names[name], keys[name] = np.append(given.names, ""), given.codes
    scheme = scheme or BucketScheme()
    day = keys["day"]
    # The buckets first, then the (as many or fewer) detail rows from them: a detail row's
    # first bucket holds its first event, so the rows come in the same order as from the events.
    bucket_keys = keys | {
        "utc_shift": time_us // US_PER_DAY - day,
        "period": scheme.period(time_us),
        "band": scheme.band(measures["input_tokens"]),
    }
    buckets = _group_sum(bucket_keys, measures, rows=usage)
    detail = _group_sum({name: buckets[name] for name in keys}, {name: buckets[name] for name in USAGE_COLUMNS})
    # A customer's day sums its tasks' days: grouped from the (fewer) detail rows.
    daily = _group_sum({name: detail[name] for name in DAILY_KEYS_CODED}, {name: detail[name] for name in USAGE_COLUMNS})
    return Summary(
        tasks=reduced[list(TASK_COLUMNS)],
        detail=_decode(detail, names, span, DETAIL_KEYS),
        daily=_decode(daily, names, span, DAILY_KEYS),
        buckets=_decode(buckets, names, span, PRICE_BUCKET_KEYS),
    )


@dataclass
class _Texts:
    """A text column as integer codes (-1: missing) and the distinct names they stand for."""

    codes: np.ndarray
    names: np.ndarray  # object

    @classmethod
    def of(cls, column: pd.Series) -> _Texts:
        if isinstance(column.dtype, pd.CategoricalDtype):
            return cls._of_categorical(column)
        codes, names = pd.factorize(column, sort=False)
        return cls(codes, np.asarray(names, dtype=object))

    @classmethod
    def _of_categorical(cls, column: pd.Series) -> _Texts:
        """The column's own codes (no hashing), renumbered only if some category has no row."""
        codes = column.cat.codes.to_numpy().astype(np.int64)
        names = np.asarray(column.cat.categories, dtype=object)
        used = np.bincount(codes + 1, minlength=len(names) + 1)[1:] > 0
        if not used.all():
            renumber = np.append(np.cumsum(used) - 1, -1)  # index -1: missing stays missing
            codes, names = renumber[codes], names[used]
        return cls(codes, names)

    def rows_of(self, *values: str) -> np.ndarray:
        """Whether each row holds one of `values`."""
        return np.append(np.isin(self.names, list(values)), False)[self.codes]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The names of `rows` (None where missing or where a row is -1)."""
        codes = np.where(rows >= 0, self.codes[np.maximum(rows, 0)], -1)
        out = np.full(len(rows), None, dtype=object)
        found = codes >= 0
        out[found] = self.names[codes[found]]
        return out


def merge_tasks(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Merge task rows as if all their events had been summarized at once."""
    in_old, in_new = _in_both(old["task"], new["task"])
    if not in_old.any():
        return _concat([old, new], TASK_COLUMNS)
    merged = _merge_task_rows(old.loc[in_old], new.loc[in_new])
    return _concat([old.loc[~in_old], new.loc[~in_new], merged], TASK_COLUMNS)


def _in_both(old: pd.Series, new: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of `old` and of `new` hold a value that the other side also holds. Rows
    that do not are passed through a merge as they are: in a large rollup, chunks and worker
    ranges share only the tasks that straddle their boundary."""
    # Integer codes: Series.isin on Arrow-backed strings loops in Python.
    codes, _ = pd.factorize(pd.concat([old, new], ignore_index=True), sort=False)
    old_codes, new_codes = codes[: len(old)], codes[len(old) :]
    in_old = np.isin(old_codes, new_codes)
    return in_old, np.isin(new_codes, old_codes[in_old])


def _concat(frames: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    parts = [frame[list(columns)] for frame in frames if len(frame)]
    if not parts:
        return frames[-1][list(columns)]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)


def _merge_task_rows(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    both = pd.concat([old[list(TASK_COLUMNS)], new[list(TASK_COLUMNS)]], ignore_index=True)
    codes, tasks = pd.factorize(both["task"], sort=False)

    def choice(us: str, seq: str) -> _Choice:
        valid = both[us].notna().to_numpy()
        return _Choice(valid, both[us].fillna(0).to_numpy(dtype=np.int64), both[seq].fillna(0).to_numpy(dtype=np.int64))

    started = both["started_us"]
    # The status's deciding event: a terminal one (ended_us), or a reopening (reopened_us).
    decided = both["status_seq"].notna()
    both["_status_us"] = both["ended_us"].where(both["ended_us"].notna(), both["reopened_us"]).where(decided)
    reduced = _reduce_tasks(
        codes,
        len(tasks),
        customer=(_Texts.of(both["customer"]), choice("customer_us", "customer_seq")),
        task_type=(_Texts.of(both["task_type"]), choice("task_type_us", "task_type_seq")),
        status=(_Texts.of(both["status"].where(decided)), choice("_status_us", "status_seq")),
        started=(started.fillna(0).to_numpy(dtype=np.int64), started.notna().to_numpy()),
        first_us=both["first_event_us"].to_numpy(dtype=np.int64),
        last_us=both["last_event_us"].to_numpy(dtype=np.int64),
        last_seq=both["last_seq"].to_numpy(dtype=np.int64),
        totals=_carried({name: _sum_by(codes, len(tasks), both[name].to_numpy(dtype=np.int64)) for name in ("events", *USAGE_COLUMNS)}),
    )
    reduced.insert(0, "task", np.asarray(tasks, dtype=object))
    reduced["status"] = reduced["status"].fillna("open")
    _open_has_no_end(reduced)
    for name in OUTCOME_TIMES:
        values = pd.array(both[name], dtype="Int64")  # stored rows come as objects with None
        latest = _grouped(np.maximum, codes, values.fillna(_MIN).to_numpy(dtype=np.int64), len(tasks), _MIN)
        reduced[name] = pd.arrays.IntegerArray(np.where(latest == _MIN, 0, latest), latest == _MIN)
    for name in OUTCOME_COUNTS:
        reduced[name] = _sum_by(codes, len(tasks), both[name].to_numpy(dtype=np.int64))
    return reduced[list(TASK_COLUMNS)]


def _open_has_no_end(tasks: pd.DataFrame) -> None:
    """A task reopened is open: no end time (its reopening's time is `reopened_us`)."""
    reopened = (tasks["status"] == "open").to_numpy()
    if reopened.any():
        tasks["ended_us"] = tasks["ended_us"].mask(reopened)


def _reduce_tasks(
    codes: np.ndarray,
    n: int,
    *,
    customer: tuple[_Texts, _Choice],
    task_type: tuple[_Texts, _Choice],
    status: tuple[_Texts, _Choice],
    started: tuple[np.ndarray, np.ndarray],
    first_us: np.ndarray,
    last_us: np.ndarray,
    last_seq: np.ndarray,
    totals: dict[str, np.ndarray],
) -> pd.DataFrame:
    """One row per task code: the deciding rows' values, mins and maxes, and the `totals`
    (already summed per task)."""
    out: dict[str, Any] = {}
    for name, (values, choice), latest in (
        ("customer", customer, False),
        ("task_type", task_type, True),
        ("status", status, True),
    ):
        winner = _winners(codes, n, choice, latest=latest)
        out[name] = values.take(winner)
        key_us, key_seq = ("customer_us", "customer_seq") if name == "customer" else (
            ("task_type_us", "task_type_seq") if name == "task_type" else ("ended_us", "status_seq")
        )
        out[key_us] = _nullable(choice.us, winner)
        out[key_seq] = _nullable(choice.seq, winner)
    started_us, mask = started
    out["started_us"] = _grouped(np.minimum, codes[mask], started_us[mask], n, _MAX, missing_as_na=True)
    out["first_event_us"] = _grouped(np.minimum, codes, first_us, n, _MAX)
    out["last_event_us"] = _grouped(np.maximum, codes, last_us, n, _MIN)
    out |= totals
    out["last_seq"] = _grouped(np.maximum, codes, last_seq, n, _MIN)
    out["customer_us"] = out["customer_us"].astype(np.int64)  # every task has a customer
    out["customer_seq"] = out["customer_seq"].astype(np.int64)
    return _frame(out)


def _frame(columns: dict[str, Any]) -> pd.DataFrame:
    """A frame of these columns as they are: not copied into one 2-D block per dtype, and
    object text kept as object (pandas would convert it to Arrow strings): on a 12M-event
    summary, the two cost 2.2 s of 6.4."""
    return pd.concat(
        [pd.Series(values, name=name, dtype=object if isinstance(values, np.ndarray) and values.dtype == object else None, copy=False)
         for name, values in columns.items()],
        axis=1,
    )  # fmt: skip


def _winners(codes: np.ndarray, n: int, choice: _Choice, *, latest: bool) -> np.ndarray:
    """Per task, the row that is first (or last) in (time, seq) order among valid rows; -1 if none."""
    if choice.valid is None:
        rows, c, us, seq = np.arange(len(codes)), codes, choice.us, choice.seq
    else:
        rows = np.flatnonzero(choice.valid)
        c, us, seq = codes[rows], choice.us[rows], choice.seq[rows]
    ufunc, start = (np.maximum, _MIN) if latest else (np.minimum, _MAX)
    best_us = np.full(n, start, dtype=np.int64)
    ufunc.at(best_us, c, us)
    tied = us == best_us[c]
    best_seq = np.full(n, start, dtype=np.int64)
    ufunc.at(best_seq, c[tied], seq[tied])
    win = tied & (seq == best_seq[c])
    winner = np.full(n, -1, dtype=np.int64)
    winner[c[win]] = rows[win]
    return winner


def _grouped(ufunc: np.ufunc, codes: np.ndarray, values: np.ndarray, n: int, start: int, *, missing_as_na: bool = False) -> pd.array:
    out = np.full(n, start, dtype=np.int64)
    ufunc.at(out, codes, values.astype(np.int64, copy=False))
    if missing_as_na:
        return pd.arrays.IntegerArray(np.where(out == start, 0, out), out == start)
    return out


def _nullable(values: np.ndarray, winner: np.ndarray) -> pd.array:
    found = winner >= 0
    data = np.where(found, values[np.where(found, winner, 0)] if len(values) else 0, 0).astype(np.int64)
    return pd.arrays.IntegerArray(data, ~found)


def _usage_measures(events: pd.DataFrame) -> dict[str, np.ndarray]:
    """The additive measures of each event, as a usage event would count them (callers sum
    them over usage events only): int64 amounts, and bools for the counted ones."""
    measures: dict[str, np.ndarray] = {"usage_events": np.ones(len(events), dtype=bool)}
    for name in (*TOKEN_COLUMNS, "cost_nanos", "cost_rem"):
        measures[name] = events[name].to_numpy(dtype=np.int64)
    measures["unpriced_events"] = ~events["priced"].to_numpy(dtype=bool)
    return measures


def _sum_by(groups: np.ndarray, n: int, values: np.ndarray) -> np.ndarray:
    """Per-group sums of int64 `values`, or per-group counts of the rows where bool `values` holds.

    int64 addition wraps around silently; sums that could pass 2**63 - 1 are checked and refused
    (`UsageTooLarge`) instead. The measures are never negative."""
    if values.dtype == bool:
        return np.bincount(groups if values.all() else groups[values], minlength=n)
    out = np.zeros(n, dtype=np.int64)
    if values.any():  # a column that is zero throughout (a token class nobody reports) sums to zeros
        np.add.at(out, groups, values)
        if int(values.max()) * len(values) > _LIMIT:
            _check_no_overflow(groups, n, values)
    return out


def _check_no_overflow(groups: np.ndarray, n: int, values: np.ndarray) -> None:
    # A float64 sum of non-negative numbers is within a relative 1e-9 of the exact one here, so
    # only groups near the limit need an exact (Python int) sum.
    approximate = np.bincount(groups, weights=values.astype(np.float64), minlength=n)
    for group in np.flatnonzero(approximate >= _LIMIT * (1 - 1e-6)).tolist():
        exact = sum(values[groups == group].tolist())
        if exact > _LIMIT:
            raise UsageTooLarge(
                f"a sum of usage ({exact:,}) exceeds {_LIMIT:,}, the most the rollup holds exactly "
                "(tokens, or provider cost in 1e-9 of the currency)",
                detail={"sum": str(exact), "limit": str(_LIMIT)},
            )


def _group_sum(keys: dict[str, np.ndarray], measures: dict[str, np.ndarray], *, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Sum measures per distinct key combination (keys are integer codes) over `rows` (a bool
    mask; all rows by default); the columns are the keys' codes, the sums, and `_first_row`, a
    row of each group in the input."""
    combined = _pack(keys)
    if combined is None:  # too many distinct values to pack: let pandas number the combinations
        combined = np.array(pd.DataFrame(keys).groupby(list(keys), sort=False).ngroup(), dtype=np.int64)  # writable
    if rows is not None and rows.all():
        rows = None  # nothing left out
    if rows is not None:
        combined[~rows] = -1  # one group for the rows left out (keys are >= 0), dropped below
    groups, first_rows = _factorize_first(combined)
    if rows is not None:  # the left-out group numbered last, so that dropping it is a slice
        _swap_codes(groups, first_rows, int(groups[np.argmin(rows)]), len(first_rows) - 1)
    n = len(first_rows)
    out = {name: values[first_rows] for name, values in keys.items()}
    for name, values in measures.items():
        out[name] = _sum_by(groups, n, values)
    _carried(out)
    out["_first_row"] = first_rows
    return {name: values[: n - 1] for name, values in out.items()} if rows is not None else out


def _carried(sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Summed costs carried (in place): each `cost_rem` below 10**6, the rest in `cost_nanos`."""
    if "cost_rem" in sums and "cost_nanos" in sums:
        sums["cost_nanos"] = sums["cost_nanos"] + sums["cost_rem"] // REM_PER_NANO
        sums["cost_rem"] = sums["cost_rem"] % REM_PER_NANO
    return sums


def _swap_codes(groups: np.ndarray, first_rows: np.ndarray, a: int, b: int) -> None:
    """Renumber groups a and b as each other, in place."""
    if a != b:
        in_a, in_b = groups == a, groups == b
        groups[in_a], groups[in_b] = b, a
        first_rows[[a, b]] = first_rows[[b, a]]


def _pack(keys: dict[str, np.ndarray]) -> np.ndarray | None:
    """The key codes of each row packed into one int64 (>= 0), or None if they do not fit."""
    lows = [int(values.min(initial=0)) for values in keys.values()]
    spans = [int(values.max(initial=0)) - low + 1 for values, low in zip(keys.values(), lows, strict=True)]
    if np.prod([float(span) for span in spans]) >= 2**62:
        return None
    combined: np.ndarray | None = None
    for values, low, span in zip(keys.values(), lows, spans, strict=True):
        if combined is None:
            combined = values.astype(np.int64)  # a copy: the rest is done in place
        else:
            combined *= span
            combined += values
        if low:
            combined -= low
    return combined


def _factorize_first(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group codes of `keys` and the first row of each group."""
    groups, _ = pd.factorize(keys, sort=False)
    first = np.full(int(groups.max(initial=-1)) + 1, len(keys), dtype=np.int64)
    np.minimum.at(first, groups, np.arange(len(keys), dtype=np.int64))
    return groups, first


def _decode(grouped: dict[str, np.ndarray], names: dict[str, np.ndarray], model_span: int, keys: tuple[str, ...]) -> pd.DataFrame:
    """Integer group keys back to names and dates."""
    pair = grouped["pair"]
    codes = {name: grouped[name] for name in keys if name in ("task", "customer", *ATTRIBUTION_KEYS)}
    codes |= {"provider": pair // model_span, "model": pair % model_span}
    out = {
        name: grouped[name] if name in BUCKET_KEYS else names[name][codes[name]] if name != "day" else grouped["day"].astype("datetime64[D]")
        for name in keys
    }
    return _frame(out | {name: grouped[name] for name in USAGE_COLUMNS})


def merge_additive(old: pd.DataFrame, new: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Sum usage measures over the keys."""
    columns = (*keys, *USAGE_COLUMNS)
    in_old, in_new = _in_both(old[keys[0]], new[keys[0]])
    if not in_old.any():
        return _concat([old, new], columns)
    merged = _sum_rows(old.loc[in_old], new.loc[in_new], keys)
    return _concat([old.loc[~in_old], new.loc[~in_new], merged], columns)


def _sum_rows(old: pd.DataFrame, new: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    both = pd.concat([old, new], ignore_index=True)
    codes = {name: pd.factorize(both[name], sort=False)[0] for name in keys}
    grouped = _group_sum(codes, {name: both[name].to_numpy(dtype=np.int64) for name in USAGE_COLUMNS})
    first = grouped["_first_row"]
    out = {name: both[name].to_numpy()[first] for name in keys}
    return pd.DataFrame({**out, **{name: grouped[name] for name in USAGE_COLUMNS}})


def combine(a: Summary, b: Summary) -> Summary:
    """Two summaries of disjoint events as one (chunks, ranges)."""
    return Summary(
        tasks=merge_tasks(a.tasks, b.tasks),
        detail=merge_additive(a.detail, b.detail, DETAIL_KEYS),
        daily=merge_additive(a.daily, b.daily, DAILY_KEYS),
        buckets=None if a.buckets is None or b.buckets is None else merge_additive(a.buckets, b.buckets, PRICE_BUCKET_KEYS),
    )
