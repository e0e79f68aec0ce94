"""Periods of the tenant's calendar: a day, a week from Monday, or a calendar month of
tenant-local days, with their instants in the tenant's IANA time zone, half-open [start, end).
Billing periods are months; budgets use all three."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from metering.core.errors import InvalidInput
from metering.core.times import REPRESENTABLE_FROM, REPRESENTABLE_UNTIL, rfc3339

PeriodKind = Literal["day", "week", "month"]
# ASCII digits only (`\d` would take any script's, `int` reads them: "1٠00" is the year 1000), and
# the whole text (`$` would let a final newline through).
_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])", re.ASCII)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
# The months and days a query may name: those whose instants every layer can represent
# (metering.events.schemas), whatever the tenant's time zone.
FIRST_MONTH, LAST_MONTH = "1970-01", "2261-12"
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(2262, 1, 1)  # LAST_DAY: as an exclusive end


@dataclass(frozen=True)
class Period:
    """A span of tenant-local days of one `kind`: a day, a week from Monday, or a calendar month
    (the billing period, hence the default)."""

    first_day: date  # tenant-local: the day itself, the week's Monday, or the month's 1st
    timezone: str
    kind: PeriodKind = "month"

    @classmethod
    def holding(cls, day: date, timezone: str, kind: PeriodKind = "month") -> Period:
        """The period of `kind` that holds the tenant-local `day`."""
        return cls(first_day(kind, day), timezone, kind)

    @property
    def label(self) -> str:
        """`2026-10` for a month; the first day (`2026-10-19`) for a day or a week."""
        return f"{self.first_day:%Y-%m}" if self.kind == "month" else self.first_day.isoformat()

    @property
    def next_first_day(self) -> date:
        first = self.first_day
        if self.kind == "day":
            return first + timedelta(days=1)
        if self.kind == "week":
            return first + timedelta(days=7)
        return date(first.year + (first.month == 12), 1 if first.month == 12 else first.month + 1, 1)

    @property
    def last_day(self) -> date:
        return self.next_first_day - timedelta(days=1)

    @property
    def days(self) -> int:
        return (self.next_first_day - self.first_day).days

    @property
    def start(self) -> datetime:
        """The period's first instant, in UTC."""
        return local_midnight(self.first_day, self.timezone)

    @property
    def end(self) -> datetime:
        """The first instant after the period, in UTC (exclusive)."""
        return local_midnight(self.next_first_day, self.timezone)

    def next(self) -> Period:
        return Period(self.next_first_day, self.timezone, self.kind)

    def previous(self) -> Period:
        return Period.holding(self.first_day - timedelta(days=1), self.timezone, self.kind)


def first_day(kind: str, day: date) -> date:
    """The first day of the period of `kind` holding `day`: itself, its week's Monday, its month's 1st."""
    if kind == "day":
        return day
    if kind == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def local_midnight(day: date, timezone: str) -> datetime:
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(timezone)).astimezone(UTC)


def period_of(moment: datetime, timezone: str, kind: PeriodKind = "month") -> Period:
    """The period of `kind` holding the instant, in the tenant's calendar."""
    return Period.holding(moment.astimezone(ZoneInfo(timezone)).date(), timezone, kind)


def parse_month(text: str, timezone: str, *, field: str = "month") -> Period:
    match = _MONTH.fullmatch(text or "")
    if match is None:
        raise InvalidInput("invalid month", detail=[{"field": field, "message": f"{text!r} is not a month like 2026-10"}])
    if not FIRST_MONTH <= text <= LAST_MONTH:  # year 0 does not exist, and a month's bounds must stay representable
        message = f"{text!r} is not between {FIRST_MONTH} and {LAST_MONTH}"
        raise InvalidInput("invalid month", detail=[{"field": field, "message": message}])
    return Period(date(int(match.group(1)), int(match.group(2)), 1), timezone)


def parse_day(text: str, *, field: str) -> date:
    """A calendar day from `YYYY-MM-DD` exactly (no number, no time), between 1970-01-01 and 2262-01-01."""
    problem = f"{text!r} is not a day like 2026-10-01"
    if _DAY.fullmatch(text or ""):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            pass
        else:
            if FIRST_DAY <= day <= LAST_DAY:
                return day
            problem = f"{text!r} is not between {FIRST_DAY} and {LAST_DAY}"
    raise InvalidInput("invalid day", detail=[{"field": field, "message": problem}])


def parse_instant(text: str, *, field: str) -> datetime:
    """An instant from RFC 3339 with its offset (`2026-10-05T12:00:00Z`, `...+02:00`), within
    the span every layer can represent; a bare number or a time without offset is refused."""
    window = f"between {rfc3339(REPRESENTABLE_FROM)} and {rfc3339(REPRESENTABLE_UNTIL)}"
    problem = f"{text!r} is not an RFC 3339 time with an offset, like 2026-10-05T12:00:00Z"
    if _INSTANT.fullmatch(text or ""):
        digits = re.sub(r"(\.\d{6})\d+", r"\1", text)  # Python keeps microseconds
        try:
            moment = datetime.fromisoformat(digits.upper().replace("Z", "+00:00"))
            if REPRESENTABLE_FROM <= moment < REPRESENTABLE_UNTIL:
                return moment
            problem = f"{text!r} is not {window}"
        except (ValueError, OverflowError):  # no such day or hour, or past year 9999 once in UTC
            problem = f"{text!r} is not a valid time {window}"
    raise InvalidInput("invalid time", detail=[{"field": field, "message": problem}])
