"""The finance dashboard's figures for a tenant's month, all customers or one: the same rows as
the monthly CSVs (`reports.month_data`, formatted by `reports.cells`, so the page shows the files'
numbers), plus what only the page shows: provider cost per task against the job price by task
type, cost of failed tasks, unpriced models, late-usage adjustments and the 12-month series.

A `MonthView` is plain JSON-ready data, so that `reports.snapshots` can keep it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from metering.core.errors import InvalidInput
from metering.core.money import decimal_to_nanos, round_money, to_minor
from metering.core.periods import Period
from metering.core.tenants import Tenant
from metering.core.vocabulary import TASK_STATUSES
from metering.rollup import month_figures
from pricing import analysis, open_month
from pricing.outcome_counts import TaskTypeOutcomes
from pricing.plans import PerJobPlan
from pricing.repository import last_day
from pricing.usage import summable
from reports import repository
from reports.billed import month_invoices
from reports.cells import cost_decimal, cost_text, micro_units, minor_decimal, minor_text
from reports.columns import COMPARISON, CUSTOMERS
from reports.month_data import (
    ComparisonRow,
    MonthSummary,
    RatingInput,
    comparison_batches,
    costs_of,
    customer_batches,
    month_comparison,
    month_summary,
    rating_input,
)
from reports.repository import TaskCounts
from reports.tasks import scan_tasks

FORMAT = 3  # 2: with `spend` (by person and agent); 3: with `outcomes`
# Buckets of provider cost per task, in micro-units: below 0.001, 0.001-0.002, ..., from 10.00
# (those of the per customer-month figures).
COST_EDGES_MICROS = month_figures.COST_EDGES_MICROS


@dataclass
class TaskTypeCosts:
    task_type: str  # "" for tasks without one
    completed: int
    buckets: list[int]  # completed tasks per cost bucket (len(COST_EDGES_MICROS) + 1)
    losing_buckets: list[int]  # of those, tasks costing more than their job price
    priced: int  # completed tasks with a per-job price (their customer's plan or compared plan)
    losing: int
    job_prices_micros: list[int]  # the distinct per-job prices of the type
    cost_micros: int  # provider cost of the completed tasks (whole tasks)
    failed: int  # failed or cancelled
    failed_cost_micros: int


@dataclass
class MonthView:
    period: str
    customer: str | None
    closed: bool
    currency: str
    watermark_seq: int
    revenue_minor: int  # amounts due in the tenant's currency
    cost_micros: int
    margin_minor: int
    counts: dict[str, int]
    customers: list[dict[str, Any]]  # the customers file's cells, with the invoice
    comparison: list[dict[str, Any]]  # the comparison file's cells, with plan type and currency
    task_types: list[TaskTypeCosts]
    failed_by_customer: list[dict[str, Any]]
    unpriced: list[dict[str, Any]]
    adjustments: list[dict[str, Any]]
    unrated: list[str]
    other_currencies: list[str] = field(default_factory=list)
    spend: list[dict[str, Any]] = field(default_factory=list)  # per person, with their agents (`spend_by_person`)
    # Outcomes per task type up to the view's `now` (`pricing.analysis.month_outcomes`, amounts as
    # text); None: the month cannot be rated (a plan not in force).
    outcomes: list[dict[str, Any]] | None = field(default_factory=list)

    def outcome_rows(self) -> tuple[TaskTypeOutcomes, ...] | None:
        if self.outcomes is None:
            return None
        return tuple(TaskTypeOutcomes(**{**row, "billed": Decimal(row["billed"]),
                                          "price_per_settled_job": _decimal(row["price_per_settled_job"])})
                     for row in self.outcomes)  # fmt: skip

    @property
    def failed_cost_micros(self) -> int:
        return sum(t.failed_cost_micros for t in self.task_types)

    @property
    def empty(self) -> bool:
        return not self.customers

    def to_json(self) -> dict[str, Any]:
        """The view as JSON-ready data (what `dataclasses.asdict` gives, without deep-copying its
        thousands of cells: the lists and dicts are the view's own, to be dumped, not changed)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["task_types"] = [asdict(t) for t in self.task_types]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MonthView:
        return cls(**{**data, "task_types": [TaskTypeCosts(**t) for t in data["task_types"]]})


def month_view(session: Session, tenant: Tenant, period: Period, *, customer: str | None = None, now: datetime | None = None) -> MonthView:
    """The month's figures (call inside one snapshot of the database: `month_data.begin_snapshot`),
    its outcomes up to `now` (default: the month's end). An open month is read from the per
    customer-month figures where they can stand for its tasks (`open_month_view`); a closed one,
    and an open one they cannot, from its tasks."""
    closed = repository.closed_months(session, tenant.id)
    figures = open_month.usable_figures(session, tenant.id, period, customer)
    if period.label not in closed and figures is not None and not open_month.later_tasks(session, tenant.id, period, customer):
        return open_month_view(session, tenant, period, closed, figures, customer=customer, now=now)
    scan = scan_tasks(session, tenant, period, customer=customer)
    month = rating_input(session, tenant, period, customer=customer, ended=scan.ended(), figures=figures)
    summary = month_summary(session, tenant, period, customer=customer, closed=closed, counts=scan.counts, billed=month.ended,
                            rating=month)  # fmt: skip
    comparison = month_comparison(tenant, period, month, costs_of(summary))
    outcomes = month_outcomes(session, tenant, period, customer, now, figures)
    return build_view(session, tenant, period, summary, month, comparison, outcomes=outcomes)


def month_outcomes(session: Session, tenant: Tenant, period: Period, customer: str | None, now: datetime | None,
                   figures: pd.DataFrame | None = None) -> list[dict[str, Any]] | None:  # fmt: skip
    """The outcomes of `MonthView`: `pricing.analysis.month_outcomes` as JSON-ready rows (of the
    month's `figures` when already read), or None when the month cannot be rated."""
    try:
        rows = analysis.month_outcomes(session, tenant, period, customer=customer, now=now, figures=figures)
    except InvalidInput:
        return None
    return [{**row.as_dict(), "billed": str(row.billed), "price_per_settled_job": _text(row.price_per_settled_job)} for row in rows]


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def open_month_view(session: Session, tenant: Tenant, period: Period, closed: set[str], figures: pd.DataFrame, *,
                    customer: str | None = None, now: datetime | None = None) -> MonthView:  # fmt: skip
    """An open month from its rows of `customer_months` (`pricing.open_month.usable_figures`): the
    task counts, the tasks rating reads (as groups), the cost buckets per task type and the failed
    tasks' cost, without reading the month's tasks. For when the figures stand for them: no
    outcome rules, disputes or plan terms that need each task's end time, and no task with events
    after the month (whose open count needs the tasks)."""
    month = rating_input(session, tenant, period, customer=customer, figures=figures)
    summary = month_summary(session, tenant, period, customer=customer, closed=closed, counts=figure_counts(figures),
                            billed=month.ended, rating=month)  # fmt: skip
    comparison = month_comparison(tenant, period, month, costs_of(summary))
    return build_view(session, tenant, period, summary, month, comparison,
                      task_types=figure_task_type_costs(session, tenant.id, month, period, figures),
                      failed=_figure_failed_by_customer(figures), outcomes=month_outcomes(session, tenant, period, customer, now, figures))  # fmt: skip


def figure_counts(rows: pd.DataFrame) -> dict[str, TaskCounts]:
    """Per customer, the month's tasks by status (open: the tasks whose last event is in it)."""
    counts: dict[str, TaskCounts] = {}
    sums = rows.groupby(["customer", "status"], sort=False)["tasks"].sum()
    for (name, status), n in zip(sums.index.tolist(), sums.tolist(), strict=True):
        found = counts.setdefault(name, TaskCounts())
        setattr(found, status, getattr(found, status) + int(n))
    return counts


def build_view(session: Session, tenant: Tenant, period: Period, summary: MonthSummary, month: RatingInput,
               comparison: list[ComparisonRow], *, outcomes: list[dict[str, Any]] | None,
               task_types: list[TaskTypeCosts] | None = None, failed: list[dict[str, Any]] | None = None) -> MonthView:  # fmt: skip
    """`outcomes`: the month's (`month_outcomes`); `task_types`, `failed`: the month's cost buckets
    and failed tasks when already known (else from the ended tasks of `month`)."""
    customers = _rows(CUSTOMERS.columns, customer_batches(summary))
    for row, record in zip(customers, summary.customers, strict=True):
        invoice = record.invoice
        row.update(invoice_id=invoice.id if invoice else None, invoice_number=invoice.number if invoice else None,
                   invoice_status=invoice.status if invoice else None, unrated=record.amount_due_minor is None,
                   cost_micros=record.provider_cost_micros, amount_minor=record.amount_due_minor,
                   margin_minor=record.margin_minor)  # fmt: skip
    compared = _rows(COMPARISON.columns, comparison_batches(comparison))
    for row, record in zip(compared, comparison, strict=True):
        row.update(plan_type=record.plan_type, currency=record.currency, revenue_minor=record.revenue_minor,
                   margin_minor=record.margin_minor)  # fmt: skip
    revenue = sum(r.amount_due_minor or 0 for r in summary.customers if r.currency == tenant.currency)
    cost = sum(r.provider_cost_micros for r in summary.customers)
    margin = round_money(minor_decimal(revenue, tenant.currency) - cost_decimal(cost), tenant.currency)
    return MonthView(
        period=period.label, customer=summary.customer, closed=summary.closed, currency=tenant.currency,
        watermark_seq=repository.watermark(session, tenant.id), revenue_minor=revenue, cost_micros=cost,
        margin_minor=to_minor(margin, tenant.currency), counts=_counts(summary),
        customers=customers, comparison=compared,
        task_types=task_type_costs(month, period) if task_types is None else task_types,
        failed_by_customer=_failed_by_customer(month.ended) if failed is None else failed,
        unpriced=repository.unpriced_models_of(month.usage_rows),
        adjustments=_adjustments(summary), unrated=list(summary.invoices.unrated),
        other_currencies=sorted({r.currency for r in summary.customers} - {tenant.currency}),
        spend=spend_by_person(repository.spend_by_person_of(month.usage_rows)), outcomes=outcomes,
    )  # fmt: skip


def spend_by_person(rows: list[Any]) -> list[dict[str, Any]]:
    """Usage per actor ("" for usage that named none), most provider cost first, each with its
    own usage (the events that named no agent) and its agents', most cost first:
    `{"actor", "usage_events", "tokens", "cost_micros", "own": {...} | None, "agents": [{"agent", ...}]}`.
    The actor's cost is rounded once from the exact sum, as each of its parts is."""
    people: dict[str, dict[str, Any]] = {}
    for row in rows:
        person = people.setdefault(row.actor, {"actor": row.actor, "nanos": 0, "rem": 0, "usage_events": 0, "tokens": 0, "own": None, "agents": []})
        part = {"agent": row.agent, "usage_events": int(row.usage_events), "tokens": int(row.input_tokens) + int(row.output_tokens),
                "cost_micros": micro_units(int(row.cost_nanos), int(row.cost_rem))}  # fmt: skip
        person["nanos"] += int(row.cost_nanos)
        person["rem"] += int(row.cost_rem)
        person["usage_events"] += part["usage_events"]
        person["tokens"] += part["tokens"]
        if row.agent:
            person["agents"].append(part)
        else:
            person["own"] = part
    out = []
    for person in people.values():
        person["cost_micros"] = micro_units(person.pop("nanos"), person.pop("rem"))
        person["agents"].sort(key=lambda a: (-a["cost_micros"], a["agent"]))
        out.append(person)
    # People first, most cost first; usage that named nobody last.
    return sorted(out, key=lambda p: (p["actor"] == "", -p["cost_micros"], p["actor"]))


def _rows(columns: tuple[str, ...], batches: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for batch in batches:
        rows.extend(
            dict(zip(columns, values, strict=True))
            for values in zip(*(batch[c] for c in columns), strict=True)
        )
    return rows


def _counts(summary: MonthSummary) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(TASK_STATUSES, 0)
    for row in summary.customers:
        for status in counts:
            counts[status] += getattr(row.counts, status)
    return counts


def _job_prices(month: RatingInput, period: Period) -> dict[str, PerJobPlan]:
    """Per customer, the per-job plan its jobs are priced by: its own, else the first compared."""
    found: dict[str, PerJobPlan] = {}
    if month.book is None:
        return found
    for name, assignment in month.assigned.items():
        for plan_id in (assignment.plan, *assignment.compare_with):
            try:
                plan = month.book.at(plan_id, last_day(period))
            except InvalidInput:
                continue
            if isinstance(plan, PerJobPlan) and plan.prices:
                found[name] = plan
                break
    return found


def task_type_costs(month: RatingInput, period: Period) -> list[TaskTypeCosts]:
    """Whole-task provider cost of the month's ended tasks per task type: completed tasks by cost
    bucket, against the per-job price of each task's customer (where outcome pricing loses)."""
    tasks = month.ended
    if tasks.empty:
        return []
    plans = _job_prices(month, period)
    customer_code, customer_names = pd.factorize(tasks["customer"])
    kind_code, kind_names = pd.factorize(tasks["task_type"].fillna(""), sort=True)
    prices = np.full(
        (len(customer_names), len(kind_names)), -1, dtype=np.int64
    )  # nanos; -1: no per-job price
    for i, name in enumerate(customer_names.tolist()):
        if (plan := plans.get(name)) is not None:
            for j, kind in enumerate(kind_names.tolist()):
                prices[i, j] = decimal_to_nanos(plan.prices[plan.price_key(kind or None)])  # type: ignore[index]
    price = prices[customer_code, kind_code]
    cost = tasks["provider_cost_nanos"].to_numpy(dtype=np.int64)
    done = (tasks["status"] == "completed").to_numpy(dtype=bool)
    bucket = np.searchsorted(np.array(COST_EDGES_MICROS, dtype=np.int64) * 1000, cost, side="right")
    losing = done & (price >= 0) & (cost > price)
    size = len(COST_EDGES_MICROS) + 1
    out = []
    for j, kind in enumerate(kind_names.tolist()):
        mine = kind_code == j
        completed, failed = mine & done, mine & ~done
        out.append(
            TaskTypeCosts(
                task_type=kind, completed=int(completed.sum()),
                buckets=np.bincount(bucket[completed], minlength=size).tolist(),
                losing_buckets=np.bincount(bucket[completed & losing], minlength=size).tolist(),
                priced=int((completed & (price >= 0)).sum()), losing=int((completed & losing).sum()),
                job_prices_micros=sorted({p // 1000 for p in np.unique(price[completed & (price >= 0)]).tolist()}),
                cost_micros=micro_units(int(summable(cost[completed]).sum())), failed=int(failed.sum()),
                failed_cost_micros=micro_units(int(summable(cost[failed]).sum())),
            )
        )  # fmt: skip
    return out


def figure_task_type_costs(session: Session, tenant_id: int, month: RatingInput, period: Period,
                           rows: pd.DataFrame) -> list[TaskTypeCosts]:  # fmt: skip
    """`task_type_costs` from the per customer-month figures: the buckets and sums are the
    figures'; which completed tasks cost more than their job price is decided per bucket (all of
    a bucket above the price, none of one below it: the figures have an edge just above each job
    price, `pricing.open_month.job_price_edges`), and for a bucket a price cuts in two all the
    same (a price newer than the edges), from that bucket's tasks alone (`open_month.tasks_above`)."""
    ended = rows[rows["status"] != "open"]
    if ended.empty:
        return []
    edges = open_month.figure_edges(session, tenant_id)
    shown = [month_figures.display_bucket(b, edges) for b in range(len(edges) + 1)]
    plans = _job_prices(month, period)
    kinds = sorted(set(ended["task_type"].tolist()))
    size = len(COST_EDGES_MICROS) + 1
    done = ended[ended["status"] == "completed"]
    # Per (customer, task type) of completed tasks: the job price in nanos, or none.
    price: dict[tuple[str, str], int] = {}
    for name, kind in set(zip(done["customer"].tolist(), done["task_type"].tolist(), strict=True)):
        if (plan := plans.get(name)) is not None:
            price[(name, kind)] = decimal_to_nanos(plan.prices[plan.price_key(kind or None)])  # type: ignore[index]
    split: dict[tuple[str, str, int], int] = {}  # (customer, kind, bucket) cut by its price: tasks above it
    cut: dict[tuple[str, str, int], int] = {}  # (customer, kind, bucket) → the price that cuts it: tasks on both sides
    for (name, kind), p in price.items():
        b = int(month_figures.bucket_of(np.array([p]), edges)[0])
        if p < month_figures.bucket_bounds(b, edges)[1] - 1:
            cut[(name, kind, b)] = p
    wanted = {key for key in zip(done["customer"].tolist(), done["task_type"].tolist(), done["bucket"].tolist(), strict=True) if key in cut}
    if wanted:
        ranges = sorted({(cut[key] + 1, month_figures.bucket_bounds(key[2], edges)[1]) for key in wanted})
        above = open_month.tasks_above(session, tenant_id, period, ranges, sorted({key[0] for key in wanted}))
        for name, kind, cost in zip(above["customer"].tolist(), above["task_type"].tolist(), above["cost"].tolist(), strict=True):
            key = (name, kind, int(month_figures.bucket_of(np.array([cost]), edges)[0]))
            if key in cut and cost > cut[key]:
                split[key] = split.get(key, 0) + 1
    # Per row of completed tasks: its dashboard bucket, its job price (nanos; -1: none) and how
    # many of its tasks cost more than that price.
    names, types = done["customer"].to_numpy(dtype=object), done["task_type"].to_numpy(dtype=object)
    bucket, tasks = done["bucket"].to_numpy(dtype=np.int64), done["tasks"].to_numpy(dtype=np.int64)
    job = np.fromiter((price.get(key, -1) for key in zip(names.tolist(), types.tolist(), strict=True)), dtype=np.int64, count=len(done))
    low = np.concatenate([np.zeros(1, dtype=np.int64), edges])[bucket]
    high = np.concatenate([edges, np.array([2**63 - 1], dtype=np.int64)])[bucket]
    priced_rows = job >= 0
    over = np.where(priced_rows & (low > job), tasks, 0)  # all of a bucket above the price
    for i in np.flatnonzero(priced_rows & (low <= job) & (high - 1 > job)).tolist():  # a bucket the price cuts in two
        over[i] = split.get((names[i], types[i], int(bucket[i])), 0)
    where = np.array(shown, dtype=np.int64)[bucket]
    costs = done["cost_nanos"].to_numpy(dtype=np.int64)
    out = []
    for kind in kinds:
        mine = types == kind
        failed = ended[((ended["task_type"] == kind) & (ended["status"] != "completed")).to_numpy()]
        buckets, losing_buckets = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
        np.add.at(buckets, where[mine], tasks[mine])
        np.add.at(losing_buckets, where[mine], over[mine])
        out.append(TaskTypeCosts(
            task_type=kind, completed=int(tasks[mine].sum()), buckets=buckets.tolist(), losing_buckets=losing_buckets.tolist(),
            priced=int(tasks[mine & priced_rows].sum()), losing=int(over[mine].sum()),
            job_prices_micros=sorted(set((job[mine & priced_rows] // 1000).tolist())),
            cost_micros=micro_units(int(summable(costs[mine]).sum())),
            failed=int(failed["tasks"].sum()),
            failed_cost_micros=micro_units(int(summable(failed["cost_nanos"].to_numpy(dtype=np.int64)).sum())),
        ))  # fmt: skip
    return out


def _figure_failed_by_customer(rows: pd.DataFrame, top: int = 5) -> list[dict[str, Any]]:
    failed = rows[(rows["status"] != "completed") & (rows["status"] != "open")]
    if failed.empty:
        return []
    sums = failed.assign(cost_nanos=summable(failed["cost_nanos"])).groupby("customer")[["cost_nanos", "tasks"]].sum()
    out = [(micro_units(int(s)), str(c), int(n)) for c, s, n in zip(sums.index, sums["cost_nanos"], sums["tasks"], strict=True)]
    out.sort(key=lambda r: (-r[0], r[1]))
    return [{"customer": c, "tasks": n, "cost_micros": m, "cost": cost_text(m)} for m, c, n in out[:top]]


def _failed_by_customer(tasks: pd.DataFrame, top: int = 5) -> list[dict[str, Any]]:
    failed = tasks[tasks["status"] != "completed"]
    if failed.empty:
        return []
    sums = failed.assign(provider_cost_nanos=summable(failed["provider_cost_nanos"])).groupby("customer")["provider_cost_nanos"].agg(["sum", "count"])
    rows = [
        (micro_units(int(s)), str(c), int(n))
        for c, s, n in zip(sums.index, sums["sum"], sums["count"], strict=True)
    ]
    rows.sort(key=lambda r: (-r[0], r[1]))
    return [{"customer": c, "tasks": n, "cost_micros": m, "cost": cost_text(m)} for m, c, n in rows[:top]]


def _adjustments(summary: MonthSummary) -> list[dict[str, Any]]:
    return [
        {"customer": invoice.customer, "invoice": invoice.number or "", "invoice_id": invoice.id, "adjusts": line.adjusts_period,
         "description": line.description, "amount": minor_text(line.amount_minor, invoice.currency),
         "amount_minor": line.amount_minor, "currency": invoice.currency}
        for invoice in summary.invoices.invoices
        for line in invoice.lines
        if line.adjusts_period
    ]  # fmt: skip


# --- one customer's 12 months (all customers: reports.snapshots) -------------------------------------


@dataclass(frozen=True)
class SeriesPoint:
    period: str
    state: str  # ready, pending (being computed), empty (no data)
    revenue_minor: int = 0
    cost_micros: int = 0

    def margin_minor(self, currency: str) -> int:
        return to_minor(
            round_money(
                minor_decimal(self.revenue_minor, currency) - cost_decimal(self.cost_micros), currency
            ),
            currency,
        )


def window(period: Period, months: int = 12) -> list[Period]:
    out = [period]
    while len(out) < months:
        out.append(out[-1].previous())
    return out[::-1]


def customer_series(
    session: Session, tenant: Tenant, period: Period, customer: str, *, closed: set[str]
) -> list[SeriesPoint]:
    """Amount due and provider cost of one customer for the 12 months ending with `period`."""
    months = window(period)
    costs = repository.monthly_cost(session, tenant.id, months[0].first_day, period.next_first_day, customer)
    first = repository.first_day(session, tenant.id, customer)
    points = []
    for month in months:
        if first is None or month.next_first_day <= first:
            points.append(SeriesPoint(month.label, "empty"))
            continue
        invoices = month_invoices(session, tenant, month, closed=closed, customer=customer).invoices
        revenue = sum(i.total_minor for i in invoices if i.currency == tenant.currency)
        nanos, rem = costs.get(month.first_day, (0, 0))
        points.append(SeriesPoint(month.label, "ready", revenue, micro_units(nanos, rem)))
    return points


def first_day_of(session: Session, tenant_id: int) -> date | None:
    return repository.first_day(session, tenant_id, None)
