"""Outcome truth: when a completed task becomes billable (DESIGN.md "Outcome truth"). Pure: no I/O.

Rules (`outcomes:` in the tenant config), one per task type or `default`:
  - `settle_after` (`72h`, `30m`, `2d`, `45s`): a completed task settles this long after its latest
    `task.completed`, unless reopened, rejected (or failed, cancelled) first;
  - `require_acceptance`: only a `task.accepted` settles it (no window);
  - `dispute_window` (default 30d): how long after settling a dispute may be opened.
A `task.accepted` at or after the latest completion settles the task at once.

Settlement is final: an event after it (a reopening, a rejection) changes the task's status but
not what was billed; only a dispute takes a settled job back. A task type with no rule (and no
`default` rule), and every task of a tenant without rules, settles when it completes: today's
behaviour.

The rules are versioned as a whole (`RuleBook`), like plans: a version is in force from its
tenant-local `effective_from` (None: since always), and a task is settled by the version in force
on the day of its latest completion. The rollup keeps per task what this reads (`metering.rollup.summary`:
`completed_us`, `accepted_us`, `reopened_us` and the status with its time); `settle` computes
`settled_us` for a frame of tasks at array speed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

DEFAULT = "default"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"([0-9]{1,7})([smhd])")
MAX_DURATION = timedelta(days=3650)
_NEVER = np.iinfo(np.int64).max
US = 1_000_000


def parse_duration(value: object) -> timedelta:
    """`72h`, `30m`, `2d`, `45s` (a whole number and a unit) as a timedelta, at most 3650 days."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str) or not (match := _DURATION.fullmatch(value.strip())):
        raise ValueError("must be a duration such as 72h, 30m, 2d or 45s")
    span = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if span > MAX_DURATION:
        raise ValueError(f"must be at most {MAX_DURATION.days}d")
    return span


def format_duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class OutcomeRule(BaseModel):
    """One entry of `outcomes:`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_type: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    settle_after: Duration = timedelta(0)
    require_acceptance: Annotated[bool, Field(strict=True)] = False
    dispute_window: Duration = timedelta(days=30)

    def definition(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type,
            "settle_after": format_duration(self.settle_after),
            "require_acceptance": self.require_acceptance,
            "dispute_window": format_duration(self.dispute_window),
        }


def rules_problems(rules: Sequence[OutcomeRule]) -> list[tuple[str, str]]:
    """Problems of a whole `outcomes` section, as (path, message): a task type given twice."""
    first: dict[str, int] = {}
    problems = []
    for index, rule in enumerate(rules):
        if first.setdefault(rule.task_type, index) != index:
            problems.append((f"[{index}].task_type", f"duplicates outcomes[{first[rule.task_type]}]"))
    return problems


def rules_definition(rules: Iterable[OutcomeRule]) -> str:
    """How a version is stored: canonical JSON (sorted by task type), so equal rules compare equal."""
    return json.dumps(sorted((r.definition() for r in rules), key=lambda d: d["task_type"]), sort_keys=True)


def rules_from_definition(text: str) -> tuple[OutcomeRule, ...]:
    return tuple(OutcomeRule.model_validate(entry) for entry in json.loads(text))


@dataclass(frozen=True)
class RuleVersion:
    version: int
    effective_from: date | None
    rules: tuple[OutcomeRule, ...]

    def rule_for(self, task_type: str | None) -> OutcomeRule | None:
        by_type = {r.task_type: r for r in self.rules}
        return by_type.get(task_type or DEFAULT, by_type.get(DEFAULT))


@dataclass(frozen=True)
class RuleBook:
    """Every version of a tenant's outcome rules, oldest first. Empty: no rules."""

    versions: tuple[RuleVersion, ...] = ()

    def __bool__(self) -> bool:
        return any(v.rules for v in self.versions)

    def at(self, day: date) -> RuleVersion | None:
        in_force = [v for v in self.versions if (v.effective_from or date.min) <= day]
        return in_force[-1] if in_force else None

    def longest_window(self) -> timedelta:
        """The longest `settle_after` of any version: how far back a month's settlements reach."""
        return max((r.settle_after for v in self.versions for r in v.rules), default=timedelta(0))

    def needs_acceptance(self) -> bool:
        return any(r.require_acceptance for v in self.versions for r in v.rules)

    def longest_dispute_window(self) -> timedelta:
        return max((r.dispute_window for v in self.versions for r in v.rules), default=timedelta(0))


SETTLE_INPUT = ("task_type", "status", "ended_us", "completed_us", "accepted_us", "reopened_us")


def settle(tasks: pd.DataFrame, book: RuleBook, timezone: str) -> pd.DataFrame:
    """Per task (same index): `settled_us` (Int64; NA while not settled: pending, open, or never
    completed) and `rule_version` (Int64; NA where no rule applied).

    `tasks` has `SETTLE_INPUT` (times in UTC microseconds, nullable). Without a rule a completed
    task settles when it completes (`ended_us`). With one, it settles at the earlier of its latest
    completion + `settle_after` (never with `require_acceptance`) and an acceptance at or after that
    completion, provided no later status change (reopening, rejection, failure, cancellation)
    came first."""
    n = len(tasks)
    status = tasks["status"].to_numpy(dtype=object)
    ended = _times(tasks["ended_us"])
    completed = _times(tasks["completed_us"])
    accepted = _times(tasks["accepted_us"])
    reopened = _times(tasks["reopened_us"])
    after, needs_acceptance, version = _rules_of(tasks, completed, book, timezone)
    has_rule = version >= 0
    is_completed = status == "completed"

    no_window = needs_acceptance | (after < 0) | (completed == _NEVER)
    window_end = np.where(no_window, _NEVER, np.where(no_window, 0, completed) + np.maximum(after, 0))
    accepted_in_time = (accepted != _NEVER) & (accepted >= completed)
    settles_at = np.minimum(window_end, np.where(accepted_in_time, accepted, _NEVER))
    # The latest status change after the completion: none when the task is still completed.
    changed_at = np.where(is_completed, _NEVER, np.where(status == "open", reopened, ended))
    ruled = has_rule & (completed != _NEVER) & (settles_at != _NEVER) & (settles_at <= changed_at)
    legacy = ~has_rule & is_completed
    settled = np.where(ruled, settles_at, np.where(legacy, ended, 0))
    found = ruled | legacy
    return pd.DataFrame(
        {
            "settled_us": pd.arrays.IntegerArray(settled.astype(np.int64), ~found),
            "rule_version": pd.arrays.IntegerArray(
                np.where(has_rule, version, 0).astype(np.int64), ~has_rule
            ),
        },
        index=tasks.index if n else None,
    )


def _times(column: pd.Series) -> np.ndarray:
    """Nullable microseconds as int64, missing as `_NEVER`."""
    return pd.to_numeric(column).astype("Int64").fillna(_NEVER).to_numpy(dtype=np.int64)


def _rules_of(
    tasks: pd.DataFrame, completed: np.ndarray, book: RuleBook, timezone: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per task: `settle_after` in microseconds (-1: no rule), whether it needs acceptance, and the
    rule version (-1: none), by the version in force on the tenant-local day of its completion."""
    n = len(tasks)
    after = np.full(n, -1, dtype=np.int64)
    acceptance = np.zeros(n, dtype=bool)
    version = np.full(n, -1, dtype=np.int64)
    if not book or n == 0:
        return after, acceptance, version
    starts = np.array([_start_us(v.effective_from, timezone) for v in book.versions], dtype=np.int64)
    at = np.where(completed == _NEVER, _NEVER - 1, completed)
    which = np.searchsorted(starts, at, side="right") - 1
    types, type_names = pd.factorize(tasks["task_type"], use_na_sentinel=True)
    names = [None, *type_names.tolist()]
    for v_index, v in enumerate(book.versions):
        in_v = which == v_index
        if not in_v.any():
            continue
        for code, name in enumerate(names, start=-1):
            rule = v.rule_for(name)
            if rule is None:
                continue
            rows = in_v & (types == code)
            after[rows] = int(rule.settle_after.total_seconds()) * US
            acceptance[rows] = rule.require_acceptance
            version[rows] = v.version
    return after, acceptance, version


def _start_us(day: date | None, timezone: str) -> int:
    if day is None:
        return int(np.iinfo(np.int64).min)
    return int(pd.Timestamp(day).tz_localize(timezone).value // 1000)
