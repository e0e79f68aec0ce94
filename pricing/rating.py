"""Rating: a month of usage under a plan becomes invoice lines, exactly.

Inputs are a month of token usage and of ended tasks (`pricing.usage`: the frame contracts),
encoded once (`prepare_month`) and rated per plan with array operations over all the tenant's
customers; Python loops run only over the resulting lines.

Lines. per_token rates: one per customer, rate card and class, quantity = tokens, unit_price =
price per 1M tokens (the description says so), amount = tokens × price / 10**6. Markup: one,
quantity = provider cost, unit_price = 1 + markup. per_job: one per `prices` key (unlisted task
types share `default`), one for failed and cancelled tasks when their price is not 0. Tiers: one
per step reached and one per flat fee. Each line is rounded once (`round_money`); a total is the
sum of rounded lines.

Versions. The version in force on a token row's day, or at a task's `ended_at` (tenant time
zone), sets unit prices (rates, model rates, markup, job prices, failed price): a change
mid-month splits lines per version. Period terms (tiers, included, minimum, platform fee) come
from the version in force on the month's last day: they are monthly quantities, and a customer
should not meet two tier tables or allowances in one month.

Included allowance: the month's first units are free: completed tasks by `ended_at` (ties by task
id); tokens by day, provider, model, then class (input, output, cache_read, cache_write). With
tiers it comes off the quantity and the tiers price the rest. Minimum: when the rounded usage
lines (platform fee excluded) sum to less, a top-up line makes up the difference.

Grouped tasks: a tasks row may stand for several tasks (`pricing.usage.TASK_COUNT`): it counts
as that many wherever tasks are counted, so the lines are those of one row per task. A per-job
allowance without tiers picks the month's first tasks one by one: it refuses grouped rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from enum import StrEnum

import numpy as np
import pandas as pd

from metering.core.errors import InvalidInput
from metering.core.money import TOKENS_PER_MILLION, nanos_to_decimal, round_money
from metering.core.vocabulary import TOKEN_CLASSES
from pricing.plans import PerJobPlan, PerTokenPlan, Plan, PlanBook, Rates
from pricing.tiers import EXACT, ZERO, exact_amount, price_tiers
from pricing.usage import (
    TOKEN_COLUMNS,
    MonthUsage,
    day_number,
    instant,
    month_bounds,
    prepare_month,
    summable,
    tasks_per_key,
)

_CLASS_LABELS = ("Input", "Output", "Cache read", "Cache write")


class LineKind(StrEnum):
    TOKENS = "tokens"
    MARKUP = "markup"
    JOBS = "jobs"
    JOBS_FAILED = "jobs_failed"
    TIER = "tier"
    TIER_FLAT = "tier_flat"
    PLATFORM_FEE = "platform_fee"
    MINIMUM = "minimum"


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    customer: str
    plan: str
    version: date | None  # effective_from of the plan version whose prices apply
    kind: LineKind
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount_exact: Decimal
    amount: Decimal  # round_money(amount_exact): what the customer pays
    currency: str


@dataclass(frozen=True)
class RatedMonth:
    month: date
    customers: tuple[str, ...]
    lines: tuple[InvoiceLine, ...]
    unpriced_events: Mapping[str, int]  # usage events metering could not price, per customer

    def totals(self) -> dict[str, Decimal]:
        """Per customer: the sum of its rounded lines (0 for a customer without lines)."""
        totals = dict.fromkeys(self.customers, ZERO)
        for line in self.lines:
            totals[line.customer] += line.amount
        return totals

    def to_frame(self) -> pd.DataFrame:
        columns = list(InvoiceLine.__dataclass_fields__)
        return pd.DataFrame([[getattr(line, c) for c in columns] for line in self.lines], columns=columns)


@dataclass
class _Lines:
    """The lines of one plan's customers, rounded as they are made; `v` indexes plan versions."""

    plan_id: str
    history: tuple[Plan, ...]
    currency: str
    names: list[str]
    month: tuple[date, date]
    by_customer: dict[int, list[InvoiceLine]] = field(default_factory=dict)

    def add(
        self, cust: int, kind: LineKind, text: str, qty: Decimal, price: Decimal, exact: Decimal, v: int
    ) -> None:
        version, (first, last) = self.history[v], self.month
        following = self.history[v + 1].effective_from if v + 1 < len(self.history) else None
        if version.effective_from and version.effective_from > first:  # a version change mid-month
            text += f" [prices from {version.effective_from}]"
        if following and following <= last:
            text += f" [prices until {following - timedelta(days=1)}]"
        line = InvoiceLine(
            self.names[cust], self.plan_id, version.effective_from, kind, text, qty, price, exact,
            round_money(exact, self.currency), self.currency,
        )  # fmt: skip
        self.by_customer.setdefault(cust, []).append(line)

    def token_plan(self, v: int) -> PerTokenPlan:
        assert isinstance(plan := self.history[v], PerTokenPlan)  # versions share a type
        return plan

    def job_plan(self, v: int) -> PerJobPlan:
        assert isinstance(plan := self.history[v], PerJobPlan)
        return plan

    def tiers(self, cust: int, quantity: int, end: Plan, v: int, unit: int) -> None:
        assert end.tiers is not None
        for c in price_tiers(quantity, mode := end.tiers.mode, end.tiers.steps, unit):
            self.add(cust, LineKind.TIER, c.describe(mode, unit), Decimal(c.quantity), c.price, c.amount, v)
            if c.flat:
                self.add(cust, LineKind.TIER_FLAT, f"Tier {c.step} flat fee", Decimal(1), c.flat, c.flat, v)

    def finish(self, customers: list[int], end: Plan, v: int) -> list[InvoiceLine]:
        """Append the period lines (platform fee, minimum top-up) and return all lines."""
        for cust in customers:
            usage_total = sum((line.amount for line in self.by_customer.get(cust, [])), ZERO)
            if fee := end.platform_fee:
                self.add(cust, LineKind.PLATFORM_FEE, "Platform fee (monthly)", Decimal(1), fee, fee, v)
            if end.minimum > usage_total:
                top_up = EXACT.subtract(end.minimum, usage_total)
                text = f"Minimum monthly charge {end.minimum}: top-up over usage of {usage_total}"
                self.add(cust, LineKind.MINIMUM, text, Decimal(1), top_up, top_up, v)
        return [line for cust in customers for line in self.by_customer.get(cust, [])]


def _versions(history: Sequence[Plan], starts: list[int], points: np.ndarray) -> np.ndarray:
    """Index of the version in force at each point (days or instants, as int64)."""
    found = np.searchsorted(np.asarray(starts, dtype=np.int64), points, side="right") - 1
    if len(found) and found.min() < 0:
        raise InvalidInput(f"plan {history[0].id!r} is not in force for all usage of the month")
    return found


def rate_plan(
    usage: MonthUsage, plans: PlanBook, plan_id: str, customers: Sequence[str], currency: str
) -> list[InvoiceLine]:
    """Invoice lines of `customers` (all of them on `plan_id`) for the month of `usage`."""
    history = plans.history(plan_id)
    first, last = month_bounds(usage.month)
    end = plans.at(plan_id, last)
    codes = usage.customers.get_indexer(list(customers))
    if (codes < 0).any():
        raise ValueError("customers must be part of the prepared usage")
    on_plan = np.zeros(len(usage.names), dtype=bool)
    on_plan[codes] = True
    lines = _Lines(plan_id, history, end.currency or currency, usage.names, (first, last))
    if isinstance(end, PerTokenPlan):
        _rate_tokens(lines, usage, on_plan, end, history.index(end))
    else:
        _rate_jobs(lines, usage, on_plan, end, history.index(end))
    return lines.finish(sorted(codes.tolist()), end, history.index(end))


def _rate_tokens(
    lines: _Lines, usage: MonthUsage, on_plan: np.ndarray, end: PerTokenPlan, v_end: int
) -> None:
    tok = usage.tokens[on_plan[usage.tokens["cust"].to_numpy()]]
    cust, starts = tok["cust"].to_numpy(), [day_number(p.effective_from) for p in lines.history]
    v = _versions(lines.history, starts, tok["day"].to_numpy())
    if end.tiers:
        totals = tok.groupby("cust")[list(TOKEN_COLUMNS)].sum().sum(axis=1)
        for c, total in zip(totals.index.tolist(), totals.tolist(), strict=True):
            lines.tiers(c, max(0, total - end.included), end, v_end, TOKENS_PER_MILLION)
    elif end.markup is not None:
        n_v = len(lines.history)
        costs = tok[["provider_cost_nanos", "unpriced_events"]].assign(provider_cost_nanos=summable(tok["provider_cost_nanos"]))
        sums = costs.groupby(cust * n_v + v).sum()
        for key, (cost, unpriced) in zip(sums.index.tolist(), sums.to_numpy().tolist(), strict=True):
            c, vv = divmod(key, n_v)
            factor = EXACT.add(Decimal(1), lines.token_plan(vv).markup or ZERO)
            provider_cost = nanos_to_decimal(cost)
            text = f"Provider cost × {factor} (cost-plus)"
            text += (
                f"; {unpriced:,} usage events without a provider price are not included" if unpriced else ""
            )
            amount = EXACT.multiply(provider_cost, factor)
            lines.add(c, LineKind.MARKUP, text, provider_cost, factor, amount, vv)
    else:
        _rate_cards(lines, tok, v, end.included)



def _rate_cards(lines: _Lines, tok: pd.DataFrame, v: np.ndarray, included: int) -> None:
    """per_token rates: lines per customer, rate card and class, after the included allowance."""
    cust = tok["cust"].to_numpy()
    providers, provider_names = pd.factorize(tok["provider"], sort=True)
    models, model_names = pd.factorize(tok["model"], sort=True)
    n_pm = len(provider_names) * len(model_names)
    combos, combo_of_row = np.unique(v * n_pm + providers * len(model_names) + models, return_inverse=True)
    card_ids: dict[tuple[int, str | None], int] = {}
    cards: list[tuple[int, str | None, Rates]] = []
    card_of_combo = []
    for combo in combos.tolist():  # a few (version, provider, model) combinations
        vv, (provider, model) = combo // n_pm, divmod(combo % n_pm, len(model_names))
        label, rates = lines.token_plan(vv).rates_for(provider_names[provider], model_names[model])
        if (vv, label) not in card_ids:
            card_ids[(vv, label)] = len(cards)
            cards.append((vv, label, rates))
        card_of_combo.append(card_ids[(vv, label)])
    card = np.asarray(card_of_combo, dtype=np.int64)[combo_of_row]

    matrix = tok[list(TOKEN_COLUMNS)].to_numpy(dtype=np.int64)
    free = np.zeros_like(matrix)
    if included:  # consumed in usage order: by day, provider, model, then class
        by_usage = tok.assign(_pos=np.arange(len(tok))).sort_values(["cust", "day", "provider", "model"])
        order = by_usage["_pos"].to_numpy()
        flat = matrix[order].ravel()
        owner = np.repeat(cust[order], len(TOKEN_CLASSES))
        before = np.cumsum(flat) - flat
        before -= before[np.searchsorted(owner, owner, side="left")]
        free[order] = np.clip(included - before, 0, flat).reshape(-1, len(TOKEN_CLASSES))
    sums = pd.DataFrame(np.hstack([matrix, free])).groupby(cust * len(cards) + card).sum()
    for key, row in zip(sums.index.tolist(), sums.to_numpy().tolist(), strict=True):
        c, (vv, label, rates) = key // len(cards), cards[key % len(cards)]
        for cls, (tokens, free_tokens) in enumerate(zip(row[:4], row[4:], strict=True)):
            if tokens:
                rate, charged = rates.of(TOKEN_CLASSES[cls]), tokens - free_tokens
                text = f"{_CLASS_LABELS[cls]} tokens{f' at {label} rates' if label else ''}"
                text += ", price per 1M tokens" + (
                    f"; {free_tokens:,} included tokens free" if free_tokens else ""
                )
                amount = exact_amount(charged, rate, TOKENS_PER_MILLION)
                lines.add(c, LineKind.TOKENS, text, Decimal(charged), rate, amount, vv)


def _ranks(cust: np.ndarray, ended: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each task's position among its customer's tasks by end time, ties broken by task id."""
    if len(cust) == 0:
        return np.zeros(0, dtype=np.int64)
    offset = ended - ended.min()
    span = int(offset.max()) + 1
    if (int(cust.max()) + 1) * span < 2**62:  # one int64 key sorts 4× faster than lexsort
        order = np.argsort(cust * span + offset)
    else:
        order = np.lexsort((ended, cust))
    c, t = cust[order], ended[order]
    if (same := (c[1:] == c[:-1]) & (t[1:] == t[:-1])).any():  # sort only tied rows by id
        tied = np.zeros(len(order), dtype=bool)
        tied[1:] |= same
        tied[:-1] |= same
        by_id = np.zeros(len(order), dtype=np.int64)
        by_id[tied] = pd.factorize(ids[order][tied], sort=True)[0]
        order = order[np.lexsort((by_id, t, c))]
        c = cust[order]
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order)) - np.searchsorted(c, c, side="left")
    return ranks


def _rate_jobs(lines: _Lines, usage: MonthUsage, on_plan: np.ndarray, end: PerJobPlan, v_end: int) -> None:
    keep = on_plan[usage.task_customer]
    everyone = bool(keep.all())

    def pick(values: np.ndarray) -> np.ndarray:
        return values if everyone else values[keep]

    cust, status, ended = pick(usage.task_customer), pick(usage.task_status), pick(usage.task_ended)
    weight = None if usage.task_count is None else pick(usage.task_count)  # tasks per row
    history, n_cust, n_v = lines.history, len(usage.names), len(lines.history)
    v = np.zeros(len(cust), dtype=np.int64)
    if n_v > 1 or history[0].effective_from:
        v = _versions(history, [instant(p.effective_from, usage.tz) for p in history], ended)
    completed = status == 0
    done_weight = None if weight is None else weight[completed]
    if end.tiers:  # the allowance comes off the count; which tasks were free does not matter
        counts = tasks_per_key(cust[completed], n_cust, done_weight)
        for c in np.flatnonzero(counts).tolist():
            lines.tiers(c, max(0, counts[c] - end.included), end, v_end, 1)
    else:
        free = np.zeros(len(cust), dtype=bool)
        if end.included:  # the month's first completed tasks are free
            if weight is not None and (weight != 1).any():
                raise ValueError(f"plan {lines.plan_id!r} gives its first completed tasks free: rate one row per task")
            done = np.flatnonzero(completed)
            free[done] = _ranks(cust[done], ended[done], pick(usage.task_id)[done]) < end.included
        _rate_job_prices(
            lines, usage, cust[completed], v[completed], pick(usage.task_type)[completed], free[completed], done_weight
        )
    failed = tasks_per_key((cust * n_v + v)[~completed], n_cust * n_v, None if weight is None else weight[~completed])
    for key in np.flatnonzero(failed).tolist():
        (c, vv), n = divmod(key, n_v), failed[key]
        if price := lines.job_plan(vv).failed:
            text, amount = "Failed or cancelled tasks", exact_amount(n, price)
            lines.add(c, LineKind.JOBS_FAILED, text, Decimal(n), price, amount, vv)


def _rate_job_prices(
    lines: _Lines, usage: MonthUsage, cust: np.ndarray, v: np.ndarray, task_type: np.ndarray, free: np.ndarray,
    weight: np.ndarray | None,
) -> None:  # fmt: skip
    """per_job prices: a line per customer and `prices` key over completed tasks (`weight`: the
    tasks each row stands for, None: one; free rows are single tasks)."""
    key_ids: dict[tuple[int, str], int] = {}  # (version, prices key), in order of appearance
    table = np.empty((len(lines.history), len(usage.task_types) + 1), dtype=np.int64)
    for vv in range(len(lines.history)):
        for slot, name in enumerate([None, *usage.task_types.tolist()]):  # slot 0: no task type
            table[vv, slot] = key_ids.setdefault((vv, lines.job_plan(vv).price_key(name)), len(key_ids))
    keys = list(key_ids)
    flat_key = cust * len(keys) + table[v, task_type + 1]
    counts = tasks_per_key(flat_key, len(usage.names) * len(keys), weight)
    frees = np.bincount(flat_key[free], minlength=len(usage.names) * len(keys)).tolist()
    for key in np.flatnonzero(counts).tolist():
        (c, k), n_free = divmod(key, len(keys)), frees[key]
        vv, name = keys[k]
        price, charged = (lines.job_plan(vv).prices or {})[name], counts[key] - n_free
        text = "Completed tasks (default price)" if name == "default" else f"Completed {name} tasks"
        text += f"; {n_free:,} included tasks free" if n_free else ""
        lines.add(c, LineKind.JOBS, text, Decimal(charged), price, exact_amount(charged, price), vv)


def refuse_orphans(usage: MonthUsage, customers: Iterable[str]) -> None:
    """Usage of a customer without a plan is an error: billing never drops usage silently."""
    if orphans := sorted(set(usage.names) - set(customers)):
        detail = [{"field": "customer", "message": customer} for customer in orphans]
        raise InvalidInput("usage of customers without a plan", detail=detail)


def rate_month(
    *,
    month: date,
    customers: Mapping[str, str],
    plans: PlanBook,
    token_usage: pd.DataFrame,
    tasks: pd.DataFrame,
    currency: str,
    tz: str = "UTC",
) -> RatedMonth:
    """Invoice lines of every customer (customer id → plan id) for a month of usage."""
    usage = prepare_month(month, token_usage, tasks, tz=tz, customers=customers)
    refuse_orphans(usage, customers)
    by_plan: dict[str, list[str]] = {}
    for customer, plan_id in customers.items():
        by_plan.setdefault(plan_id, []).append(customer)
    lines = [line for p in sorted(by_plan) for line in rate_plan(usage, plans, p, by_plan[p], currency)]
    lines.sort(key=lambda line: line.customer)  # stable: each customer's lines keep their order
    return RatedMonth(month, tuple(sorted(customers)), tuple(lines), usage.unpriced_by_customer())
