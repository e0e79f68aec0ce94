"""Exact money.

Inside taskmeter, money is integer nano-units (1e-9 of the currency) or `Decimal`; never a float.
Money leaves the exact domain through `quantize` only: `round_money` for invoice lines (the one
rounding that changes what a customer pays) and `display_cost` for per-task costs shown with six
decimals.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

NANOS = 10**9
"""Nano-units per currency unit."""

TOKENS_PER_MILLION = 10**6

# ISO 4217 minor units that differ from 2 (Stripe's zero- and three-decimal currencies included).
_MINOR_UNITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}  # fmt: skip


def minor_unit(currency: str) -> int:
    """Decimal places of the currency's minor unit (2 for USD, 0 for JPY, 3 for KWD)."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def quantize(amount: Decimal, places: int) -> Decimal:
    """The one rounding of taskmeter: `places` decimals, half away from zero."""
    return amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round an invoice line amount to the currency's minor unit (DESIGN.md invariant 2)."""
    return quantize(amount, minor_unit(currency))


def display_cost(nanos: int, rem: int = 0) -> Decimal:
    """A provider cost for display: six decimals (micro-units), never scientific notation.

    `rem` is the exact remainder below a nano-unit in 1e-15 (see `metering.costs.prices`), so the cost
    is rounded once, from its exact value.
    """
    return quantize(Decimal(int(nanos)).scaleb(-9) + Decimal(int(rem)).scaleb(-15), 6)


def unrounded(amount: Decimal, currency: str) -> Decimal:
    """An unrounded amount for display: exact, without trailing zeros, but with at least the
    currency's minor unit (`0.08925`, `0.153`, `12.00` in USD). Adding zeros rounds nothing."""
    places = minor_unit(currency)
    normalized = amount.normalize()
    exponent = normalized.as_tuple().exponent
    if isinstance(exponent, int) and -exponent < places:
        return quantize(amount, places)
    return normalized


def nanos_to_decimal(nanos: int) -> Decimal:
    """Exact: an integer count of nano-units as a Decimal amount."""
    return Decimal(int(nanos)).scaleb(-9)


def decimal_to_nanos(amount: Decimal) -> int:
    """Exact conversion; raises ValueError when the amount has more than nine decimals."""
    scaled = amount.scaleb(9)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more precision than a nano-unit")
    return int(scaled)


def money_str(amount: Decimal, places: int) -> str:
    """Fixed-point text with exactly `places` decimals (never `1E-7`)."""
    return f"{quantize(amount, places):.{places}f}"


def to_minor(amount: Decimal, currency: str) -> int:
    """A rounded amount in the currency's minor unit (exact: raises if it is not rounded)."""
    scaled = amount.scaleb(minor_unit(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} is not rounded to {currency}'s minor unit")
    return int(scaled)


def from_minor(minor: int, currency: str) -> Decimal:
    """An amount stored in the currency's minor unit, with exactly its decimals."""
    places = minor_unit(currency)
    return Decimal(money_str(Decimal(int(minor)).scaleb(-places), places))


def parse_decimal(text: object, *, allow_negative: bool = False) -> Decimal:
    """A Decimal from config or API text. Rejects floats, bools, NaN, infinities and negatives."""
    if isinstance(text, bool) or isinstance(text, float):
        raise ValueError("must be a decimal string such as \"1.25\", not a float")
    if isinstance(text, int):
        value = Decimal(text)
    elif isinstance(text, Decimal):
        value = text
    elif isinstance(text, str):
        try:
            value = Decimal(text.strip())
        except InvalidOperation:
            raise ValueError(f"{text!r} is not a decimal number") from None
    else:
        raise ValueError(f"must be a decimal string, not {type(text).__name__}")
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value < 0 and not allow_negative:
        raise ValueError("must not be negative")
    return value
