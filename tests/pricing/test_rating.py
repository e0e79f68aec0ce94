"""Rating: hand-worked invoices for each charge model, and a randomized check against a slow,
straightforward Decimal reference implementation."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.core.errors import InvalidInput
from metering.core.money import round_money
from metering.core.vocabulary import TOKEN_CLASSES
from pricing.config import validate_config
from pricing.plans import PerJobPlan, PerTokenPlan, Plan, PlanBook
from pricing.rating import LineKind, RatedMonth, rate_month
from pricing.usage import TASK_COLUMNS, TOKEN_USAGE_COLUMNS

OCTOBER = date(2026, 10, 1)
RATES = {"input": "6.00", "output": "30.00", "cache_read": "0.60", "cache_write": "7.50"}


def token_row(**fields: Any) -> dict[str, Any]:
    """One day of one model's usage by a customer (billable token classes)."""
    row = {"customer": "acme", "day": "2026-10-01", "provider": "openai", "model": "gpt-4o", "input_tokens": 0,
           "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0, "provider_cost_nanos": 0,
           "unpriced_events": 0}  # fmt: skip
    return row | fields


def task_row(**fields: Any) -> dict[str, Any]:
    row = {"customer": "acme", "task": "t1", "task_type": None, "status": "completed",
           "ended_at": "2026-10-10T12:00:00Z", "provider_cost_nanos": 0}  # fmt: skip
    return row | fields


def token_frame(*rows: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(TOKEN_USAGE_COLUMNS))
    frame["day"] = pd.to_datetime(frame["day"])
    ints = [c for c, kind in TOKEN_USAGE_COLUMNS.items() if kind == "int"]
    return frame.astype(dict.fromkeys(ints, "int64"))


def task_frame(*rows: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(TASK_COLUMNS))
    frame["ended_at"] = pd.to_datetime(frame["ended_at"], utc=True)
    return frame.astype({"provider_cost_nanos": "int64"})


def book(*plans: dict[str, Any]) -> PlanBook:
    return validate_config({"plans": list(plans)}).plans


def rate(plans: PlanBook, customers: dict[str, str], tokens: pd.DataFrame | None = None,
         tasks: pd.DataFrame | None = None, tz: str = "UTC", currency: str = "USD") -> RatedMonth:  # fmt: skip
    return rate_month(
        month=OCTOBER, customers=customers, plans=plans, token_usage=token_frame() if tokens is None else tokens,
        tasks=task_frame() if tasks is None else tasks, currency=currency, tz=tz,
    )  # fmt: skip


def summary(rated: RatedMonth) -> list[tuple[str, str, Decimal, Decimal, Decimal]]:
    return [
        (str(line.kind), line.description, line.quantity, line.unit_price, line.amount)
        for line in rated.lines
    ]


class TestPerTokenRates:
    def test_one_line_per_class_rounded_once(self) -> None:
        tokens = token_frame(
            token_row(input_tokens=1_000_000, output_tokens=98_765, cache_read_tokens=1_234_567),
            token_row(day="2026-10-02", input_tokens=234_567, model="gpt-4o-mini"),
        )
        rated = rate(book({"id": "tokens", "type": "per_token", "rates": RATES}), {"acme": "tokens"}, tokens)
        assert summary(rated) == [
            # 1,234,567 × 6.00 / 1M = 7.407402 → 7.41
            (
                "tokens",
                "Input tokens, price per 1M tokens",
                Decimal(1_234_567),
                Decimal("6.00"),
                Decimal("7.41"),
            ),
            # 98,765 × 30.00 / 1M = 2.96295 → 2.96
            (
                "tokens",
                "Output tokens, price per 1M tokens",
                Decimal(98_765),
                Decimal("30.00"),
                Decimal("2.96"),
            ),
            # 1,234,567 × 0.60 / 1M = 0.7407402 → 0.74
            (
                "tokens",
                "Cache read tokens, price per 1M tokens",
                Decimal(1_234_567),
                Decimal("0.60"),
                Decimal("0.74"),
            ),
        ]
        assert rated.lines[0].amount_exact == Decimal("7.40740200")
        assert rated.totals() == {"acme": Decimal("11.11")}

    def test_half_a_cent_rounds_up(self) -> None:
        tokens = token_frame(token_row(output_tokens=500))  # 500 × 10 / 1M = 0.005
        rated = rate(
            book({"id": "t", "type": "per_token", "rates": RATES | {"output": "10"}}), {"acme": "t"}, tokens
        )
        assert [(line.amount_exact, line.amount) for line in rated.lines] == [
            (Decimal("0.005"), Decimal("0.01"))
        ]

    def test_model_rates_override_base_rates_for_matching_usage(self) -> None:
        plan = {
            "id": "tokens", "type": "per_token", "rates": RATES,
            "model_rates": [
                {"provider": "openai", "model": "gpt-4o", "input": "2.50", "output": "10", "cache_read": "1.25", "cache_write": "0"},
                {"provider": "anthropic", "input": "3", "output": "15", "cache_read": "0.30", "cache_write": "3.75"},
            ],
        }  # fmt: skip
        tokens = token_frame(
            token_row(input_tokens=2_000_000),
            token_row(provider="anthropic", model="claude-sonnet-4", input_tokens=1_000_000),
            token_row(provider="anthropic", model="claude-haiku", input_tokens=1_000_000),
            token_row(provider="google", model="gemini", input_tokens=1_000_000),
        )
        rated = rate(book(plan), {"acme": "tokens"}, tokens)
        assert summary(rated) == [  # rate cards in the order of their first provider and model
            ("tokens", "Input tokens at anthropic models rates, price per 1M tokens", Decimal(2_000_000), Decimal(3), Decimal("6.00")),
            ("tokens", "Input tokens, price per 1M tokens", Decimal(1_000_000), Decimal("6.00"), Decimal("6.00")),
            ("tokens", "Input tokens at openai/gpt-4o rates, price per 1M tokens", Decimal(2_000_000), Decimal("2.50"), Decimal("5.00")),
        ]  # fmt: skip

    def test_included_tokens_are_the_months_first_tokens(self) -> None:
        plan = {"id": "t", "type": "per_token", "rates": RATES, "included": 1_500_000}
        tokens = token_frame(
            token_row(day="2026-10-02", input_tokens=1_000_000),  # day 2: 400,000 left free
            token_row(day="2026-10-01", input_tokens=400_000, output_tokens=700_000),  # day 1: all free
        )
        rated = rate(book(plan), {"acme": "t"}, tokens)
        assert summary(rated) == [
            ("tokens", "Input tokens, price per 1M tokens; 800,000 included tokens free", Decimal(600_000), Decimal("6.00"), Decimal("3.60")),
            ("tokens", "Output tokens, price per 1M tokens; 700,000 included tokens free", Decimal(0), Decimal("30.00"), Decimal("0.00")),
        ]  # fmt: skip

    def test_markup_against_class_rates_on_the_same_usage(self) -> None:
        plans = book(
            {"id": "rates", "type": "per_token", "rates": RATES},
            {"id": "markup", "type": "per_token", "markup": "0.40"},
        )
        usage = token_frame(
            token_row(customer="a", input_tokens=1_000_000, output_tokens=100_000, provider_cost_nanos=3_500_000_000),
            token_row(customer="b", input_tokens=1_000_000, output_tokens=100_000, provider_cost_nanos=3_500_000_000,
                      unpriced_events=2),
        )  # fmt: skip
        rated = rate(plans, {"a": "rates", "b": "markup"}, usage)
        assert rated.totals() == {"a": Decimal("9.00"), "b": Decimal("4.90")}  # 6 + 3; 3.50 × 1.40
        [markup] = [line for line in rated.lines if line.customer == "b"]
        assert (markup.kind, markup.quantity, markup.unit_price) == (
            LineKind.MARKUP,
            Decimal("3.5"),
            Decimal("1.40"),
        )
        assert "2 usage events without a provider price" in markup.description
        assert rated.unpriced_events == {"b": 2}

    def test_markup_keeps_nano_precision_until_the_line_is_rounded(self) -> None:
        usage = token_frame(token_row(provider_cost_nanos=3_571_428))  # 0.003571428 × 1.40 = 0.0049999992
        rated = rate(book({"id": "m", "type": "per_token", "markup": "0.40"}), {"acme": "m"}, usage)
        assert [(line.amount_exact, line.amount) for line in rated.lines] == [
            (Decimal("0.00499999920"), Decimal("0.00"))
        ]

    def test_tiers_price_millions_of_billable_tokens_of_all_classes(self) -> None:
        plan = {"id": "t", "type": "per_token", "included": 500_000, "tiers": {"mode": "graduated", "steps": [
            {"up_to": 1, "price": "10"}, {"up_to": None, "price": "5", "flat": "2"}]}}  # fmt: skip
        usage = token_frame(
            token_row(input_tokens=1_000_000, output_tokens=750_000, cache_read_tokens=250_000)
        )
        rated = rate(book(plan), {"acme": "t"}, usage)
        # 2,000,000 tokens − 500,000 included = 1.5M: 1M × 10 + 0.5M × 5 + flat 2
        assert summary(rated) == [
            ("tier", "Tier 1 (tokens 1–1,000,000), price per 1M tokens", Decimal(1_000_000), Decimal(10), Decimal("10.00")),
            ("tier", "Tier 2 (tokens 1,000,001–∞), price per 1M tokens", Decimal(500_000), Decimal(5), Decimal("2.50")),
            ("tier_flat", "Tier 2 flat fee", Decimal(1), Decimal(2), Decimal("2.00")),
        ]  # fmt: skip


class TestPerJob:
    PLAN = {
        "id": "jobs",
        "type": "per_job",
        "prices": {"default": "0.50", "support_ticket": "1.20"},
        "failed": "0.10",
    }

    def test_prices_by_task_type_with_default_and_failed(self) -> None:
        tasks = task_frame(
            task_row(task="1", task_type="support_ticket"),
            task_row(task="2", task_type="support_ticket"),
            task_row(task="3", task_type="code_review"),
            task_row(task="4", task_type=None),
            task_row(task="5", task_type="support_ticket", status="failed"),
            task_row(task="6", status="cancelled"),
        )
        rated = rate(book(self.PLAN), {"acme": "jobs"}, tasks=tasks)
        assert summary(rated) == [
            ("jobs", "Completed tasks (default price)", Decimal(2), Decimal("0.50"), Decimal("1.00")),
            ("jobs", "Completed support_ticket tasks", Decimal(2), Decimal("1.20"), Decimal("2.40")),
            ("jobs_failed", "Failed or cancelled tasks", Decimal(2), Decimal("0.10"), Decimal("0.20")),
        ]
        assert rated.totals() == {"acme": Decimal("3.60")}

    def test_failed_tasks_at_the_default_failed_price_make_no_line(self) -> None:
        tasks = task_frame(task_row(status="failed"))
        assert rate(book(self.PLAN | {"failed": "0"}), {"acme": "jobs"}, tasks=tasks).lines == ()

    def test_included_jobs_are_the_first_completed_ties_by_task_id(self) -> None:
        tasks = task_frame(
            task_row(task="c", task_type="support_ticket", ended_at="2026-10-02T00:00:00Z"),
            task_row(task="b", task_type="other", ended_at="2026-10-02T00:00:00Z"),
            task_row(task="a", task_type="support_ticket", ended_at="2026-10-03T00:00:00Z"),
            task_row(task="z", status="failed", ended_at="2026-10-01T00:00:00Z"),
        )
        rated = rate(book(self.PLAN | {"included": 1}), {"acme": "jobs"}, tasks=tasks)
        assert summary(rated) == [  # "b" ties with "c" and sorts first: it is the free one
            ("jobs", "Completed tasks (default price); 1 included tasks free", Decimal(0), Decimal("0.50"), Decimal("0.00")),
            ("jobs", "Completed support_ticket tasks", Decimal(2), Decimal("1.20"), Decimal("2.40")),
            ("jobs_failed", "Failed or cancelled tasks", Decimal(1), Decimal("0.10"), Decimal("0.10")),
        ]  # fmt: skip

    def test_graduated_tiers_on_completed_jobs(self) -> None:
        plan = {"id": "tiered", "type": "per_job", "included": 100, "tiers": {"mode": "graduated", "steps": [
            {"up_to": 1000, "price": "1.00"}, {"up_to": 5000, "price": "0.80"}, {"up_to": None, "price": "0.60"}]}}  # fmt: skip
        tasks = task_frame(*(task_row(task=str(i)) for i in range(1300)), task_row(task="f", status="failed"))
        rated = rate(book(plan), {"acme": "tiered"}, tasks=tasks)
        # 1,300 − 100 included = 1,200: 1,000 × 1.00 + 200 × 0.80
        assert summary(rated) == [
            (
                "tier",
                "Tier 1 (jobs 1–1,000), price per job",
                Decimal(1000),
                Decimal("1.00"),
                Decimal("1000.00"),
            ),
            (
                "tier",
                "Tier 2 (jobs 1,001–5,000), price per job",
                Decimal(200),
                Decimal("0.80"),
                Decimal("160.00"),
            ),
        ]

    def test_volume_tiers_exactly_at_a_boundary(self) -> None:
        plan = {"id": "v", "type": "per_job", "tiers": {"mode": "volume", "steps": [
            {"up_to": 5, "price": "5"}, {"up_to": 10, "price": "4", "flat": "1.5"}, {"up_to": None, "price": "3"}]}}  # fmt: skip
        tasks = task_frame(*(task_row(task=str(i)) for i in range(10)))
        assert summary(rate(book(plan), {"acme": "v"}, tasks=tasks)) == [
            ("tier", "Volume tier 2 (up to 10 jobs) for all 10, price per job", Decimal(10), Decimal(4), Decimal("40.00")),
            ("tier_flat", "Tier 2 flat fee", Decimal(1), Decimal("1.5"), Decimal("1.50")),
        ]  # fmt: skip


class TestMonthlyLines:
    def test_minimum_tops_up_and_platform_fee_is_a_line_of_its_own(self) -> None:
        plans = book(
            {"id": "m", "type": "per_token", "markup": "0.40", "minimum": "100.00", "platform_fee": "20"}
        )
        usage = token_frame(
            token_row(customer="small", provider_cost_nanos=10_003_000_000)
        )  # 14.0042 → 14.00
        rated = rate(plans, {"small": "m", "idle": "m"}, usage)
        assert [(line.customer, str(line.kind), line.amount) for line in rated.lines] == [
            ("idle", "platform_fee", Decimal("20.00")),
            ("idle", "minimum", Decimal("100.00")),
            ("small", "markup", Decimal("14.00")),
            ("small", "platform_fee", Decimal("20.00")),
            ("small", "minimum", Decimal("86.00")),  # the platform fee does not count towards the minimum
        ]
        assert rated.totals() == {"idle": Decimal("120.00"), "small": Decimal("120.00")}

    def test_usage_above_the_minimum_needs_no_top_up(self) -> None:
        plans = book({"id": "j", "type": "per_job", "prices": {"default": "60"}, "minimum": "100"})
        tasks = task_frame(task_row(task="1"), task_row(task="2"))
        assert [line.kind for line in rate(plans, {"acme": "j"}, tasks=tasks).lines] == [LineKind.JOBS]

    def test_a_plan_currency_rounds_its_lines(self) -> None:
        plans = book({"id": "yen", "type": "per_job", "currency": "JPY", "prices": {"default": "12.5"}})
        rated = rate(plans, {"acme": "yen"}, tasks=task_frame(task_row()))
        assert [(line.amount, line.currency) for line in rated.lines] == [(Decimal("13"), "JPY")]


class TestVersionsMidMonth:
    V1 = {"id": "t", "type": "per_token", "rates": RATES, "platform_fee": "10", "included": 0}
    V2 = {"id": "t", "type": "per_token", "rates": RATES | {"input": "3.00"}, "platform_fee": "25",
          "effective_from": "2026-10-15"}  # fmt: skip

    def test_unit_prices_per_version_period_terms_from_the_month_end(self) -> None:
        usage = token_frame(
            token_row(day="2026-10-14", input_tokens=1_000_000),
            token_row(day="2026-10-15", input_tokens=1_000_000),
        )
        rated = rate(book(self.V1, self.V2), {"acme": "t"}, usage)
        assert summary(rated) == [
            ("tokens", "Input tokens, price per 1M tokens [prices until 2026-10-14]", Decimal(1_000_000), Decimal("6.00"), Decimal("6.00")),
            ("tokens", "Input tokens, price per 1M tokens [prices from 2026-10-15]", Decimal(1_000_000), Decimal("3.00"), Decimal("3.00")),
            ("platform_fee", "Platform fee (monthly) [prices from 2026-10-15]", Decimal(1), Decimal(25), Decimal("25.00")),
        ]  # fmt: skip
        assert [line.version for line in rated.lines] == [None, date(2026, 10, 15), date(2026, 10, 15)]

    def test_a_version_from_an_earlier_month_does_not_split(self) -> None:
        v2 = self.V2 | {"effective_from": "2026-09-01"}
        rated = rate(book(self.V1, v2), {"acme": "t"}, token_frame(token_row(input_tokens=1_000_000)))
        assert [line.description for line in rated.lines] == [
            "Input tokens, price per 1M tokens",
            "Platform fee (monthly)",
        ]

    def test_jobs_follow_ended_at_in_the_tenant_time_zone(self) -> None:
        plans = book(
            {"id": "j", "type": "per_job", "prices": {"default": "1"}},
            {"id": "j", "type": "per_job", "prices": {"default": "2"}, "effective_from": "2026-10-15"},
        )
        tasks = task_frame(
            task_row(task="1", ended_at="2026-10-14T21:30:00Z"),  # 23:30 in Berlin: old price
            task_row(task="2", ended_at="2026-10-14T22:30:00Z"),  # 00:30 on the 15th in Berlin: new price
        )
        rated = rate(plans, {"acme": "j"}, tasks=tasks, tz="Europe/Berlin")
        assert [(line.unit_price, line.version) for line in rated.lines] == [
            (1, None),
            (2, date(2026, 10, 15)),
        ]
        utc = rate(plans, {"acme": "j"}, tasks=tasks)
        assert [line.unit_price for line in utc.lines] == [Decimal(1)]
        assert utc.lines[0].quantity == 2

    def test_usage_before_the_first_version_is_refused(self) -> None:
        plans = book(self.V2)
        with pytest.raises(InvalidInput, match="not in force"):
            rate(plans, {"acme": "t"}, token_frame(token_row(day="2026-10-02", input_tokens=1)))


class TestInputContracts:
    PLANS = book({"id": "j", "type": "per_job", "prices": {"default": "1"}})

    def test_float_amount_columns_are_refused(self) -> None:
        tasks = task_frame(task_row()).astype({"provider_cost_nanos": "float64"})
        with pytest.raises(TypeError, match="exact integers"):
            rate(self.PLANS, {"acme": "j"}, tasks=tasks)
        usage = token_frame(token_row()).astype({"input_tokens": "float64"})
        with pytest.raises(TypeError, match="exact integers"):
            rate(self.PLANS, {"acme": "j"}, usage)

    @pytest.mark.parametrize(("tokens", "tasks", "error"), [
        (token_frame(token_row(day="2026-11-01")), task_frame(), "outside 2026-10"),
        (token_frame(), task_frame(task_row(ended_at="2026-09-30T23:59:59Z")), "outside 2026-10"),
        (token_frame(), task_frame(task_row(status="open")), "tasks.status"),
        (token_frame(token_row(input_tokens=-1)), task_frame(), "must not be negative"),
        (token_frame().drop(columns="unpriced_events"), task_frame(), "lacks columns"),
    ])  # fmt: skip
    def test_malformed_frames(self, tokens: pd.DataFrame, tasks: pd.DataFrame, error: str) -> None:
        with pytest.raises(ValueError, match=error):
            rate(self.PLANS, {"acme": "j"}, tokens, tasks)

    def test_usage_of_a_customer_without_a_plan_is_never_dropped(self) -> None:
        with pytest.raises(InvalidInput) as caught:
            rate(self.PLANS, {"acme": "j"}, tasks=task_frame(task_row(customer="stranger")))
        assert caught.value.detail == [{"field": "customer", "message": "stranger"}]

    def test_the_month_is_given_by_its_first_day(self) -> None:
        with pytest.raises(ValueError, match="first day"):
            rate_month(month=date(2026, 10, 2), customers={}, plans=self.PLANS, token_usage=token_frame(),
                       tasks=task_frame(), currency="USD")  # fmt: skip


# --- A slow, straightforward reference: one Python loop per row and per unit of allowance. ---


def reference_lines(plans: PlanBook, customers: dict[str, str], tokens: list[dict[str, Any]],
                    tasks: list[dict[str, Any]], tz: str) -> list[tuple[str, str, Decimal]]:  # fmt: skip
    """(customer, kind, exact amount) of every line, computed row by row in Decimal."""
    zone, last_day = ZoneInfo(tz), date(2026, 10, 31)
    out: list[tuple[str, str, Decimal]] = []
    for customer, plan_id in sorted(customers.items()):
        end = plans.at(plan_id, last_day)
        lines: list[tuple[str, Decimal]] = []
        mine = sorted(
            (r for r in tokens if r["customer"] == customer),
            key=lambda r: (r["day"], r["provider"], r["model"]),
        )
        done = sorted(
            (t for t in tasks if t["customer"] == customer and t["status"] == "completed"),
            key=lambda t: (t["ended_at"], t["task"]),
        )
        unfinished = [t for t in tasks if t["customer"] == customer and t["status"] != "completed"]

        def local_day(task: dict[str, Any]) -> date:
            return datetime.fromisoformat(task["ended_at"]).astimezone(zone).date()

        if isinstance(end, PerTokenPlan) and end.tiers:
            total = sum(r[f"{c}_tokens"] for r in mine for c in TOKEN_CLASSES)
            lines += reference_tiers(end, max(0, total - end.included), 10**6)
        elif isinstance(end, PerTokenPlan) and end.markup is not None:
            cost: dict[date | None, Decimal] = defaultdict(Decimal)
            for r in mine:
                version = plans.at(plan_id, date.fromisoformat(r["day"]))
                assert isinstance(version, PerTokenPlan) and version.markup is not None
                cost[version.effective_from] += (
                    Decimal(r["provider_cost_nanos"]) / 10**9 * (1 + version.markup)
                )
            lines += [("markup", amount) for amount in cost.values()]
        elif isinstance(end, PerTokenPlan):
            allowance = end.included
            charged: dict[tuple[date | None, str | None, str], Decimal] = defaultdict(Decimal)
            seen = set()
            for r in mine:
                version = plans.at(plan_id, date.fromisoformat(r["day"]))
                label, rates = version.rates_for(r["provider"], r["model"])  # type: ignore[union-attr]
                for c in TOKEN_CLASSES:
                    free = min(allowance, r[f"{c}_tokens"])
                    allowance -= free
                    card = (version.effective_from, label, c)
                    if r[f"{c}_tokens"]:
                        seen.add(card)
                    charged[card] += (r[f"{c}_tokens"] - free) * rates.of(c) / 10**6
            lines += [("tokens", amount) for card, amount in charged.items() if card in seen]
        elif end.tiers:
            lines += reference_tiers(end, max(0, len(done) - end.included), 1)
        else:
            by_key: dict[tuple[date | None, str], Decimal] = defaultdict(Decimal)
            for position, task in enumerate(done):
                version = plans.at(plan_id, local_day(task))
                assert isinstance(version, PerJobPlan) and version.prices is not None
                key = version.price_key(task["task_type"])
                by_key[(version.effective_from, key)] += 0 if position < end.included else version.prices[key]
            lines += [("jobs", amount) for amount in by_key.values()]
        if isinstance(end, PerJobPlan):
            failed: dict[date | None, Decimal] = defaultdict(Decimal)
            for task in unfinished:
                version = plans.at(plan_id, local_day(task))
                if version.failed:  # type: ignore[union-attr]
                    failed[version.effective_from] += version.failed  # type: ignore[union-attr]
            lines += [("jobs_failed", amount) for amount in failed.values()]
        currency = end.currency or "USD"
        usage = sum((round_money(amount, currency) for _, amount in lines), Decimal(0))
        if end.platform_fee:
            lines.append(("platform_fee", end.platform_fee))
        if end.minimum > usage:
            lines.append(("minimum", end.minimum - usage))
        out += [(customer, kind, amount) for kind, amount in lines]
    return out


def reference_tiers(plan: Plan, quantity: int, unit: int) -> list[tuple[str, Decimal]]:
    assert plan.tiers is not None
    lines, lower = [], 0
    bounds = [None if s.up_to is None else int(s.up_to * unit) for s in plan.tiers.steps]
    for step, upper in zip(plan.tiers.steps, bounds, strict=True):
        if plan.tiers.mode == "graduated":
            units = max(0, (quantity if upper is None else min(quantity, upper)) - lower)
        else:
            units = quantity if quantity > lower and (upper is None or quantity <= upper) else 0
        if units:
            lines.append(("tier", units * step.price / unit))
            if step.flat:
                lines.append(("tier_flat", step.flat))
        lower = upper or 0
    return lines


money = st.decimals(min_value=0, max_value=50, places=4).map(str)
token_counts = st.integers(min_value=0, max_value=3_000_000)
versions_from = st.sampled_from([None, "2026-09-01", "2026-10-10", "2026-10-31"])


@st.composite
def tiers(draw: st.DrawFn, fractional: bool) -> dict[str, Any]:
    bounds = sorted(draw(st.sets(st.integers(min_value=1, max_value=12), min_size=0, max_size=3)))
    ups: list[Any] = [str(Decimal(b) / 4) if fractional else b for b in bounds] + [None]
    steps = [{"up_to": up, "price": draw(money), "flat": draw(st.sampled_from(["0", "1.25"]))} for up in ups]
    return {"mode": draw(st.sampled_from(["graduated", "volume"])), "steps": steps}


@st.composite
def plan_versions(draw: st.DrawFn, plan_id: str) -> list[dict[str, Any]]:
    kind = draw(st.sampled_from(["rates", "markup", "token_tiers", "prices", "job_tiers"]))
    common = {"id": plan_id, "minimum": draw(st.sampled_from(["0", "15.005", "40"])),
              "platform_fee": draw(st.sampled_from(["0", "9.99"]))}  # fmt: skip
    starts = sorted(draw(st.sets(versions_from, min_size=1, max_size=2)), key=lambda d: d or "")
    versions = []
    for start in starts:
        version: dict[str, Any] = common | ({"effective_from": start} if start else {})
        if kind == "rates":
            rates = {c: draw(money) for c in TOKEN_CLASSES}
            cards = [
                {
                    "provider": "openai",
                    "model": draw(st.sampled_from(["gpt-4o", None])),
                    **{c: draw(money) for c in TOKEN_CLASSES},
                }
            ]
            version |= {"type": "per_token", "rates": rates, "model_rates": draw(st.sampled_from([[], cards])),
                        "included": draw(st.sampled_from([0, 700_000, 5_000_000]))}  # fmt: skip
        elif kind == "markup":
            version |= {"type": "per_token", "markup": draw(money)}
        elif kind == "token_tiers":
            version |= {
                "type": "per_token",
                "tiers": draw(tiers(True)),
                "included": draw(st.sampled_from([0, 900_000])),
            }
        elif kind == "prices":
            prices = {"default": draw(money), "support": draw(money)}
            version |= {"type": "per_job", "prices": prices, "failed": draw(st.sampled_from(["0", "0.333"])),
                        "included": draw(st.integers(min_value=0, max_value=3))}  # fmt: skip
        else:
            version |= {"type": "per_job", "tiers": draw(tiers(False)), "failed": draw(st.sampled_from(["0", "0.05"])),
                        "included": draw(st.integers(min_value=0, max_value=3))}  # fmt: skip
        versions.append(version)
    if starts[0] is not None and starts[0] > "2026-10-01":
        versions[0].pop("effective_from")  # the plan must be in force on the 1st
    return versions


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[dict[str, Any]], dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
    plan_dicts = [v for pid in ("p1", "p2") for v in draw(plan_versions(pid))]
    names = ["acme", "beta", "gamma"][: draw(st.integers(min_value=1, max_value=3))]
    customers = {name: draw(st.sampled_from(["p1", "p2"])) for name in names}
    model = st.sampled_from([("openai", "gpt-4o"), ("openai", "o3"), ("anthropic", "claude")])
    tokens = []
    for day, customer, (provider, name) in draw(
        st.sets(st.tuples(st.integers(1, 31), st.sampled_from(names), model), max_size=8)
    ):
        tokens.append(token_row(customer=customer, day=f"2026-10-{day:02d}", provider=provider, model=name,
                                **{f"{c}_tokens": draw(token_counts) for c in TOKEN_CLASSES},
                                provider_cost_nanos=draw(st.integers(0, 10**11))))  # fmt: skip
    tasks = []
    for index in range(draw(st.integers(min_value=0, max_value=12))):
        hour = draw(st.integers(min_value=0, max_value=30 * 24 + 21))  # ties happen: hours only
        ended = datetime(2026, 10, 1, 2) + timedelta(hours=hour)
        tasks.append(task_row(customer=draw(st.sampled_from(names)), task=f"t{draw(st.integers(0, 99))}-{index}",
                              task_type=draw(st.sampled_from([None, "support", "other"])),
                              status=draw(st.sampled_from(["completed", "completed", "failed", "cancelled"])),
                              ended_at=ended.isoformat() + "+00:00"))  # fmt: skip
    return plan_dicts, customers, tokens, tasks


class TestAgainstTheReference:
    @given(scenarios(), st.sampled_from(["UTC", "America/New_York"]))
    def test_lines_match_the_reference_and_sum_to_the_total(self, scenario: Any, tz: str) -> None:
        plan_dicts, customers, tokens, tasks = scenario
        tasks = [
            t for t in tasks if datetime.fromisoformat(t["ended_at"]).astimezone(ZoneInfo(tz)).month == 10
        ]
        plans = book(*plan_dicts)
        rated = rate(plans, customers, token_frame(*tokens), task_frame(*tasks), tz=tz)
        got = sorted((line.customer, str(line.kind), line.amount_exact) for line in rated.lines)
        assert got == sorted(reference_lines(plans, customers, tokens, tasks, tz))
        totals = rated.totals()
        for customer in customers:
            mine = [line for line in rated.lines if line.customer == customer]
            assert all(line.amount == round_money(line.amount_exact, line.currency) for line in mine)
            assert totals[customer] == sum((line.amount for line in mine), Decimal(0))
