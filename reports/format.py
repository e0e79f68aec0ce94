"""How the dashboard writes numbers, months and currencies for people: from the exact figures
(integer minor units, micro-units, decimal text of the CSVs), never through floats."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from metering.core.money import minor_unit, quantize

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CAD": "CA$", "AUD": "A$", "CHF": "CHF "}
MINUS = "−"  # U+2212, the typographic minus


COST_PLACES = 6  # a task's provider cost keeps six decimals (DESIGN.md invariant 2); other money its minor unit


def money(amount: Decimal, currency: str, places: int | None = None, suffix: str = "") -> str:
    """The one way money is written for people: $1,234.56, −€4.60, ¥1,235, 12.00 SEK.

    Rounded once, half up, from the exact Decimal to the currency's minor unit (or to `places`:
    `COST_PLACES` for a task's provider cost, a unit price's own decimals); thousands separated;
    the sign before the symbol; never through a float. `suffix`: the k or M of an axis label.
    """
    places = minor_unit(currency) if places is None else places
    rounded = quantize(amount, places)
    sign = MINUS if rounded < 0 else ""
    text = f"{abs(rounded):,.{places}f}"
    symbol = SYMBOLS.get(currency)
    return f"{sign}{symbol}{text}{suffix}" if symbol else f"{sign}{text}{suffix} {currency}"


def money_text(text: str, currency: str) -> str:
    """An amount of the CSVs (decimal text: amounts, margins, costs, prices) in the minor unit."""
    return money(Decimal(text), currency) if text else "—"


def task_cost(cost: Decimal | str, currency: str) -> str:
    """A task's provider cost (the tasks CSV's six decimals, or an exact Decimal): $0.236141."""
    return money(Decimal(cost), currency, COST_PLACES) if cost != "" else "—"


def unit_price(price: Decimal | str, currency: str) -> str:
    """A price per unit (per job, per million tokens) with all of its decimals, at least the
    currency's minor unit: $6.00, $0.125."""
    value = Decimal(price)
    decimals = max(0, -int(value.normalize().as_tuple().exponent)) if value else 0
    return money(value, currency, max(minor_unit(currency), decimals))


def quantity(text: str) -> str:
    """An invoice line's quantity (decimal text, as billed) with thousands separators: 2,025,670."""
    return f"{Decimal(text):,}"


def instant(text: str) -> str:
    """An RFC 3339 UTC instant of the CSVs to the second, for people: 2026-09-25 17:02:20."""
    return text[:19].replace("T", " ") if text else ""


def clock(at: datetime) -> str:
    return f"{at:%d %b %Y %H:%M:%S}"


def compact_money(amount: Decimal, currency: str) -> str:
    """Axis labels, through `money`: $0.005, $1.2, $15, $2.5k, −$1.2M (no trailing zeros)."""
    value = abs(amount)
    for limit, suffix in ((Decimal(10**9), "B"), (Decimal(10**6), "M"), (Decimal(1000), "k")):
        if value >= limit:
            return money(_trimmed(amount / limit, 1), currency, _places(_trimmed(amount / limit, 1)), suffix)
    rounded = _trimmed(amount, 0 if value >= 100 else 1 if value >= 10 or value == 0 else 4)
    return money(rounded, currency, _places(rounded))


def _trimmed(value: Decimal, places: int) -> Decimal:
    return quantize(value, places).normalize()


def _places(value: Decimal) -> int:
    return max(0, -int(value.as_tuple().exponent))


def percent(fraction: Decimal | None) -> str:
    if fraction is None:
        return "—"
    value = quantize(fraction * 100, 1)
    return f"{MINUS if value < 0 else ''}{abs(value):.1f} %"


def count(value: int) -> str:
    return f"{value:,}"


MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # fmt: skip


def month_long(label: str) -> str:
    year, month = label.split("-")
    return f"{MONTHS[int(month) - 1]} {year}"


def month_short(label: str, *, first: bool = False) -> str:
    year, month = label.split("-")
    name = MONTHS[int(month) - 1][:3]
    return f"{name} {year[2:]}" if first or month == "01" else name


def day_text(day: date) -> str:
    return f"{day:%d %b %Y}"
