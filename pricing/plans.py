"""Plans: pricing terms as validated pydantic models, and the versions of each plan.

`pricing.config` validates a whole tenant config file with these models; `plan_definition` is
how a version is stored (`pricing.tables.plan_versions`).

A plan is `per_token` or `per_job` (DESIGN.md, Pricing). Decimal amounts are strings (or
integers); floats, negatives, NaN and more than 12 decimals are refused, so every amount computed
from a plan is exact. Unknown keys are errors.

per_token charges exactly one of:
  - `rates`: price per million tokens of each billable class (`input`, `output`, `cache_read`,
    `cache_write`). `model_rates` overrides them for matching usage: a list of full rate cards
    `{provider, model, input, output, cache_read, cache_write}` where `model` may be omitted
    (null) to match every model of the provider. An exact provider+model card wins over a
    provider-wide card, which wins over `rates`.
  - `markup`: cost-plus, provider cost × (1 + markup).
  - `tiers`: tier prices per million billable tokens, all classes summed; `up_to` is in millions.
per_job charges `prices` by `task_type` (with a required `default`) or `tiers` on completed
tasks; `failed` prices a failed or cancelled task (default 0).

Both may add `included` (free units before charging: tokens or completed jobs; not with markup,
which has no unit), `minimum` (monthly, on usage lines) and `platform_fee` (monthly line), and
carry `currency` (default: the tenant's).

Versions: entries sharing an `id` are versions of one plan, each in force from its
`effective_from` (a tenant-local date; omitted = since always). Versions must keep the plan's
type, currency and charge basis, so usage priced by different versions adds up meaningfully.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from metering.core.errors import InvalidInput
from metering.core.money import TOKENS_PER_MILLION, parse_decimal
from pricing.tiers import step_problems

MAX_DECIMALS = 12
MAX_AMOUNT = Decimal(10) ** 15
DEFER_CHECKS = "defer_checks"  # validation context flag: validate_config reports them with paths


def _amount(value: object) -> Decimal:
    amount = parse_decimal(value)
    scaled = amount.scaleb(MAX_DECIMALS)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"must have at most {MAX_DECIMALS} decimal places")
    if amount >= MAX_AMOUNT:
        raise ValueError("is too large")
    return amount


def _bound(value: object) -> Decimal:
    bound = _amount(value)
    if bound <= 0:
        raise ValueError("must be greater than 0")
    return bound


Amount = Annotated[Decimal, BeforeValidator(_amount)]
Bound = Annotated[Decimal, BeforeValidator(_bound)]
Count = Annotated[int, Field(strict=True, ge=0)]
def _no_nul(text: str) -> str:
    if "\x00" in text:  # PostgreSQL cannot store it (SQLite could): refused alike on both
        raise ValueError("must not contain NUL characters")
    return text


Name = Annotated[str, Field(strict=True, min_length=1, max_length=200), AfterValidator(_no_nul)]
# A customer is named by events, which allow 256 characters (metering.events.schemas): so do plans.
CustomerName = Annotated[str, Field(strict=True, min_length=1, max_length=256), AfterValidator(_no_nul)]
Currency = Annotated[str, Field(strict=True, pattern=r"^[A-Z]{3}$")]


class _Terms(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceTier(_Terms):
    """A context tier of a `prices:` entry: above this many input tokens in one request (cache
    included), the rates given here apply to all of that request's tokens of their class."""

    above: Count
    input: Amount | None = None
    output: Amount | None = None
    cache_read: Amount | None = None
    cache_write: Amount | None = None
    cache_write_1h: Amount | None = None


class PriceOverride(_Terms):
    """A `prices:` entry: a provider price per million tokens (used by metering, not billed).

    Several entries of one model with different `start_date`s are its price versions (as
    genai-prices' start-date constraints: from that UTC day on)."""

    provider: Name
    model: Name
    input: Amount
    output: Amount
    cache_read: Amount | None = None
    cache_write: Amount | None = None
    cache_write_1h: Amount | None = None
    request: Amount | None = None  # per request (usage event)
    tiers: tuple[PriceTier, ...] = ()
    start_date: date | None = None

    def problems(self) -> Problems:
        found: Problems = []
        for index, tier in enumerate(self.tiers):
            if tier.model_dump(exclude={"above"}, exclude_none=True) == {}:
                found.append((f"tiers[{index}]", "a tier needs at least one rate"))
            if index and tier.above <= self.tiers[index - 1].above:
                found.append((f"tiers[{index}].above", "tiers must be in increasing order of `above`"))
            for name in ("cache_read", "cache_write"):
                if getattr(tier, name) is not None and getattr(self, name) is None:
                    found.append((f"tiers[{index}].{name}", f"set {name} on the price to tier it (it costs as input)"))
        return found


class ModelAlias(_Terms):
    """A `models:` entry: events whose model matches the glob `match` are priced as this model."""

    match: Name
    provider: Name
    model: Name


class Rates(_Terms):
    input: Amount
    output: Amount
    cache_read: Amount
    cache_write: Amount

    def of(self, token_class: str) -> Decimal:
        rate: Decimal = getattr(self, token_class)
        return rate


class ModelRates(Rates):
    provider: Name
    model: Name | None = None


class TierStep(_Terms):
    up_to: Bound | None
    price: Amount
    flat: Amount = Decimal(0)


class Tiers(_Terms):
    mode: Literal["graduated", "volume"]
    steps: Annotated[tuple[TierStep, ...], Field(min_length=1)]


class _Plan(_Terms):
    id: Name
    effective_from: date | None = None
    currency: Currency | None = None
    tiers: Tiers | None = None
    included: Count = 0
    minimum: Amount = Decimal(0)
    platform_fee: Amount = Decimal(0)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        # validate_config defers these to report them with their exact path; direct
        # construction still refuses an inconsistent plan.
        if not (info.context or {}).get(DEFER_CHECKS):
            if problems := self.problems():
                raise ValueError("; ".join(f"{path or 'plan'}: {message}" for path, message in problems))
        return self

    @property
    def basis(self) -> str:
        """What the unit charges come from: rates, markup, prices or tiers."""
        raise NotImplementedError

    def problems(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def _one_of(self, names: Sequence[str]) -> list[tuple[str, str]]:
        given = [name for name in names if getattr(self, name) is not None]
        if not given:
            return [("", f"needs one of {', '.join(names)}")]
        return [(name, f"cannot be combined with {given[0]}") for name in given[1:]]


class PerTokenPlan(_Plan):
    type: Literal["per_token"]
    rates: Rates | None = None
    model_rates: tuple[ModelRates, ...] = ()
    markup: Amount | None = None

    @property
    def basis(self) -> str:
        return "tiers" if self.tiers else "markup" if self.markup is not None else "rates"

    def problems(self) -> list[tuple[str, str]]:
        problems = self._one_of(("rates", "markup", "tiers"))
        if self.model_rates and self.rates is None:
            problems.append(("model_rates", "needs rates for the usage no model rate matches"))
        seen: dict[tuple[str, str | None], int] = {}
        for index, card in enumerate(self.model_rates):
            if (key := (card.provider, card.model)) in seen:
                problems.append((f"model_rates[{index}]", f"duplicates model_rates[{seen[key]}]"))
            seen.setdefault(key, index)
        if self.included and self.markup is not None:
            problems.append(("included", "is not supported with markup: cost-plus has no token unit"))
        if self.tiers:
            problems += [
                (f"tiers.{p}", m) for p, m in step_problems(self.tiers.steps, TOKENS_PER_MILLION, "tokens")
            ]
        return problems

    def rates_for(self, provider: str, model: str) -> tuple[str | None, Rates]:
        """The rate card for usage of a model: (label of the matching model card or None, rates)."""
        fallback: ModelRates | None = None
        for card in self.model_rates:
            if card.provider == provider and card.model == model:
                return f"{provider}/{model}", card
            if card.provider == provider and card.model is None and fallback is None:
                fallback = card
        if fallback is not None:
            return f"{provider} models", fallback
        if self.rates is None:
            raise ValueError(f"plan {self.id!r} has no rates")
        return None, self.rates


class PerJobPlan(_Plan):
    type: Literal["per_job"]
    prices: Mapping[Name, Amount] | None = None
    failed: Amount = Decimal(0)

    @property
    def basis(self) -> str:
        return "tiers" if self.tiers else "prices"

    def problems(self) -> list[tuple[str, str]]:
        problems = self._one_of(("prices", "tiers"))
        if self.prices is not None and "default" not in self.prices:
            problems.append(("prices.default", "is required: the price of task types not listed"))
        if self.tiers:
            problems += [(f"tiers.{p}", m) for p, m in step_problems(self.tiers.steps, 1, "jobs")]
        return problems

    def price_key(self, task_type: str | None) -> str:
        """The `prices` key that prices a task type (`default` for unlisted or missing types)."""
        prices = self.prices or {}
        return (
            task_type
            if task_type is not None and task_type != "default" and task_type in prices
            else "default"
        )


Plan = PerTokenPlan | PerJobPlan
PLAN_TYPES: dict[str, type[PerTokenPlan] | type[PerJobPlan]] = {
    "per_token": PerTokenPlan,
    "per_job": PerJobPlan,
}


class CustomerPlan(_Terms):
    """A `customers:` entry: the plan a customer is billed on, and plans to compare it with."""

    id: CustomerName
    plan: Name
    compare_with: tuple[Name, ...] = ()


def join_path(prefix: str, path: str) -> str:
    """`plans[2]` + `tiers.steps[1]` → `plans[2].tiers.steps[1]`."""
    return prefix if not path else f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


def version_problems(plans: Sequence[Plan]) -> list[tuple[str, str]]:
    """Cross-version problems as (path relative to the plans list, message)."""
    problems: list[tuple[str, str]] = []
    first: dict[str, int] = {}
    starts: dict[tuple[str, date | None], int] = {}
    for index, plan in enumerate(plans):
        if (key := (plan.id, plan.effective_from)) in starts:
            problems.append(
                (f"[{index}].effective_from", f"plans[{starts[key]}] already starts {plan.id!r} then")
            )
        starts.setdefault(key, index)
        origin = plans[first.setdefault(plan.id, index)]
        for name in ("type", "currency", "basis"):
            if getattr(plan, name) != getattr(origin, name):
                field = "type" if name == "type" else "currency" if name == "currency" else plan.basis
                problems.append(
                    (
                        f"[{index}].{field}",
                        f"versions of {plan.id!r} must share the {name} of plans[{first[plan.id]}]",
                    )
                )
                break
    return problems


@dataclass(frozen=True)
class PlanBook:
    """Every version of every plan, by id, oldest first."""

    versions: Mapping[str, tuple[Plan, ...]]

    @classmethod
    def of(cls, plans: Iterable[Plan]) -> PlanBook:
        plans = list(plans)
        if problems := version_problems(plans):
            raise InvalidInput("inconsistent plan versions", detail=_detail("plans", problems))
        by_id: dict[str, list[Plan]] = {}
        for plan in plans:
            by_id.setdefault(plan.id, []).append(plan)
        return cls(
            {k: tuple(sorted(v, key=lambda p: p.effective_from or date.min)) for k, v in by_id.items()}
        )

    def history(self, plan_id: str) -> tuple[Plan, ...]:
        try:
            return self.versions[plan_id]
        except KeyError:
            raise InvalidInput(f"unknown plan {plan_id!r}") from None

    def at(self, plan_id: str, day: date) -> Plan:
        """The version in force on a tenant-local day."""
        in_force = [p for p in self.history(plan_id) if (p.effective_from or date.min) <= day]
        if not in_force:
            raise InvalidInput(f"plan {plan_id!r} is not in force on {day.isoformat()}")
        return in_force[-1]


Problems = list[tuple[str, str]]  # (path in the config file, message)


def prefixed(prefix: str, problems: Iterable[tuple[str, str]]) -> Problems:
    return [(join_path(prefix, path), message) for path, message in problems]


def _detail(prefix: str, problems: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"field": path, "message": message} for path, message in prefixed(prefix, problems)]


def plan_definition(plan: Plan) -> str:
    """A plan's terms as stored: canonical JSON without `effective_from` (decimals as written)."""
    terms = plan.model_dump(mode="json", exclude={"effective_from"}, exclude_defaults=True)
    terms["type"] = plan.type
    return json.dumps(terms, sort_keys=True, separators=(",", ":"))


def plan_from_definition(definition: str, effective_from: date | None) -> Plan:
    """The inverse of `plan_definition`, in force from `effective_from`."""
    terms = json.loads(definition)
    return PLAN_TYPES[terms["type"]].model_validate(terms | {"effective_from": effective_from})


def same_terms(a: Plan, b: Plan) -> bool:
    """Whether two versions charge the same (3.00 equals 3; the start date does not matter)."""
    return a.model_copy(update={"effective_from": None}) == b.model_copy(update={"effective_from": None})
