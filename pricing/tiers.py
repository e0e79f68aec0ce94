"""Tier math: graduated and volume pricing of an integer quantity, exactly.

Quantities are counted in base units (jobs, or tokens) while a step's `up_to` and `price` are
given in plan units (jobs, or millions of tokens). `unit` is the number of base units in a plan
unit (1, or 10**6), so every step bound becomes an exact integer and every amount is
`base units × price / unit`, an exact `Decimal` (a terminating division by a power of ten).

Semantics follow Stripe's tiered prices (`up_to` is inclusive, the last step is unbounded):

- graduated: each unit is priced by the step it falls in; one charge per step reached;
- volume: every unit is priced at the step the total quantity reaches; one charge.

A step's `flat` fee (Stripe's `flat_amount`) is due once when the quantity reaches into that
step, so a quantity of 0 costs nothing: a fee owed regardless of usage is a plan's
`platform_fee`, not a tier's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
)
from typing import Protocol

EXACT = Context(
    prec=60, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact, Rounded]
)
"""Arithmetic that refuses to round: plan amounts have at most 12 decimals and 15 integer digits
and quantities fit in int64, so 60 digits always suffice; if they ever did not, the trap raises
instead of silently changing an amount (DESIGN.md invariant 2)."""

ZERO = Decimal(0)


class Step(Protocol):
    """One tier step as configured (`pricing.plans.TierStep`)."""

    @property
    def up_to(self) -> Decimal | None: ...

    @property
    def price(self) -> Decimal: ...

    @property
    def flat(self) -> Decimal: ...


@dataclass(frozen=True, slots=True)
class TierCharge:
    """The units of one step: `quantity` base units at `price` per plan unit, plus its flat fee."""

    step: int  # 1-based position of the step in the table
    first: int  # first base unit of the step (1-based), for descriptions
    last: int | None  # last base unit of the step, None when unbounded
    quantity: int
    price: Decimal
    amount: Decimal  # exact: quantity × price / unit
    flat: Decimal

    def describe(self, mode: str, unit: int) -> str:
        """An invoice line description, e.g. `Tier 2 (jobs 1,001–5,000), price per job`."""
        what, per = ("tokens", "per 1M tokens") if unit > 1 else ("jobs", "per job")
        upper = "∞" if self.last is None else f"{self.last:,}"
        if mode == "graduated":
            return f"Tier {self.step} ({what} {self.first:,}–{upper}), price {per}"
        return f"Volume tier {self.step} (up to {upper} {what}) for all {self.quantity:,}, price {per}"


def exact_amount(quantity: int, price: Decimal, unit: int = 1) -> Decimal:
    """`quantity × price / unit` without any rounding (raises rather than round)."""
    return EXACT.divide(EXACT.multiply(Decimal(quantity), price), Decimal(unit))


def bounds(steps: Sequence[Step], unit: int = 1) -> list[int | None]:
    """Each step's inclusive upper bound in base units (None for the unbounded last step)."""
    return [None if s.up_to is None else int(EXACT.multiply(s.up_to, Decimal(unit))) for s in steps]


def graduated(quantity: int, steps: Sequence[Step], unit: int = 1) -> list[TierCharge]:
    """One charge per step the quantity reaches, each unit at its own step's price."""
    charges: list[TierCharge] = []
    lower = 0
    for position, (step, upper) in enumerate(zip(steps, bounds(steps, unit), strict=True), start=1):
        if quantity <= lower:
            break
        in_step = (quantity if upper is None else min(quantity, upper)) - lower
        charges.append(
            TierCharge(
                position,
                lower + 1,
                upper,
                in_step,
                step.price,
                exact_amount(in_step, step.price, unit),
                step.flat,
            )
        )
        if upper is None:
            break
        lower = upper
    if quantity > lower and (not charges or charges[-1].last is not None):
        raise ValueError(f"quantity {quantity} exceeds the last bounded step")
    return charges


def volume(quantity: int, steps: Sequence[Step], unit: int = 1) -> list[TierCharge]:
    """A single charge: all units at the price of the step the total reaches."""
    if quantity <= 0:
        return []
    lower = 0
    for position, (step, upper) in enumerate(zip(steps, bounds(steps, unit), strict=True), start=1):
        if upper is None or quantity <= upper:
            return [
                TierCharge(
                    position,
                    lower + 1,
                    upper,
                    quantity,
                    step.price,
                    exact_amount(quantity, step.price, unit),
                    step.flat,
                )
            ]
        lower = upper
    raise ValueError(f"quantity {quantity} exceeds the last bounded step")


def price_tiers(quantity: int, mode: str, steps: Sequence[Step], unit: int = 1) -> list[TierCharge]:
    """Dispatch on the tier mode (`graduated` or `volume`)."""
    if quantity < 0:
        raise ValueError("a tiered quantity cannot be negative")
    if mode == "graduated":
        return graduated(quantity, steps, unit)
    if mode == "volume":
        return volume(quantity, steps, unit)
    raise ValueError(f"unknown tier mode {mode!r}")


def tier_total(quantity: int, mode: str, steps: Sequence[Step], unit: int = 1) -> Decimal:
    """The exact amount of a tiered quantity, flat fees included (used for marginal quotes)."""
    total = ZERO
    for charge in price_tiers(quantity, mode, steps, unit):
        total = EXACT.add(EXACT.add(total, charge.amount), charge.flat)
    return total


def step_problems(steps: Sequence[Step], unit: int, unit_name: str) -> list[tuple[str, str]]:
    """Ordering problems as (path relative to the tier table, message).

    `up_to` must be strictly increasing, only the last step is unbounded (and it must be, or some
    usage would have no price), and a bound must be a whole number of base units.
    """
    problems: list[tuple[str, str]] = []
    previous: Decimal | None = None
    for index, step in enumerate(steps):
        path = f"steps[{index}].up_to"
        last = index == len(steps) - 1
        if step.up_to is None:
            if not last:
                problems.append((path, "only the last step may be unbounded (null)"))
            continue
        if last:
            problems.append(
                (path, "the last step must be unbounded (null) so that every quantity has a price")
            )
        scaled = EXACT.multiply(step.up_to, Decimal(unit))
        if scaled != scaled.to_integral_value():
            problems.append((path, f"must be a whole number of {unit_name}"))
        if previous is not None and step.up_to <= previous:
            problems.append((path, f"must be greater than the previous step's up_to ({previous})"))
        previous = step.up_to
    return problems
