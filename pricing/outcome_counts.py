"""A month's outcomes per task type (DESIGN.md "Outcome truth"): how many jobs completed, settled,
were pending, reopened, rejected and disputed, and the effective price per settled job. Pure: no
I/O; `pricing.analysis.month_outcomes` feeds it from the database, and `compare` (CLI and API)
and the dashboard's month page all show what it returns.

In the tenant-local month, up to `now` (the month's `bound`: its end, or `now` + 1 µs in the
current month), per task type:
  completed  tasks whose latest `task.completed` falls in the month (a task without an outcome
             rule counts while it is still completed: without rules, settled = completed);
  settled    tasks that settled in the month: what a per-job plan bills in it;
  pending    tasks with a rule, completed before the bound and not settled by it, with no later
             reopening, rejection or failure before it: they settle (and bill) in a later month;
  reopened   tasks whose latest `task.reopened` falls in the month;
  rejected   tasks rejected that ended (failed) in the month;
  disputed   tasks with a dispute opened in the month (any outcome of the dispute).
`billed` is what the per-job plans of the customers billed for the settled jobs: their `jobs`
lines (each split over the task types its price key covers, by count) and tier lines (split
over the customer's settled jobs, by count), as rating makes them (`pricing.rating`); platform
fees, minimums and failed-task lines are not for a settled job. A job whose dispute was accepted
in an open month is settled but billed nothing. `price_per_settled_job` = billed ÷ the settled
jobs of per-job customers (`billed_jobs`): exact (a 60-digit quotient), rounded only for display.
Counts come from each task's latest state (the rollup keeps the latest completion, reopening and
acceptance of a task).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Context, Decimal
from fractions import Fraction

import numpy as np
import pandas as pd

from metering.core.money import round_money
from metering.core.periods import Period
from metering.events.ingest import to_us
from pricing.plans import PerJobPlan, PlanBook
from pricing.rating import LineKind, rate_month
from pricing.usage import TASK_COLUMNS, TASK_COUNT, TOKEN_USAGE_COLUMNS

OUTCOME_INPUT = (
    "customer", "task", "task_type", "status", "ended_us", "completed_us", "reopened_us", "rejected",
    "settled_us", "rule_version", "excluded",
)  # fmt: skip
DISPUTE_INPUT = ("task", "task_type", "opened_us")
COUNTS = ("completed", "settled", "pending", "reopened", "rejected", "disputed")
_EXACT = Context(prec=60)
_NEVER = np.iinfo(np.int64).max
_JOB_LINES = (LineKind.JOBS, LineKind.TIER, LineKind.TIER_FLAT)


@dataclass(frozen=True)
class TaskTypeOutcomes:
    task_type: str | None  # None: tasks without a task type
    completed: int = 0
    settled: int = 0
    pending: int = 0
    reopened: int = 0
    rejected: int = 0
    disputed: int = 0
    billed_jobs: int = 0  # settled jobs of customers billed per job
    billed: Decimal = Decimal(0)  # what per-job plans billed for them (exact)
    price_per_settled_job: Decimal | None = None  # billed / billed_jobs (exact); None: no such job

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def count_outcomes(
    tasks: pd.DataFrame,
    disputed: pd.DataFrame,
    *,
    period: Period,
    now: datetime,
    plans: PlanBook,
    customers: Mapping[str, str],
    currency: str,
) -> list[TaskTypeOutcomes]:
    """Per task type (those with any count, by name, no task type last), the month's outcomes.

    `tasks` has `OUTCOME_INPUT` (times in UTC microseconds, nullable; `settled_us` and
    `rule_version` as `pricing.outcomes.settle` gives them; `excluded`: an accepted dispute in an
    open month took the job off the bill); `disputed` has `DISPUTE_INPUT`; `customers` maps a
    customer to its billed plan."""
    start, end = to_us(period.start), to_us(period.end)
    bound = min(end, to_us(now) + 1)
    status = tasks["status"].to_numpy(dtype=object)
    types = tasks["task_type"].to_numpy(dtype=object)
    completed_us, settled_us = _times(tasks["completed_us"]), _times(tasks["settled_us"])
    reopened_us, ended_us = _times(tasks["reopened_us"]), _times(tasks["ended_us"])
    ruled = tasks["rule_version"].notna().to_numpy()

    def within(times: np.ndarray) -> np.ndarray:
        return (times >= start) & (times < bound)

    is_completed = status == "completed"
    changed_at = np.where(is_completed, _NEVER, np.where(status == "open", reopened_us, ended_us))
    flags = {
        "completed": within(completed_us) & (ruled | is_completed),
        "settled": within(settled_us),
        "pending": ruled & (bound > start) & (completed_us < bound) & (settled_us >= bound) & (changed_at >= bound),
        "reopened": within(reopened_us),
        "rejected": (tasks["rejected"].to_numpy(dtype=np.int64) > 0) & (status == "failed") & within(ended_us),
    }
    counts: dict[str | None, Counter[str]] = defaultdict(Counter)
    for name, flag in flags.items():
        for task_type, n in Counter(_names(types[flag])).items():
            counts[task_type][name] += n
    seen = disputed.loc[within(_times(disputed["opened_us"]))].drop_duplicates("task")
    for task_type, n in Counter(_names(seen["task_type"].to_numpy(dtype=object))).items():
        counts[task_type]["disputed"] += n

    per_job = {c: p for c, p in customers.items() if isinstance(plans.history(p)[0], PerJobPlan)}
    billable = flags["settled"] & ~tasks["excluded"].to_numpy(dtype=bool)
    billable &= tasks["customer"].isin(list(per_job)).to_numpy()
    jobs = tasks.loc[billable, ["customer", "task", "task_type"]].assign(settled_us=settled_us[billable])
    return _rows(counts, jobs, period=period, plans=plans, per_job=per_job, currency=currency)


def count_grouped_outcomes(
    completed: pd.DataFrame,
    changed: Mapping[str | None, tuple[int, int]],
    disputed: pd.DataFrame,
    *,
    period: Period,
    now: datetime,
    plans: PlanBook,
    customers: Mapping[str, str],
    currency: str,
) -> list[TaskTypeOutcomes]:
    """`count_outcomes` of a month without outcome rules, from counts (the per customer-month
    figures: `pricing.analysis.month_outcomes`): `completed` has customer, task_type (None for
    none) and `tasks`, the tasks completed in the month up to its bound (without rules, each
    settled as it completed), each group under one version of its customer's plan, none taken off
    the bill by a dispute; `changed`: per task type, the tasks (reopened, rejected) in it up to
    the bound; `disputed` as `count_outcomes` has it."""
    counts: dict[str | None, Counter[str]] = defaultdict(Counter)
    types = _names(completed["task_type"].to_numpy(dtype=object))
    for task_type, n in zip(types, completed["tasks"].tolist(), strict=True):
        counts[task_type]["completed"] += int(n)
        counts[task_type]["settled"] += int(n)
    for task_type, (reopened, rejected) in changed.items():
        counts[task_type]["reopened"] += reopened
        counts[task_type]["rejected"] += rejected
    start = to_us(period.start)
    opened = _times(disputed["opened_us"])
    seen = disputed.loc[(opened >= start) & (opened < min(to_us(period.end), to_us(now) + 1))].drop_duplicates("task")
    for task_type, n in Counter(_names(seen["task_type"].to_numpy(dtype=object))).items():
        counts[task_type]["disputed"] += n
    per_job = {c: p for c, p in customers.items() if isinstance(plans.history(p)[0], PerJobPlan)}
    jobs = completed.loc[completed["customer"].isin(list(per_job)).to_numpy()]
    jobs = jobs.assign(task=[f"#{i}" for i in range(len(jobs))], settled_us=start)
    return _rows(counts, jobs, period=period, plans=plans, per_job=per_job, currency=currency)


def _rows(counts: dict[str | None, Counter[str]], jobs: pd.DataFrame, *, period: Period, plans: PlanBook,
          per_job: Mapping[str, str], currency: str) -> list[TaskTypeOutcomes]:  # fmt: skip
    """The rows of `counts` with what `jobs` (the settled jobs billed per job) were billed."""
    billed, billed_jobs = _billed(jobs, period=period, plans=plans, customers=per_job, currency=currency)
    for task_type, n in billed_jobs.items():
        counts[task_type]["billed_jobs"] += n

    rows = []
    for task_type in sorted(counts, key=lambda t: (t is None, t or "")):
        found = counts[task_type]
        if not any(found[name] for name in COUNTS):
            continue
        amount = billed.get(task_type, Fraction(0))
        n_billed = found["billed_jobs"]
        rows.append(
            TaskTypeOutcomes(
                task_type, completed=found["completed"], settled=found["settled"], pending=found["pending"],
                reopened=found["reopened"], rejected=found["rejected"], disputed=found["disputed"],
                billed_jobs=n_billed, billed=_scaled(_decimal(amount), currency),
                price_per_settled_job=_decimal(amount / n_billed) if n_billed else None,
            )
        )  # fmt: skip
    return rows


def _scaled(amount: Decimal, currency: str) -> Decimal:
    """An amount with at least the currency's minor unit (1.00, not 1): a scale, not a rounding."""
    money = round_money(amount, currency)
    return money if money == amount else amount


def _times(column: pd.Series) -> np.ndarray:
    """Nullable microseconds as int64, missing as never."""
    return pd.to_numeric(column).astype("Int64").fillna(_NEVER).to_numpy(dtype=np.int64)


def _names(values: Sequence[object]) -> list[str | None]:
    return [None if v is None or v != v else str(v) for v in values]


def _decimal(value: Fraction) -> Decimal:
    """A fraction as a Decimal: exact when it terminates within 60 digits (money sums do)."""
    return _EXACT.divide(Decimal(value.numerator), Decimal(value.denominator))


def _billed(
    jobs: pd.DataFrame, *, period: Period, plans: PlanBook, customers: Mapping[str, str], currency: str
) -> tuple[dict[str | None, Fraction], Counter[str | None]]:
    """Per task type: what the per-job plans billed for `jobs` (the month rated as billing rates
    it), and how many jobs that is. A row of `jobs` stands for `tasks` jobs when it has them."""
    weights = jobs["tasks"].to_numpy(dtype=np.int64) if "tasks" in jobs else np.ones(len(jobs), dtype=np.int64)
    counted: Counter[str | None] = Counter()
    for task_type, n in zip(_names(jobs["task_type"].to_numpy(dtype=object)), weights.tolist(), strict=True):
        counted[task_type] += n
    if jobs.empty:
        return {}, counted
    settled_at = pd.to_datetime(jobs["settled_us"].to_numpy(dtype=np.int64), unit="us", utc=True).as_unit("ns")
    frame = pd.DataFrame(
        {
            "customer": jobs["customer"].to_numpy(dtype=object),
            "task": jobs["task"].to_numpy(dtype=object),
            "task_type": jobs["task_type"].to_numpy(dtype=object),
            "status": "completed",
            "ended_at": settled_at,
            "provider_cost_nanos": np.zeros(len(jobs), dtype=np.int64),
            TASK_COUNT: weights,
        }
    )[[*TASK_COLUMNS, TASK_COUNT]]
    present = sorted(set(frame["customer"]))
    rated = rate_month(
        month=period.first_day, customers={c: customers[c] for c in present}, plans=plans,
        token_usage=_no_tokens(), tasks=frame, currency=currency, tz=period.timezone,
    )  # fmt: skip
    local_days = settled_at.tz_convert(period.timezone).date
    # Per customer: task types by (plan version, price key), and over all its jobs (tiers).
    by_key: dict[tuple[str, object, str], Counter[str | None]] = defaultdict(Counter)
    by_customer: dict[str, Counter[str | None]] = defaultdict(Counter)
    groups: Counter[tuple[str, date, str | None]] = Counter()
    for key, n in zip(zip(frame["customer"], local_days, _names(frame["task_type"].tolist()), strict=True), weights.tolist(), strict=True):
        groups[key] += n
    for (customer, day, task_type), n in groups.items():
        version = plans.at(customers[customer], day)
        assert isinstance(version, PerJobPlan)
        by_key[(customer, version.effective_from, version.price_key(task_type))][task_type] += n
        by_customer[customer][task_type] += n
    billed: dict[str | None, Fraction] = defaultdict(Fraction)
    for line in rated.lines:
        if line.kind not in _JOB_LINES:
            continue
        if line.kind == LineKind.JOBS:
            covered = by_key[(line.customer, line.version, _price_key(line.description))]
        else:
            covered = by_customer[line.customer]
        total = sum(covered.values())
        for task_type, n in covered.items():
            billed[task_type] += Fraction(line.amount) * n / total
    return dict(billed), counted


def _price_key(description: str) -> str:
    """The `prices` key of a `jobs` line, from its description (`pricing.rating._rate_job_prices`)."""
    text = description.split(";")[0].split(" [prices ")[0]
    if text == "Completed tasks (default price)":
        return "default"
    return text.removeprefix("Completed ").removesuffix(" tasks")


def _no_tokens() -> pd.DataFrame:
    kinds = {"str": object, "day": "datetime64[ns]", "int": np.int64}
    return pd.DataFrame({c: pd.Series([], dtype=kinds[k]) for c, k in TOKEN_USAGE_COLUMNS.items()})
