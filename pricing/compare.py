"""Comparison: the same month of usage under several plans, and quotes for a hypothetical task.

Per customer and plan (`by_customer`, columns `CUSTOMER_COLUMNS`):
  revenue          the sum of the plan's rounded invoice lines (what the customer would pay)
  provider_cost    the month's token usage cost, 6 decimals; margin = revenue − provider_cost
  margin_pct       margin / revenue as a fraction with 4 places (0.4235 is 42.35 %), None at 0
  tasks_*          tasks that ended in the month, by status
  revenue_per_completed_task   revenue / completed tasks
  break_even_job_price         the job price earning the revenue of the customer's per-token
                               plan: that revenue / completed tasks (the row's own plan when it is
                               per-token, else the billed plan or first compared per-token plan)
  target_margin_job_price      p with (p·completed − cost) / (p·completed) = target, i.e.
                               cost / (completed · (1 − target))
  failed_cost      provider cost of the tasks that failed or were cancelled
Tasks rows may stand for several tasks each (`pricing.usage.TASK_COUNT`): counted as those tasks.
Ratios that divide money (per-task prices) keep 6 decimals like per-task costs; margin_pct keeps
4. Invoice rounding happens in rating only, once per line.

`by_task_type` and `tenant` aggregate the same figures per task type (costs of the tasks frame)
and per plan over all compared customers. `by_model` gives per customer and model (and per model
for the tenant, customer None) the provider cost and tokens per completed task: from
`task_model_usage` (usage of the month's completed tasks: columns customer, task, provider,
model, token classes, provider_cost_nanos) when given, else from the daily token usage divided by
completed tasks (a fully loaded figure: usage of failed and open tasks included); column `basis`
says which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Context, Decimal

import numpy as np
import pandas as pd

from metering.core.errors import InvalidInput
from metering.core.money import (
    TOKENS_PER_MILLION,
    display_cost,
    nanos_to_decimal,
    parse_decimal,
    quantize,
    round_money,
    unrounded,
)
from metering.core.vocabulary import OUTCOMES
from pricing.plans import CustomerPlan, PerJobPlan, Plan, PlanBook
from pricing.rating import RatedMonth, rate_plan, refuse_orphans
from pricing.tiers import EXACT, ZERO, exact_amount, tier_total
from pricing.usage import TOKEN_COLUMNS, MonthUsage, prepare_month, summable, tasks_per_key

CUSTOMER_COLUMNS = (
    "customer", "plan", "billed", "currency", "revenue", "provider_cost", "margin", "margin_pct",
    "tasks_completed", "tasks_failed", "tasks_cancelled", "revenue_per_completed_task",
    "break_even_job_price", "target_margin_job_price", "failed_cost", "unpriced_events",
)  # fmt: skip
_DIVIDE = Context(prec=60, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Comparison:
    by_customer: pd.DataFrame
    by_task_type: pd.DataFrame
    by_model: pd.DataFrame
    tenant: pd.DataFrame
    rated: Mapping[str, RatedMonth]  # per plan id: the lines behind `revenue`


def _ratio(numerator: Decimal, denominator: Decimal | int, places: int) -> Decimal | None:
    return None if not denominator else quantize(_DIVIDE.divide(numerator, Decimal(denominator)), places)


def _figures(
    revenue: Decimal,
    cost: int,
    counts: Sequence[int],
    failed_cost: int,
    reference: Decimal | None,
    target: Decimal,
    currency: str,
) -> dict[str, object]:
    """The comparison figures of one customer (or tenant) under one plan. Revenue is a sum of
    rounded lines, shown with the currency's minor unit even when there are none ("0.00")."""
    revenue = round_money(revenue, currency)  # already whole minor units: sets the scale only
    provider_cost = display_cost(cost)
    margin = revenue - provider_cost
    completed = counts[0]
    return {
        "revenue": revenue,
        "provider_cost": provider_cost,
        "margin": margin,
        "margin_pct": _ratio(margin, revenue, 4),
        "tasks_completed": completed,
        "tasks_failed": counts[1],
        "tasks_cancelled": counts[2],
        "revenue_per_completed_task": _ratio(revenue, completed, 6),
        "break_even_job_price": None if reference is None else _ratio(reference, completed, 6),
        "target_margin_job_price": _ratio(nanos_to_decimal(cost), completed * (1 - target), 6),
        "failed_cost": display_cost(failed_cost),
    }


def _sums(keys: np.ndarray, values: np.ndarray, size: int) -> list[int]:
    """Exact sums by integer key in [0, size) (np.bincount would go through float64; int64 past
    2**63 - 1 would wrap around)."""
    sums = summable(pd.Series(values, dtype=np.int64)).groupby(keys).sum()
    out = [0] * size
    for key, value in zip(sums.index.tolist(), sums.tolist(), strict=True):
        out[key] = value
    return out


@dataclass
class _Tally:
    """Running totals of one plan over customers, for the tenant row."""

    customers: int = 0
    revenue: Decimal = ZERO
    reference: Decimal | None = None
    cost: int = 0
    failed_cost: int = 0
    counts: tuple[int, int, int] = (0, 0, 0)

    def add(
        self, revenue: Decimal, reference: Decimal | None, cost: int, failed: int, counts: Sequence[int]
    ) -> None:
        self.customers += 1
        self.revenue += revenue
        if reference is not None:
            self.reference = (self.reference or ZERO) + reference
        self.cost += cost
        self.failed_cost += failed
        self.counts = (self.counts[0] + counts[0], self.counts[1] + counts[1], self.counts[2] + counts[2])


def compare_plans(
    *,
    month: date,
    customers: Sequence[CustomerPlan],
    plans: PlanBook,
    token_usage: pd.DataFrame,
    tasks: pd.DataFrame,
    currency: str,
    tz: str = "UTC",
    target_margin: Decimal = Decimal("0.6"),
    only_plans: Sequence[str] | None = None,
    task_model_usage: pd.DataFrame | None = None,
    aggregates: bool = True,
) -> Comparison:
    """Rate the month under each customer's plan and `compare_with` plans (or `only_plans`).
    Not `aggregates`: `by_task_type` and `by_model` are left empty (for callers that show
    `by_customer` alone: the monthly reports)."""
    target = parse_decimal(target_margin)
    if target >= 1:
        raise InvalidInput(
            "invalid comparison", detail=[{"field": "target_margin", "message": "must be below 1"}]
        )
    usage = prepare_month(month, token_usage, tasks, tz=tz, customers=[c.id for c in customers])
    refuse_orphans(usage, [c.id for c in customers])
    lineup = {c.id: list(dict.fromkeys(only_plans or [c.plan, *c.compare_with])) for c in customers}
    billed = {c.id: c.plan for c in customers}
    unpriced = usage.unpriced_by_customer()

    rated: dict[str, RatedMonth] = {}
    for plan_id in dict.fromkeys(p for ids in lineup.values() for p in ids):
        members = sorted(c for c, ids in lineup.items() if plan_id in ids)
        rated[plan_id] = RatedMonth(
            month, tuple(members), tuple(rate_plan(usage, plans, plan_id, members, currency)), unpriced
        )
    revenue = {plan_id: r.totals() for plan_id, r in rated.items()}
    per_token = {plan_id: plans.history(plan_id)[0].type == "per_token" for plan_id in rated}

    n = len(usage.names)
    cost = _sums(usage.tokens["cust"].to_numpy(), usage.tokens["provider_cost_nanos"].to_numpy(), n)
    by_status = _sums(usage.task_customer * 3 + usage.task_status, usage.task_cost, n * 3)
    failed_cost = [by_status[3 * i + 1] + by_status[3 * i + 2] for i in range(n)]
    tasks_by_status = tasks_per_key(usage.task_customer * 3 + usage.task_status, n * 3, usage.task_count)
    counts = [tasks_by_status[3 * i : 3 * i + 3] for i in range(n)]
    code = {name: i for i, name in enumerate(usage.names)}

    rows, tenant_rows = [], []
    for plan_id, plan_revenue in revenue.items():
        plan_currency = plans.history(plan_id)[-1].currency or currency
        tally = _Tally()
        for customer, amount in plan_revenue.items():
            i = code[customer]
            if per_token[plan_id]:
                reference: Decimal | None = amount
            else:  # the billed plan if per-token, else the first compared per-token plan
                candidates = [billed[customer], *lineup[customer]]
                reference = next((revenue[p][customer] for p in candidates if per_token.get(p)
                                  and customer in revenue[p]), None)  # fmt: skip
            figures = _figures(amount, cost[i], counts[i], failed_cost[i], reference, target, plan_currency)
            rows.append({"customer": customer, "plan": plan_id, "billed": billed[customer] == plan_id,
                         "currency": plan_currency, **figures, "unpriced_events": unpriced.get(customer, 0)})  # fmt: skip
            tally.add(amount, reference, cost[i], failed_cost[i], counts[i])
        figures = _figures(
            tally.revenue, tally.cost, tally.counts, tally.failed_cost, tally.reference, target, plan_currency
        )
        tenant_rows.append(
            {"plan": plan_id, "currency": plan_currency, "customers": tally.customers, **figures}
        )

    return Comparison(
        by_customer=pd.DataFrame(rows, columns=list(CUSTOMER_COLUMNS)),
        by_task_type=_by_task_type(usage, target) if aggregates else pd.DataFrame(),
        by_model=_by_model(usage, tasks, task_model_usage, counts) if aggregates else pd.DataFrame(),
        tenant=pd.DataFrame(tenant_rows),
        rated=rated,
    )


def _by_task_type(usage: MonthUsage, target: Decimal) -> pd.DataFrame:
    slots = usage.task_type + 1  # slot 0: no task type
    size = len(usage.task_types) + 1
    key = slots * 3 + usage.task_status
    counts = tasks_per_key(key, size * 3, usage.task_count)
    costs = _sums(key, usage.task_cost, size * 3)
    rows = []
    for slot, name in enumerate([None, *usage.task_types.tolist()]):
        done, failed, cancelled = counts[3 * slot : 3 * slot + 3]
        if done + failed + cancelled:
            total, unfinished = sum(costs[3 * slot : 3 * slot + 3]), costs[3 * slot + 1] + costs[3 * slot + 2]
            rows.append({
                "task_type": name, "tasks_completed": done, "tasks_failed": failed, "tasks_cancelled": cancelled,
                "provider_cost": display_cost(total), "failed_cost": display_cost(unfinished),
                "cost_per_completed_task": _ratio(nanos_to_decimal(costs[3 * slot]), done, 6),
                "target_margin_job_price": _ratio(nanos_to_decimal(total), done * (1 - target), 6),
            })  # fmt: skip
    return pd.DataFrame(rows)


def _by_model(
    usage: MonthUsage, tasks: pd.DataFrame, task_model_usage: pd.DataFrame | None, counts: list[list[int]]
) -> pd.DataFrame:
    columns = [*TOKEN_COLUMNS, "provider_cost_nanos"]
    if task_model_usage is None:
        frame, basis = usage.tokens, "all_usage"
    elif usage.grouped:
        raise ValueError("task_model_usage names tasks: compare one row per task with it")
    else:
        done = tasks.loc[tasks["status"] == "completed", ["customer", "task"]]
        frame = task_model_usage.merge(done, on=["customer", "task"], validate="many_to_one")
        frame, basis = frame.assign(cust=usage.customers.get_indexer(frame["customer"])), "completed_tasks"
        for column in columns:
            if not pd.api.types.is_integer_dtype(frame[column]):
                raise TypeError(
                    f"task_model_usage.{column} must hold exact integers, not {frame[column].dtype}"
                )
    providers, provider_names = pd.factorize(frame["provider"], sort=True)
    models, model_names = pd.factorize(frame["model"], sort=True)
    pairs = providers * len(model_names) + models
    values = pd.DataFrame(frame[columns].to_numpy(dtype=np.int64))
    per_customer = values.groupby(
        frame["cust"].to_numpy() * (len(provider_names) * len(model_names)) + pairs
    ).sum()
    tenant = values.groupby(pairs).sum()
    completed_total = sum(c[0] for c in counts)
    rows = []
    for scope, sums in (("customer", per_customer), ("tenant", tenant)):
        for key, row in zip(sums.index.tolist(), sums.to_numpy().tolist(), strict=True):
            cust, pair = divmod(key, len(provider_names) * len(model_names))
            completed = counts[cust][0] if scope == "customer" else completed_total
            provider, model = divmod(pair, len(model_names))
            out = {"customer": usage.names[cust] if scope == "customer" else None,
                   "provider": provider_names[provider], "model": model_names[model], "basis": basis,
                   "tasks_completed": completed, "provider_cost": display_cost(row[-1]),
                   "cost_per_completed_task": _ratio(nanos_to_decimal(row[-1]), completed, 6)}  # fmt: skip
            for column, tokens in zip(TOKEN_COLUMNS, row, strict=False):
                out[f"{column}_per_completed_task"] = _ratio(Decimal(tokens), completed, 2)
            rows.append(out)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ModelTokens:
    """One model's billable tokens in a hypothetical task. `uncached_input_tokens` excludes cache
    reads and writes (an event's `input_tokens`, and `pricing.analysis.TaskUsage`'s, include them)."""

    provider: str
    model: str
    uncached_input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def by_class(self) -> dict[str, int]:
        """Tokens per billable class, in `metering.core.vocabulary.TOKEN_CLASSES` order."""
        return {"input": self.uncached_input_tokens, "output": self.output_tokens,
                "cache_read": self.cache_read_tokens, "cache_write": self.cache_write_tokens}  # fmt: skip


@dataclass(frozen=True)
class Quote:
    plan: str
    currency: str
    amount_exact: Decimal
    amount: Decimal  # rounded once, as an invoice line would be
    provider_cost: Decimal
    margin: Decimal


def quote_task(
    plans: Sequence[Plan],
    *,
    tokens: Sequence[ModelTokens],
    task_type: str | None,
    outcome: str,
    provider_cost_nanos: int,
    currency: str,
    units_before: int = 0,
) -> list[Quote]:
    """What one more task would add to a month's bill under each plan version.

    Marginal price: `units_before` is the month's usage so far in the plan's unit (completed jobs,
    or billable tokens), which places the task in the included allowance and the tiers; volume
    tiers can make the margin negative. Monthly lines (minimum, platform fee) are not per task.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}")
    if (
        not isinstance(provider_cost_nanos, int)
        or isinstance(provider_cost_nanos, bool)
        or provider_cost_nanos < 0
    ):
        raise TypeError("provider_cost_nanos must be a non-negative integer")
    for usage in tokens:
        if any(not isinstance(n, int) or n < 0 for n in usage.by_class().values()):
            raise ValueError("token counts must be non-negative integers")
    quotes = []
    for plan in plans:
        exact = _marginal(plan, tokens, task_type, outcome, provider_cost_nanos, units_before)
        plan_currency = plan.currency or currency
        cost = display_cost(provider_cost_nanos)
        amount = round_money(exact, plan_currency)
        quotes.append(
            Quote(plan.id, plan_currency, unrounded(exact, plan_currency), amount, cost, amount - cost)
        )
    return quotes


def _marginal(
    plan: Plan, tokens: Sequence[ModelTokens], task_type: str | None, outcome: str, cost: int, before: int
) -> Decimal:
    if isinstance(plan, PerJobPlan):
        if outcome != "completed":
            return plan.failed
        if plan.tiers:
            return _tier_step(plan, before, 1, 1)
        return ZERO if before < plan.included else (plan.prices or {})[plan.price_key(task_type)]
    if plan.markup is not None:
        return EXACT.multiply(nanos_to_decimal(cost), EXACT.add(Decimal(1), plan.markup))
    if plan.tiers:
        total = sum(n for t in tokens for n in t.by_class().values())
        return _tier_step(plan, before, total, TOKENS_PER_MILLION)
    allowance, amount = max(0, plan.included - before), ZERO
    for usage in sorted(tokens, key=lambda t: (t.provider, t.model)):
        _, rates = plan.rates_for(usage.provider, usage.model)
        for token_class, count in usage.by_class().items():
            free = min(allowance, count)
            allowance -= free
            amount = EXACT.add(amount, exact_amount(count - free, rates.of(token_class), TOKENS_PER_MILLION))
    return amount


def _tier_step(plan: Plan, before: int, quantity: int, unit: int) -> Decimal:
    assert plan.tiers is not None
    mode, steps = plan.tiers.mode, plan.tiers.steps
    after = tier_total(max(0, before + quantity - plan.included), mode, steps, unit)
    return EXACT.subtract(after, tier_total(max(0, before - plan.included), mode, steps, unit))
