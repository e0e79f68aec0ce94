"""Comparison of plans on the same usage, and quotes for a hypothetical task."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

from metering.core.errors import InvalidInput
from pricing.compare import CUSTOMER_COLUMNS, Comparison, ModelTokens, compare_plans, quote_task
from pricing.config import TenantConfig, validate_config
from tests.pricing.test_rating import OCTOBER, RATES, task_frame, task_row, token_frame, token_row

CONFIG: dict[str, Any] = {
    "plans": [
        {"id": "jobs", "type": "per_job", "prices": {"default": "0.50", "support": "1.20"}},
        {"id": "tokens", "type": "per_token", "rates": RATES},
    ],
    "customers": [
        {"id": "acme", "plan": "jobs", "compare_with": ["tokens"]},
        {"id": "idle", "plan": "tokens"},
    ],
}
TOKENS = token_frame(
    token_row(input_tokens=1_000_000, output_tokens=100_000, provider_cost_nanos=3_500_000_000),
    token_row(
        provider="anthropic", model="claude", cache_read_tokens=500_000, provider_cost_nanos=250_000_000
    ),
)
TASKS = task_frame(
    task_row(task="1", task_type="support", provider_cost_nanos=1_000_000_000),
    task_row(task="2", task_type="support", provider_cost_nanos=1_000_000_000),
    task_row(task="3", task_type=None, provider_cost_nanos=500_000_000),
    task_row(task="4", task_type="support", status="failed", provider_cost_nanos=400_000_000),
    task_row(task="5", task_type=None, status="cancelled", provider_cost_nanos=100_000_000),
)


def compare(config: TenantConfig | None = None, **options: Any) -> Comparison:
    config = config or validate_config(CONFIG)
    return compare_plans(
        month=OCTOBER, customers=config.customers, plans=config.plans, token_usage=options.pop("tokens", TOKENS),
        tasks=options.pop("tasks", TASKS), currency="USD", **options,
    )  # fmt: skip


def row(frame: pd.DataFrame, **keys: Any) -> dict[str, Any]:
    match = frame
    for column, value in keys.items():
        match = match[match[column].isna()] if value is None else match[match[column] == value]
    [record] = match.to_dict("records")
    return record


class TestPerCustomerAndPlan:
    def test_hand_worked_figures(self) -> None:
        result = compare()
        assert list(result.by_customer.columns) == list(CUSTOMER_COLUMNS)
        jobs = row(result.by_customer, customer="acme", plan="jobs")
        assert jobs == {
            "customer": "acme", "plan": "jobs", "billed": True, "currency": "USD",
            "revenue": Decimal("2.90"),  # 2 × 1.20 + 0.50
            "provider_cost": Decimal("3.750000"),  # the month's token usage
            "margin": Decimal("-0.850000"),
            "margin_pct": Decimal("-0.2931"),
            "tasks_completed": 3, "tasks_failed": 1, "tasks_cancelled": 1,
            "revenue_per_completed_task": Decimal("0.966667"),
            "break_even_job_price": Decimal("3.100000"),  # the tokens plan's 9.30 / 3
            "target_margin_job_price": Decimal("3.125000"),  # 3.75 / (3 × (1 − 0.6))
            "failed_cost": Decimal("0.500000"),
            "unpriced_events": 0,
        }  # fmt: skip
        tokens = row(result.by_customer, customer="acme", plan="tokens")
        assert (tokens["billed"], tokens["revenue"], tokens["margin"], tokens["margin_pct"]) == (
            False, Decimal("9.30"), Decimal("5.550000"), Decimal("0.5968"),
        )  # fmt: skip
        assert tokens["break_even_job_price"] == tokens["revenue_per_completed_task"] == Decimal("3.100000")

    def test_revenue_is_the_sum_of_the_rated_lines(self) -> None:
        result = compare()
        lines = result.rated["tokens"].lines
        assert sum(line.amount for line in lines if line.customer == "acme") == Decimal("9.30")

    def test_no_revenue_and_no_tasks_give_none_not_zero_division(self) -> None:
        idle = row(compare().by_customer, customer="idle", plan="tokens")
        assert idle["revenue"] == Decimal(0) and idle["margin_pct"] is None
        assert idle["revenue_per_completed_task"] is idle["target_margin_job_price"] is None

    def test_a_target_margin_of_zero_is_the_cost_per_completed_task(self) -> None:
        jobs = row(compare(target_margin=Decimal("0")).by_customer, customer="acme", plan="jobs")
        assert jobs["target_margin_job_price"] == Decimal("1.250000")

    @pytest.mark.parametrize("target", [Decimal(1), 0.6, Decimal("-0.1")])
    def test_a_target_margin_must_be_a_decimal_below_one(self, target: Any) -> None:
        with pytest.raises((InvalidInput, ValueError)):
            compare(target_margin=target)

    def test_only_plans_compares_everyone_under_the_named_plans(self) -> None:
        result = compare(only_plans=["tokens"])
        assert result.by_customer[["customer", "plan", "billed"]].to_dict("records") == [
            {"customer": "acme", "plan": "tokens", "billed": False},
            {"customer": "idle", "plan": "tokens", "billed": True},
        ]

    def test_break_even_needs_a_rated_per_token_plan(self) -> None:
        jobs_only = compare(only_plans=["jobs"]).by_customer
        assert jobs_only["break_even_job_price"].tolist() == [None, None]

    def test_break_even_without_any_per_token_plan_is_none(self) -> None:
        config = validate_config(
            CONFIG | {"customers": [{"id": "acme", "plan": "jobs"}, {"id": "idle", "plan": "jobs"}]}
        )
        assert row(compare(config).by_customer, customer="acme")["break_even_job_price"] is None

    def test_unpriced_usage_is_reported(self) -> None:
        tokens = token_frame(token_row(input_tokens=5, unpriced_events=3))
        assert row(compare(tokens=tokens).by_customer, customer="acme", plan="jobs")["unpriced_events"] == 3

    def test_usage_of_unknown_customers_is_an_error(self) -> None:
        with pytest.raises(InvalidInput):
            compare(tasks=task_frame(task_row(customer="stranger")))


class TestAggregates:
    def test_per_task_type(self) -> None:
        by_type = compare().by_task_type
        assert row(by_type, task_type="support") == {
            "task_type": "support", "tasks_completed": 2, "tasks_failed": 1, "tasks_cancelled": 0,
            "provider_cost": Decimal("2.400000"), "failed_cost": Decimal("0.400000"),
            "cost_per_completed_task": Decimal("1.000000"),
            "target_margin_job_price": Decimal("3.000000"),  # 2.40 / (2 × 0.4): failures are paid by successes
        }  # fmt: skip
        untyped = row(by_type, task_type=None)
        assert (untyped["tasks_completed"], untyped["tasks_cancelled"], untyped["target_margin_job_price"]) == (
            1, 1, Decimal("1.500000"),
        )  # fmt: skip

    def test_tenant_wide_per_plan(self) -> None:
        tenant = compare().tenant
        tokens = row(tenant, plan="tokens")
        assert (tokens["customers"], tokens["revenue"], tokens["provider_cost"], tokens["tasks_completed"]) == (
            2, Decimal("9.30"), Decimal("3.750000"), 3,
        )  # fmt: skip
        jobs = row(tenant, plan="jobs")
        assert (jobs["customers"], jobs["revenue"], jobs["break_even_job_price"]) == (
            1,
            Decimal("2.90"),
            Decimal("3.100000"),
        )

    def test_per_model_from_daily_usage(self) -> None:
        by_model = compare().by_model
        gpt = row(by_model, customer="acme", model="gpt-4o")
        assert (gpt["basis"], gpt["provider_cost"], gpt["cost_per_completed_task"]) == (
            "all_usage", Decimal("3.500000"), Decimal("1.166667"),
        )  # fmt: skip
        assert gpt["input_tokens_per_completed_task"] == Decimal("333333.33")
        assert row(by_model, customer=None, model="claude")[
            "cache_read_tokens_per_completed_task"
        ] == Decimal("166666.67")

    def test_per_model_from_the_usage_of_completed_tasks(self) -> None:
        per_task = pd.DataFrame(
            [
                {"customer": "acme", "task": "1", "provider": "openai", "model": "gpt-4o", "input_tokens": 300,
                 "output_tokens": 30, "cache_read_tokens": 0, "cache_write_tokens": 0, "provider_cost_nanos": 900},
                {"customer": "acme", "task": "4", "provider": "openai", "model": "gpt-4o", "input_tokens": 9_000,
                 "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0, "provider_cost_nanos": 9_000},
            ]
        )  # fmt: skip
        gpt = row(compare(task_model_usage=per_task).by_model, customer="acme", model="gpt-4o")
        assert gpt["basis"] == "completed_tasks"  # the failed task "4" is left out
        assert (gpt["input_tokens_per_completed_task"], gpt["cost_per_completed_task"]) == (
            Decimal("100.00"), Decimal("0.000000"),
        )  # fmt: skip
        with pytest.raises(TypeError):
            compare(task_model_usage=per_task.astype({"provider_cost_nanos": "float64"}))


class TestQuotes:
    PLANS = validate_config({"plans": [
        {"id": "tokens", "type": "per_token", "rates": RATES, "included": 1200},
        {"id": "markup", "type": "per_token", "markup": "0.40"},
        {"id": "jobs", "type": "per_job", "prices": {"default": "0.50", "support": "1.20"}, "failed": "0.05", "included": 1},
        {"id": "graduated", "type": "per_job", "tiers": {"mode": "graduated", "steps": [
            {"up_to": 1000, "price": "1.00"}, {"up_to": None, "price": "0.80"}]}},
        {"id": "volume", "type": "per_job", "tiers": {"mode": "volume", "steps": [
            {"up_to": 5, "price": "5"}, {"up_to": None, "price": "4"}]}},
    ]}).plans  # fmt: skip
    TOKENS = [ModelTokens("openai", "gpt-4o", uncached_input_tokens=1000, output_tokens=500)]

    def quote(self, plan_id: str, **options: Any) -> tuple[Decimal, Decimal]:
        fields: dict[str, Any] = {"tokens": self.TOKENS, "task_type": "support", "outcome": "completed", "provider_cost_nanos": 0,
                  "currency": "USD"} | options  # fmt: skip
        [quote] = quote_task([self.PLANS.at(plan_id, OCTOBER)], **fields)
        return quote.amount_exact, quote.amount

    def test_per_token_rates_after_the_allowance(self) -> None:
        assert self.quote("tokens", units_before=1200) == (Decimal("0.021"), Decimal("0.02"))  # 0.006 + 0.015
        assert self.quote("tokens") == (
            Decimal("0.009"),
            Decimal("0.01"),
        )  # 1,200 free: 300 output tokens left

    def test_markup_on_the_callers_provider_cost(self) -> None:
        assert self.quote("markup", provider_cost_nanos=10_000_000) == (Decimal("0.014"), Decimal("0.01"))

    def test_per_job_by_outcome_and_allowance(self) -> None:
        assert self.quote("jobs", units_before=1)[1] == Decimal("1.20")
        assert self.quote("jobs", units_before=1, task_type="other")[1] == Decimal("0.50")
        assert self.quote("jobs", units_before=0)[1] == Decimal("0.00")
        assert self.quote("jobs", outcome="failed")[1] == Decimal("0.05")

    def test_tiers_are_marginal(self) -> None:
        assert self.quote("graduated", units_before=999)[1] == Decimal("1.00")
        assert self.quote("graduated", units_before=1000)[1] == Decimal("0.80")
        assert self.quote("volume", units_before=5)[0] == Decimal("-1")  # 6 × 4 − 5 × 5

    def test_margin_and_cost(self) -> None:
        [quote] = quote_task([self.PLANS.at("jobs", OCTOBER)], tokens=[], task_type="support", outcome="completed",
                             provider_cost_nanos=250_000_000, currency="USD", units_before=5)  # fmt: skip
        assert (quote.plan, quote.provider_cost, quote.margin) == (
            "jobs",
            Decimal("0.250000"),
            Decimal("0.950000"),
        )

    @pytest.mark.parametrize("options", [
        {"provider_cost_nanos": 0.5}, {"outcome": "open"},
        {"tokens": [ModelTokens("openai", "gpt-4o", uncached_input_tokens=-1)]},
    ])  # fmt: skip
    def test_bad_inputs(self, options: dict[str, Any]) -> None:
        with pytest.raises((TypeError, ValueError)):
            self.quote("tokens", **options)
