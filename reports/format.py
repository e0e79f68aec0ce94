"""How the dashboard writes numbers, months and currencies for people: from the exact figures
(integer minor units, micro-units, decimal text of the CSVs), never through floats."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from metering.money import minor_unit, quantize

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CAD": "CA$", "AUD": "A$", "CHF": "CHF "}
MINUS = "−"  # U+2212, the typographic minus


def _grouped(amount: Decimal, places: int) -> str:
    return f"{abs(quantize(amount, places)):,.{places}f}"


def money(amount: Decimal, currency: str, places: int | None = None) -> str:
    """$1,234.56 (or −$4.60); `places` defaults to the currency's minor unit."""
    places = minor_unit(currency) if places is None else places
    sign = MINUS if quantize(amount, places) < 0 else ""
    symbol = SYMBOLS.get(currency)
    text = _grouped(amount, places)
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency}"


def money_text(text: str, currency: str) -> str:
    """A CSV amount or cost (decimal text) written for people, with all of its decimals."""
    if not text:
        return "—"
    places = len(text.partition(".")[2])
    return money(Decimal(text), currency, places)


def compact_money(amount: Decimal, currency: str) -> str:
    """Axis labels: $0.005, $1.20, $15, $2.5k, $1.2M."""
    symbol = SYMBOLS.get(currency, "")
    sign = MINUS if amount < 0 else ""
    value = abs(amount)
    for limit, suffix in ((Decimal(10**9), "B"), (Decimal(10**6), "M"), (Decimal(1000), "k")):
        if value >= limit:
            scaled = value / limit
            return f"{sign}{symbol}{_trim(scaled)}{suffix}"
    if value >= 10 or value == 0:
        return f"{sign}{symbol}{_trim(value, 0 if value >= 100 else 1)}"
    return f"{sign}{symbol}{_trim(value, 4)}"


def _trim(value: Decimal, places: int = 1) -> str:
    text = f"{quantize(value, places):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


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
