"""Plans and the tenant config file: valid shapes load; every problem is named by its path."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from metering.core.errors import InvalidInput
from pricing.config import parse_config, validate_config
from pricing.plans import PerJobPlan, PerTokenPlan, PlanBook

DESIGN_YAML = """
prices:                      # overrides and additions to genai-prices, per million tokens
  - {provider: acme-ai, model: acme-large, input: "3.00", output: "15.00",
     cache_read: "0.30", cache_write: "3.75"}
plans:
  - id: tokens
    type: per_token
    rates: {input: "6.00", output: "30.00", cache_read: "0.60", cache_write: "7.50"}  # per million
  - id: tokens-plus
    type: per_token
    markup: "0.40"           # provider cost x 1.40
    minimum: "100.00"        # monthly minimum charge
  - id: jobs
    type: per_job
    prices: {default: "0.50", support_ticket: "1.20"}
    failed: "0.00"           # price of a failed or cancelled task
    platform_fee: "0.00"
  - id: jobs-tiered
    type: per_job
    tiers:
      mode: graduated        # or volume
      steps: [{up_to: 1000, price: "1.00"}, {up_to: 5000, price: "0.80"}, {up_to: null, price: "0.60"}]
customers:
  - {id: acme, plan: jobs, compare_with: [tokens]}
"""

RATES = {"input": "6.00", "output": "30.00", "cache_read": "0.60", "cache_write": "7.50"}


def make_config(
    *plans: dict[str, Any], customers: list[dict[str, Any]] | None = None, **sections: Any
) -> dict[str, Any]:
    return {"plans": list(plans), "customers": customers or [], **sections}


def problems(raw: object) -> list[dict[str, str]]:
    """The problems of an invalid config, as `validate_config` reports them."""
    with pytest.raises(InvalidInput) as caught:
        validate_config(raw)
    assert caught.value.status_code == 422
    return caught.value.detail  # type: ignore[no-any-return]


def fields(raw: object) -> list[str]:
    return [p["field"] for p in problems(raw)]


class TestTheDesignExample:
    def test_loads(self) -> None:
        config = parse_config(DESIGN_YAML)
        assert sorted(config.plans.versions) == ["jobs", "jobs-tiered", "tokens", "tokens-plus"]
        tokens = config.plans.at("tokens", date(2026, 10, 1))
        assert isinstance(tokens, PerTokenPlan) and tokens.rates is not None
        assert tokens.rates.output == Decimal("30.00")
        jobs = config.plans.at("jobs", date(2026, 10, 1))
        assert isinstance(jobs, PerJobPlan) and jobs.prices == {
            "default": Decimal("0.50"),
            "support_ticket": Decimal("1.20"),
        }
        tiered = config.plans.at("jobs-tiered", date(2026, 10, 1))
        assert tiered.tiers is not None and [s.up_to for s in tiered.tiers.steps] == [
            Decimal(1000),
            Decimal(5000),
            None,
        ]
        assert config.customers[0].compare_with == ("tokens",)
        assert config.prices[0].cache_write == Decimal("3.75")

    def test_an_empty_file_is_an_empty_config(self) -> None:
        config = parse_config("")
        assert config.plans.versions == {} and config.customers == ()


class TestPaths:
    def test_tiers_out_of_order(self) -> None:
        steps = [
            {"up_to": 1000, "price": "1.00"},
            {"up_to": 500, "price": "0.80"},
            {"up_to": None, "price": "0.60"},
        ]
        raw = make_config(
            {"id": "tokens", "type": "per_token", "rates": RATES},
            {"id": "jobs", "type": "per_job", "tiers": {"mode": "volume", "steps": steps}},
        )
        assert problems(raw) == [
            {
                "field": "plans[1].tiers.steps[1].up_to",
                "message": "must be greater than the previous step's up_to (1000)",
            }
        ]

    def test_a_negative_rate(self) -> None:
        raw = make_config({"id": "tokens", "type": "per_token", "rates": RATES | {"input": "-1"}})
        assert problems(raw) == [{"field": "plans[0].rates.input", "message": "must not be negative"}]

    def test_an_unknown_plan_in_customers(self) -> None:
        raw = make_config(
            {"id": "tokens", "type": "per_token", "rates": RATES},
            customers=[{"id": "acme", "plan": "jobs", "compare_with": ["tokens", "nope"]}],
        )
        assert fields(raw) == ["customers[0].plan", "customers[0].compare_with[1]"]

    def test_an_unknown_key(self) -> None:
        raw = make_config(
            {"id": "tokens", "type": "per_token", "rates": RATES | {"inptu": "1"}, "colour": "red"}
        )
        assert problems(raw) == [
            {"field": "plans[0].rates.inptu", "message": "Extra inputs are not permitted"},
            {"field": "plans[0].colour", "message": "Extra inputs are not permitted"},
        ]

    def test_every_problem_is_reported_at_once(self) -> None:
        raw = make_config(
            {"id": "a", "type": "per_token", "rates": RATES | {"output": "-3"}},
            {"id": "b", "type": "per_job", "prices": {"default": "1"}, "failed": "-1"},
            {"id": "c", "type": "flat"},
            customers=[{"id": "acme", "plan": "zzz"}, {"id": "acme", "plan": "a"}],
            prices=[{"provider": "x", "model": "y", "input": "1", "output": 2.5}],
            extra_section=[],
        )
        assert fields(raw) == [
            "extra_section",
            "prices[0].output",
            "plans[0].rates.output",
            "plans[1].failed",
            "plans[2].type",
            "customers[0].plan",
            "customers[1].id",
        ]

    def test_a_missing_field(self) -> None:
        raw = make_config(
            {"id": "tokens", "type": "per_token", "rates": {"input": "1", "output": "1", "cache_read": "1"}}
        )
        assert problems(raw) == [{"field": "plans[0].rates.cache_write", "message": "Field required"}]


class TestAmounts:
    @pytest.mark.parametrize("value", [6.0, 0.1, True])
    def test_floats_and_bools_are_refused(self, value: object) -> None:
        raw = make_config({"id": "tokens", "type": "per_token", "rates": RATES | {"input": value}})
        [problem] = problems(raw)
        assert problem["field"] == "plans[0].rates.input"
        assert "not a float" in problem["message"]

    def test_an_unquoted_yaml_decimal_is_a_float_and_refused(self) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse_config("plans: [{id: t, type: per_token, markup: 0.40}]")
        assert caught.value.detail[0]["field"] == "plans[0].markup"

    @pytest.mark.parametrize(("value", "message"), [
        ("abc", "'abc' is not a decimal number"),
        ("NaN", "must be a finite number"),
        ("0.0000000000001", "must have at most 12 decimal places"),
        ("1e16", "is too large"),
    ])  # fmt: skip
    def test_malformed_amounts(self, value: str, message: str) -> None:
        raw = make_config({"id": "jobs", "type": "per_job", "prices": {"default": value}})
        assert problems(raw) == [{"field": "plans[0].prices.default", "message": message}]

    def test_integers_and_trailing_zeros_are_fine(self) -> None:
        config = validate_config(
            make_config(
                {"id": "jobs", "type": "per_job", "prices": {"default": 2}, "minimum": "5.000000000000000"}
            )
        )
        plan = config.plans.at("jobs", date(2026, 1, 1))
        assert isinstance(plan, PerJobPlan) and plan.prices == {"default": Decimal(2)} and plan.minimum == 5

    @pytest.mark.parametrize("value", [1.0, "10", -1, True])
    def test_included_is_a_non_negative_integer(self, value: object) -> None:
        raw = make_config({"id": "jobs", "type": "per_job", "prices": {"default": "1"}, "included": value})
        assert fields(raw) == ["plans[0].included"]


class TestChargeShapes:
    def test_per_token_needs_exactly_one_basis(self) -> None:
        assert problems(make_config({"id": "t", "type": "per_token"})) == [
            {"field": "plans[0]", "message": "needs one of rates, markup, tiers"}
        ]
        assert problems(make_config({"id": "t", "type": "per_token", "rates": RATES, "markup": "0.4"})) == [
            {"field": "plans[0].markup", "message": "cannot be combined with rates"}
        ]

    def test_model_rates_need_base_rates_and_are_unique(self) -> None:
        card = {"provider": "openai", "model": "gpt-4o", **RATES}
        raw = make_config({"id": "t", "type": "per_token", "markup": "0.1", "model_rates": [card, card]})
        assert fields(raw) == ["plans[0].model_rates", "plans[0].model_rates[1]"]

    def test_included_tokens_do_not_combine_with_markup(self) -> None:
        assert fields(make_config({"id": "t", "type": "per_token", "markup": "0.4", "included": 1000})) == [
            "plans[0].included"
        ]

    def test_per_job_prices_need_a_default(self) -> None:
        raw = make_config({"id": "j", "type": "per_job", "prices": {"support_ticket": "1"}})
        assert problems(raw) == [
            {"field": "plans[0].prices.default", "message": "is required: the price of task types not listed"}
        ]

    def test_job_tier_bounds_are_whole_jobs_token_bounds_whole_tokens(self) -> None:
        job_steps = [{"up_to": "10.5", "price": "1"}, {"up_to": None, "price": "1"}]
        token_steps = [{"up_to": "0.5", "price": "1"}, {"up_to": None, "price": "1"}]
        raw = make_config(
            {"id": "j", "type": "per_job", "tiers": {"mode": "graduated", "steps": job_steps}},
            {"id": "t", "type": "per_token", "tiers": {"mode": "graduated", "steps": token_steps}},
        )
        assert problems(raw) == [
            {"field": "plans[0].tiers.steps[0].up_to", "message": "must be a whole number of jobs"}
        ]

    @pytest.mark.parametrize(("steps", "field"), [
        ([{"up_to": None, "price": "1"}, {"up_to": 5, "price": "1"}], "plans[0].tiers.steps[0].up_to"),
        ([{"up_to": 0, "price": "1"}, {"up_to": None, "price": "1"}], "plans[0].tiers.steps[0].up_to"),
        ([{"up_to": 5, "price": "1", "flat": "-2"}, {"up_to": None, "price": "1"}], "plans[0].tiers.steps[0].flat"),
        ([], "plans[0].tiers.steps"),
    ])  # fmt: skip
    def test_bad_tier_tables(self, steps: list[dict[str, Any]], field: str) -> None:
        raw = make_config({"id": "j", "type": "per_job", "tiers": {"mode": "graduated", "steps": steps}})
        assert fields(raw)[0] == field

    def test_constructing_an_inconsistent_plan_directly_fails_too(self) -> None:
        with pytest.raises(ValidationError, match="needs one of rates, markup, tiers"):
            PerTokenPlan(id="t", type="per_token")


class TestRateCards:
    PLAN = PerTokenPlan.model_validate({
        "id": "t", "type": "per_token", "rates": RATES,
        "model_rates": [
            {"provider": "openai", "input": "1", "output": "2", "cache_read": "0", "cache_write": "0"},
            {"provider": "openai", "model": "gpt-4o", "input": "3", "output": "4", "cache_read": "0", "cache_write": "0"},
        ],
    })  # fmt: skip

    def test_an_exact_model_card_wins_over_a_provider_card_over_base_rates(self) -> None:
        assert self.PLAN.rates_for("openai", "gpt-4o")[0] == "openai/gpt-4o"
        assert self.PLAN.rates_for("openai", "gpt-4o")[1].input == Decimal(3)
        assert self.PLAN.rates_for("openai", "o3")[0] == "openai models"
        assert self.PLAN.rates_for("anthropic", "claude")[0] is None


class TestVersions:
    V1 = {"id": "tokens", "type": "per_token", "rates": RATES}
    V2 = {
        "id": "tokens",
        "type": "per_token",
        "rates": RATES | {"input": "5.00"},
        "effective_from": "2026-10-15",
    }

    def test_the_version_in_force_on_a_day(self) -> None:
        book = validate_config(make_config(self.V2, self.V1)).plans
        assert [p.effective_from for p in book.history("tokens")] == [None, date(2026, 10, 15)]
        assert book.at("tokens", date(2026, 10, 14)).rates.input == Decimal("6.00")  # type: ignore[union-attr]
        assert book.at("tokens", date(2026, 10, 15)).rates.input == Decimal("5.00")  # type: ignore[union-attr]

    def test_before_the_first_version_no_plan_is_in_force(self) -> None:
        book = PlanBook.of([PerTokenPlan.model_validate(self.V2)])
        with pytest.raises(InvalidInput, match="not in force on 2026-10-14"):
            book.at("tokens", date(2026, 10, 14))
        with pytest.raises(InvalidInput, match="unknown plan"):
            book.at("nope", date(2026, 10, 14))

    def test_two_versions_from_the_same_day(self) -> None:
        assert fields(make_config(self.V1, self.V1 | {"rates": RATES})) == ["plans[1].effective_from"]

    def test_versions_keep_type_basis_and_currency(self) -> None:
        raw = make_config(
            self.V1,
            {"id": "tokens", "type": "per_job", "prices": {"default": "1"}, "effective_from": "2026-11-01"},
            {"id": "tokens", "type": "per_token", "markup": "0.3", "effective_from": "2026-12-01"},
            {
                "id": "tokens",
                "type": "per_token",
                "rates": RATES,
                "currency": "EUR",
                "effective_from": "2027-01-01",
            },
        )
        assert fields(raw) == ["plans[1].type", "plans[2].markup", "plans[3].currency"]

    def test_plan_currency_is_three_upper_case_letters(self) -> None:
        assert fields(make_config(self.V1 | {"currency": "usd"})) == ["plans[0].currency"]


class TestShapes:
    @pytest.mark.parametrize("raw", [[], "plans: []", 3])
    def test_the_config_must_be_a_mapping(self, raw: object) -> None:
        assert problems(raw) == [{"field": "", "message": "must be a mapping"}]

    def test_sections_must_be_lists_of_mappings(self) -> None:
        assert fields({"plans": {"id": "x"}, "customers": ["acme"]}) == ["plans", "customers[0]"]
        assert fields({"plans": ["x"]}) == ["plans[0]"]

    def test_duplicate_prices_entries(self) -> None:
        entry = {"provider": "acme-ai", "model": "large", "input": "1", "output": "2"}
        assert fields({"prices": [entry, entry]}) == ["prices[1]"]

    def test_invalid_yaml(self) -> None:
        with pytest.raises(InvalidInput, match="not valid YAML"):
            parse_config("plans: [")
