"""Billing periods: calendar months in the tenant's IANA time zone, half-open [start, end)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from metering.errors import InvalidInput
from metering.schemas import REPRESENTABLE_FROM, REPRESENTABLE_UNTIL, rfc3339

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
# The months and days a query may name: those whose instants every layer can represent
# (metering.schemas), whatever the tenant's time zone.
FIRST_MONTH, LAST_MONTH = "1970-01", "2261-12"
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(2262, 1, 1)  # LAST_DAY: as an exclusive end


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
    def last_day(self) -> date:
        return self.next_first_day - timedelta(days=1)

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
    if not FIRST_MONTH <= text <= LAST_MONTH:  # year 0 does not exist, and a month's bounds must stay representable
        message = f"{text!r} is not between {FIRST_MONTH} and {LAST_MONTH}"
        raise InvalidInput("invalid month", detail=[{"field": field, "message": message}])
    return Period(date(int(match.group(1)), int(match.group(2)), 1), timezone)


def parse_day(text: str, *, field: str) -> date:
    """A calendar day from `YYYY-MM-DD` exactly (no number, no time), between 1970-01-01 and 2262-01-01."""
    problem = f"{text!r} is not a day like 2026-10-01"
    if _DAY.match(text or ""):
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
    if _INSTANT.match(text or ""):
        digits = re.sub(r"(\.\d{6})\d+", r"\1", text)  # Python keeps microseconds
        try:
            moment = datetime.fromisoformat(digits.upper().replace("Z", "+00:00"))
            if REPRESENTABLE_FROM <= moment < REPRESENTABLE_UNTIL:
                return moment
            problem = f"{text!r} is not {window}"
        except (ValueError, OverflowError):  # no such day or hour, or past year 9999 once in UTC
            problem = f"{text!r} is not a valid time {window}"
    raise InvalidInput("invalid time", detail=[{"field": field, "message": problem}])
