"""Billing periods: calendar months in the tenant's IANA time zone, half-open [start, end)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from metering.errors import InvalidInput

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class Period:
    """A tenant-local calendar month."""

    first_day: date  # the 1st, tenant-local
    timezone: str

    @property
    def label(self) -> str:
        return f"{self.first_day:%Y-%m}"

    @property
    def next_first_day(self) -> date:
        y, m = self.first_day.year, self.first_day.month
        return date(y + (m == 12), 1 if m == 12 else m + 1, 1)

    @property
    def start(self) -> datetime:
        """The first instant of the month, in UTC."""
        return local_midnight(self.first_day, self.timezone)

    @property
    def end(self) -> datetime:
        """The first instant after the month, in UTC (exclusive)."""
        return local_midnight(self.next_first_day, self.timezone)

    def next(self) -> Period:
        return Period(self.next_first_day, self.timezone)

    def previous(self) -> Period:
        y, m = self.first_day.year, self.first_day.month
        return Period(date(y - (m == 1), 12 if m == 1 else m - 1, 1), self.timezone)


def local_midnight(day: date, timezone: str) -> datetime:
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(timezone)).astimezone(UTC)


def period_of(moment: datetime, timezone: str) -> Period:
    local = moment.astimezone(ZoneInfo(timezone))
    return Period(date(local.year, local.month, 1), timezone)


def parse_month(text: str, timezone: str, *, field: str = "month") -> Period:
    match = _MONTH.match(text or "")
    if match is None:
        raise InvalidInput("invalid month", detail=[{"field": field, "message": f"{text!r} is not a month like 2026-10"}])
    year = int(match.group(1))
    if not 1970 <= year <= 9998:  # year 0 does not exist, and a month's bounds must stay representable
        raise InvalidInput("invalid month", detail=[{"field": field, "message": f"{text!r} is not between 1970-01 and 9998-12"}])
    return Period(date(year, int(match.group(2)), 1), timezone)
