"""Text of the reports' numeric cells: the same figures on the CSVs and on the dashboard.

Amounts and margins are integer minor units of their currency; provider costs are integer
micro-units (the six decimals of DESIGN.md), rounded half up from the exact cost by `micro_units`
(equal to `metering.core.money.display_cost`, on plain integers so that a million tasks stay fast);
instants are integer microseconds since the epoch, written RFC 3339 in UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import numpy as np

from metering.core.money import minor_unit, money_str

_FEMTOS_PER_MICRO = 10**9
_FEMTOS_PER_NANO = 10**6


def micro_units(nanos: int, rem: int = 0) -> int:
    """A cost of `nanos`·1e-9 + `rem`·1e-15 in micro-units, rounded half up (never negative)."""
    return (nanos * _FEMTOS_PER_NANO + rem + _FEMTOS_PER_MICRO // 2) // _FEMTOS_PER_MICRO


def cost_text(micros: int) -> str:
    """Six decimals, never scientific notation: 1234567 -> 1.234567."""
    sign, value = ("-", -micros) if micros < 0 else ("", micros)
    return f"{sign}{value // 10**6}.{value % 10**6:06d}"


def cost_decimal(micros: int) -> Decimal:
    return Decimal(micros).scaleb(-6)


def minor_text(minor: int, currency: str) -> str:
    """An amount in minor units as text with the currency's decimals: 1234 USD -> 12.34."""
    places = minor_unit(currency)
    return money_str(Decimal(minor).scaleb(-places), places)


def minor_decimal(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-minor_unit(currency))


def decimal_text(value: Decimal | None) -> str:
    return "" if value is None else f"{value:f}"


def bool_text(value: bool) -> str:
    return "true" if value else "false"


def instants_text(values: Sequence[int | None]) -> list[str]:
    """RFC 3339 UTC text of microsecond instants (empty for None): seconds, with a fraction only
    when there is one (2026-10-15T12:00:00Z, 2026-10-15T12:00:00.250000Z)."""
    column = np.array(values, dtype=object)
    missing = column == None  # noqa: E711 - elementwise, on an object array
    column[missing] = 0
    return instants_array_text(column.astype(np.int64), missing)


def instants_array_text(micros: np.ndarray, missing: np.ndarray) -> list[str]:
    """`instants_text` of int64 microseconds, with a mask of the missing ones."""
    if not len(micros):
        return []
    stamps = micros.astype("datetime64[us]")
    text = np.datetime_as_string(stamps.astype("datetime64[s]"), unit="s").astype(object)
    fraction = micros % 1_000_000 != 0
    if fraction.any():
        text[fraction] = np.datetime_as_string(stamps[fraction], unit="us")
    text = text + "Z"
    text[missing] = ""
    return text.tolist()  # type: ignore[no-any-return]
