"""Budgets: their definition, their periods in the tenant's time zone, and which budgets an event
or an authorization request falls under. Pure: no I/O; time is an argument.

A budget limits one measure over a period (`day`, `week` from Monday, `month`) of the tenant's
calendar, for a scope: any subset of customer, actor, agent and task_type (`{}` = the whole
tenant). An event falls under a budget when it carries every value the scope names.

Measures and their units in counters (`metering.spend.budget_tables.budget_counters`):
- `provider_cost`: the cost of usage events under the tenant's price book, exact: whole
  nano-units plus the rest in 1e-15 (as the rollup's cost_nanos/cost_rem);
- `tokens`: input + output tokens of usage events;
- `jobs`: tasks whose status (the rollup's rule: the latest terminal event) is `completed`,
  counted in the period of that terminal event;
- `billed`: the customer's plan's rating of usage so far, as nano-units (`metering.spend.counters`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import combinations
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from metering.core.money import NANOS, parse_decimal
from metering.core.periods import Period, PeriodKind

Measure = Literal["provider_cost", "billed", "tokens", "jobs"]
SCOPE_FIELDS = ("customer", "actor", "agent", "task_type")
MONEY_MEASURES = ("provider_cost", "billed")
REM_PER_NANO = 10**6
MAX_LIMIT = Decimal(10) ** 15


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


ScopeValue = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256),
    BeforeValidator(lambda v: _no_nul(v) if isinstance(v, str) else v),
]
BudgetId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]


class Scope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    customer: ScopeValue | None = None
    actor: ScopeValue | None = None
    agent: ScopeValue | None = None
    task_type: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None

    def key(self) -> tuple[tuple[str, str], ...]:
        """The (field, value) pairs the scope names, in SCOPE_FIELDS order."""
        return tuple((name, value) for name in SCOPE_FIELDS if (value := getattr(self, name)) is not None)


class Budget(BaseModel):
    """One `budgets:` entry (DESIGN.md, Spend control). `limit` is a decimal string (an integer
    for tokens and jobs); `alerts` are fractions of the limit in (0, 10]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: BudgetId
    scope: Scope = Field(default_factory=Scope)
    measure: Measure
    limit: Decimal
    period: PeriodKind
    alerts: tuple[Annotated[Decimal, BeforeValidator(lambda v: _fraction(v))], ...] = ()
    forecast: bool = False
    enforce: bool = False

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, value: object, info: ValidationInfo) -> Decimal:
        if isinstance(value, bool) or isinstance(value, float):
            raise ValueError('must be a decimal string such as "500.00" (or an integer), not a float')
        amount = parse_decimal(value)
        if amount <= 0:
            raise ValueError("must be greater than 0")
        if amount >= MAX_LIMIT:
            raise ValueError("is too large")
        if amount.scaleb(9) != amount.scaleb(9).to_integral_value():
            raise ValueError("must have at most 9 decimal places")
        if info.data.get("measure") in ("tokens", "jobs") and amount != amount.to_integral_value():
            raise ValueError("must be a whole number for tokens and jobs")
        return amount

    @field_validator("alerts", mode="after")
    @classmethod
    def _sorted_alerts(cls, value: tuple[Decimal, ...]) -> tuple[Decimal, ...]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a threshold")
        return tuple(sorted(value))

    @property
    def money(self) -> bool:
        return self.measure in MONEY_MEASURES

    def limit_units(self) -> int:
        """The limit in counter units: nano-units for money, the count otherwise."""
        return int(self.limit * NANOS) if self.money else int(self.limit)

    def definition(self) -> dict[str, Any]:
        """As stored and shown: decimal strings, the scope's named fields only."""
        return {
            "id": self.id, "scope": dict(self.scope.key()), "measure": self.measure, "limit": text(self.limit),
            "period": self.period, "alerts": [text(a) for a in self.alerts], "forecast": self.forecast,
            "enforce": self.enforce,
        }  # fmt: skip


def _fraction(value: object) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("must be a fraction of the limit such as 0.8")
    if isinstance(value, float):
        value = repr(value)  # YAML's 0.8 is a float: its shortest repr is the number written
    fraction = parse_decimal(value)
    if not 0 < fraction <= 10:
        raise ValueError("must be a fraction of the limit above 0 and at most 10 (1 = the limit)")
    return fraction


def text(amount: Decimal) -> str:
    """A decimal as plain text, no exponent, no trailing zeros past the point."""
    shown = f"{amount:f}"
    return shown.rstrip("0").rstrip(".") if "." in shown else shown


def used_decimal(budget: Budget, used: int, rem: int) -> Decimal:
    """A counter's figure in the budget's unit: exact money (nanos + rem) or a count."""
    if budget.money:
        return Decimal(int(used) * REM_PER_NANO + int(rem)).scaleb(-15)
    return Decimal(int(used))


def reached(budget: Budget, used: int, rem: int, fraction: Decimal = Decimal(1)) -> bool:
    """Whether the counter is at or past `fraction` of the limit (exact: an int against a Decimal)."""
    if budget.money:
        return used * REM_PER_NANO + rem >= budget.limit * fraction * 10**15
    return used >= budget.limit * fraction


# --- periods ------------------------------------------------------------------------------------


def forecast_units(used: int, period: Period, now: datetime, *, today: date | None = None) -> int:
    """The period-end forecast by run-rate: the mean daily spend of the days so far (today
    counted as a whole day) times the days in the period; `used` itself once the period ended.
    Integer division rounds the forecast down (it only decides whether a limit is passed).
    `today` (the tenant-local day of `now`) spares the conversion when the caller has it."""
    today = today or now.astimezone(ZoneInfo(period.timezone)).date()
    days_so_far = min(max((today - period.first_day).days + 1, 1), period.days)
    return used * period.days // days_so_far


# --- matching -----------------------------------------------------------------------------------


@dataclass
class BudgetIndex:
    """A tenant's budgets, indexed by scope for matching in memory: an event or a request with k
    named fields looks up its 2**k subsets (at most 16 dictionary reads), whatever the number of
    budgets."""

    budgets: tuple[Budget, ...] = ()
    by_scope: dict[tuple[tuple[str, str], ...], list[Budget]] = field(default_factory=dict)

    @classmethod
    def of(cls, budgets: Iterable[Budget]) -> BudgetIndex:
        listed = tuple(sorted(budgets, key=lambda b: b.id))
        by_scope: dict[tuple[tuple[str, str], ...], list[Budget]] = {}
        for budget in listed:
            by_scope.setdefault(budget.scope.key(), []).append(budget)
        return cls(listed, by_scope)

    def __bool__(self) -> bool:
        return bool(self.budgets)

    def by_id(self) -> dict[str, Budget]:
        return {b.id: b for b in self.budgets}

    def measures(self) -> set[str]:
        return {b.measure for b in self.budgets}

    def matching(self, attributes: Mapping[str, str | None]) -> list[Budget]:
        """The budgets whose scope the attributes satisfy (customer, actor, agent, task_type)."""
        named = tuple((name, value) for name in SCOPE_FIELDS if (value := attributes.get(name)) is not None)
        found: list[Budget] = []
        for size in range(len(named) + 1):
            for subset in combinations(named, size):
                found.extend(self.by_scope.get(subset, ()))
        return found


def parse_budgets(
    entries: Sequence[object], prefix: str = "budgets"
) -> tuple[list[Budget], list[tuple[str, str]]]:
    """Validate `budgets:` entries; every problem with its path (`budgets[1].limit`)."""
    from pydantic import ValidationError

    parsed: list[Budget] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        path = f"{prefix}[{index}]"
        try:
            budget = Budget.model_validate(entry)
        except ValidationError as error:
            for item in error.errors(include_url=False):
                loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item["loc"])
                message = str(item["msg"]).removeprefix("Value error, ")
                if item["type"] == "extra_forbidden":
                    message = "unknown key"
                problems.append((path + loc, message))
            continue
        if budget.id in seen:
            problems.append((f"{path}.id", f"duplicates {prefix}[{seen[budget.id]}]"))
        seen.setdefault(budget.id, index)
        parsed.append(budget)
    return parsed, problems


def budget_at(moment: datetime) -> int:
    """Microseconds since the epoch (UTC) of an instant."""
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


# --- the billed measure -------------------------------------------------------------------------

FEMTOS = 10**15
TOKEN_CLASSES = ("input", "cache_read", "cache_write", "output")


@dataclass(frozen=True)
class BilledRule:
    """How a customer's plan bills, reduced to what can be added event by event (pricing writes
    these for each customer, `pricing.budget_billing`). `kind`:
    - `rates`: per million billable tokens of each class, `model_rates` first ((provider, model
      or None for every model of the provider, rates));
    - `markup`: provider cost x (1 + markup);
    - `jobs`: a completed task's price by task_type (`default` for the others), `failed` for a
      failed or cancelled one."""

    kind: str
    rates: Mapping[str, Decimal] = field(default_factory=dict)
    model_rates: tuple[tuple[str, str | None, Mapping[str, Decimal]], ...] = ()
    markup: Decimal = Decimal(0)
    prices: Mapping[str, Decimal] = field(default_factory=dict)
    failed: Decimal = Decimal(0)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "rates": {k: str(v) for k, v in self.rates.items()},
            "model_rates": [[p, m, {k: str(v) for k, v in r.items()}] for p, m, r in self.model_rates],
            "markup": str(self.markup), "prices": {k: str(v) for k, v in self.prices.items()}, "failed": str(self.failed),
        }  # fmt: skip

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> BilledRule:
        def decimals(values: Mapping[str, str]) -> dict[str, Decimal]:
            return {k: Decimal(v) for k, v in values.items()}

        return cls(
            raw["kind"], decimals(raw["rates"]), tuple((p, m, decimals(r)) for p, m, r in raw["model_rates"]),
            Decimal(raw["markup"]), decimals(raw["prices"]), Decimal(raw["failed"]),
        )  # fmt: skip

    def usage_femtos(self, provider: str, model: str, billable: Mapping[str, int], cost_femtos: int) -> int:
        """What one usage event bills, in 1e-15 of the currency (rounded down to a femto-unit)."""
        if self.kind == "markup":
            return int(cost_femtos * (1 + self.markup))
        if self.kind != "rates":
            return 0
        rates = self.rates
        for card_provider, card_model, card in self.model_rates:
            if card_provider == provider and card_model in (model, None):
                rates = card
                if card_model == model:
                    break
        # A rate per million tokens is (rate x 10**9) femto-units per token.
        return int(sum(Decimal(billable[c]) * rates.get(c, Decimal(0)) for c in TOKEN_CLASSES) * 10**9)

    def job_femtos(self, status: str, task_type: str | None) -> int:
        if self.kind != "jobs":
            return 0
        if status != "completed":
            return int(self.failed * FEMTOS)
        price = self.prices.get(task_type or "default") if task_type != "default" else None
        return int((price if price is not None else self.prices.get("default", Decimal(0))) * FEMTOS)
