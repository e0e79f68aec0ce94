"""When a month may be closed: its end in the tenant's time zone plus the grace period, to the
microsecond; DST, +05:30, December to January and leap years included."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from metering.core.periods import Period
from pricing.close_schedule import closable_through, is_closable, months_to_close

HOUR = timedelta(hours=1)
ZERO = timedelta(0)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class TestClosableThrough:
    @pytest.mark.parametrize(
        ("timezone", "now", "grace", "expected"),
        [
            # UTC: the last microsecond of October vs the first of November
            ("UTC", utc(2026, 10, 31, 23, 59, 59, 999999), ZERO, "2026-09"),
            ("UTC", utc(2026, 11, 1, 0, 0, 0), ZERO, "2026-10"),
            # the grace period: one hour after midnight, exactly
            ("UTC", utc(2026, 11, 1, 0, 59, 59, 999999), HOUR, "2026-09"),
            ("UTC", utc(2026, 11, 1, 1, 0, 0), HOUR, "2026-10"),
            # New York: October ends at 04:00 UTC (EDT, UTC-4) ...
            ("America/New_York", utc(2026, 11, 1, 3, 59, 59, 999999), ZERO, "2026-09"),
            ("America/New_York", utc(2026, 11, 1, 4, 0, 0), ZERO, "2026-10"),
            # ... and November, after the DST change of Nov 1, at 05:00 UTC (EST, UTC-5)
            ("America/New_York", utc(2026, 12, 1, 4, 59, 59, 999999), ZERO, "2026-10"),
            ("America/New_York", utc(2026, 12, 1, 5, 0, 0), ZERO, "2026-11"),
            ("America/New_York", utc(2026, 12, 1, 6, 0, 0), HOUR, "2026-11"),
            ("America/New_York", utc(2026, 12, 1, 5, 59, 59), HOUR, "2026-10"),
            # Kolkata (+05:30): October ends at 18:30 UTC on the 31st
            ("Asia/Kolkata", utc(2026, 10, 31, 18, 29, 59, 999999), ZERO, "2026-09"),
            ("Asia/Kolkata", utc(2026, 10, 31, 18, 30, 0), ZERO, "2026-10"),
            # December to January: the year turns
            ("UTC", utc(2026, 12, 31, 23, 59, 59, 999999), ZERO, "2026-11"),
            ("UTC", utc(2027, 1, 1, 0, 0, 0), ZERO, "2026-12"),
            ("UTC", utc(2027, 1, 1, 0, 30, 0), HOUR, "2026-11"),
            ("Asia/Kolkata", utc(2026, 12, 31, 18, 30, 0), ZERO, "2026-12"),
            # a leap year's February has 29 days, a common year's 28
            ("UTC", utc(2028, 2, 29, 23, 59, 59, 999999), ZERO, "2028-01"),
            ("UTC", utc(2028, 3, 1, 0, 0, 0), ZERO, "2028-02"),
            ("UTC", utc(2027, 2, 28, 23, 59, 59, 999999), ZERO, "2027-01"),
            ("UTC", utc(2027, 3, 1, 0, 0, 0), ZERO, "2027-02"),
        ],
    )
    def test_month_boundaries(self, timezone: str, now: datetime, grace: timedelta, expected: str) -> None:
        assert closable_through(now, timezone, grace).label == expected

    def test_agrees_with_is_closable(self) -> None:
        november = Period(date(2026, 11, 1), "America/New_York")
        assert november.end == utc(2026, 12, 1, 5)
        for now in (november.end + HOUR - timedelta(microseconds=1), november.end + HOUR):
            through = closable_through(now, "America/New_York", HOUR)
            assert is_closable(november, now, HOUR) == (through.first_day >= november.first_day)


class TestMonthsToClose:
    def test_from_the_first_month_without_a_bookmark(self) -> None:
        first = Period(date(2026, 9, 1), "UTC")
        through = Period(date(2026, 11, 1), "UTC")
        assert [p.label for p in months_to_close(None, first, through)] == ["2026-09", "2026-10", "2026-11"]

    def test_after_the_bookmark_across_the_year(self) -> None:
        first = Period(date(2026, 1, 1), "UTC")
        through = Period(date(2027, 2, 1), "UTC")
        assert [p.label for p in months_to_close("2026-11", first, through)] == [
            "2026-12",
            "2027-01",
            "2027-02",
        ]

    def test_nothing_when_up_to_date_or_not_yet_due(self) -> None:
        first = Period(date(2026, 11, 1), "UTC")
        assert months_to_close("2026-11", first, Period(date(2026, 11, 1), "UTC")) == []
        assert months_to_close(None, first, Period(date(2026, 10, 1), "UTC")) == []
