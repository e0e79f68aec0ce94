"""Periods of the tenant's calendar: days, weeks from Monday and months, at local midnights."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from metering.core.errors import InvalidInput
from metering.core.periods import Period, parse_day, parse_instant, parse_month, period_of

BERLIN, KOLKATA, NEW_YORK = "Europe/Berlin", "Asia/Kolkata", "America/New_York"


class TestMonths:
    def test_a_month_is_the_default_kind_and_spans_its_calendar_month(self) -> None:
        october = Period(date(2026, 10, 1), BERLIN)
        assert october == Period(date(2026, 10, 1), BERLIN, "month")
        assert (october.label, october.last_day, october.days) == ("2026-10", date(2026, 10, 31), 31)
        # Berlin leaves summer time on 2026-10-25: the month starts at UTC+2 and ends at UTC+1.
        assert (october.start, october.end) == (
            datetime(2026, 9, 30, 22, tzinfo=UTC),
            datetime(2026, 10, 31, 23, tzinfo=UTC),
        )

    def test_next_and_previous_cross_the_year(self) -> None:
        december = Period(date(2026, 12, 1), KOLKATA)
        assert december.next() == Period(date(2027, 1, 1), KOLKATA)
        assert december.next().previous() == december
        assert Period(date(2026, 3, 1), KOLKATA).previous().days == 28

    def test_the_month_of_an_instant_changes_at_local_midnight_in_india(self) -> None:
        # UTC+05:30: 18:29:59Z on the 30th is 23:59:59 local; a second later it is December.
        assert period_of(datetime(2026, 11, 30, 18, 29, 59, tzinfo=UTC), KOLKATA).label == "2026-11"
        december = period_of(datetime(2026, 11, 30, 18, 30, tzinfo=UTC), KOLKATA)
        assert december == Period(date(2026, 12, 1), KOLKATA)
        assert december.start == datetime(2026, 11, 30, 18, 30, tzinfo=UTC)


class TestDays:
    def test_a_day_in_india_runs_from_local_midnight_to_local_midnight(self) -> None:
        day = period_of(datetime(2026, 11, 30, 18, 30, tzinfo=UTC), KOLKATA, "day")
        assert (day.first_day, day.kind, day.label, day.days) == (date(2026, 12, 1), "day", "2026-12-01", 1)
        assert (day.start, day.end) == (
            datetime(2026, 11, 30, 18, 30, tzinfo=UTC),
            datetime(2026, 12, 1, 18, 30, tzinfo=UTC),
        )

    @pytest.mark.parametrize(("day", "hours"), [(date(2026, 10, 25), 25), (date(2026, 3, 29), 23), (date(2026, 3, 30), 24)])
    def test_days_across_dst_changes_have_their_local_length(self, day: date, hours: int) -> None:
        period = Period.holding(day, BERLIN, "day")
        assert period.end - period.start == timedelta(hours=hours)

    def test_next_and_previous_step_one_day_across_months(self) -> None:
        last = Period(date(2026, 10, 31), NEW_YORK, "day")
        assert last.next() == Period(date(2026, 11, 1), NEW_YORK, "day")
        assert last.next().previous() == last
        assert last.next().start == datetime(2026, 11, 1, 4, tzinfo=UTC)  # still EDT at midnight


class TestWeeks:
    def test_a_week_starts_on_monday(self) -> None:
        # 2026-10-25 is a Sunday: its week began on Monday the 19th.
        for day in (date(2026, 10, 19), date(2026, 10, 22), date(2026, 10, 25)):
            assert Period.holding(day, BERLIN, "week").first_day == date(2026, 10, 19)
        assert Period.holding(date(2026, 10, 26), BERLIN, "week").first_day == date(2026, 10, 26)

    def test_a_week_across_the_dst_change_has_one_more_hour(self) -> None:
        week = period_of(datetime(2026, 10, 25, 12, tzinfo=UTC), BERLIN, "week")
        assert (week.first_day, week.last_day, week.days, week.label) == (
            date(2026, 10, 19), date(2026, 10, 25), 7, "2026-10-19",
        )  # fmt: skip
        assert (week.start, week.end) == (
            datetime(2026, 10, 18, 22, tzinfo=UTC),
            datetime(2026, 10, 25, 23, tzinfo=UTC),
        )

    def test_weeks_run_across_months_and_years(self) -> None:
        week = Period.holding(date(2027, 1, 1), KOLKATA, "week")  # a Friday
        assert week.first_day == date(2026, 12, 28)
        assert week.next() == Period(date(2027, 1, 4), KOLKATA, "week")
        assert week.previous() == Period(date(2026, 12, 21), KOLKATA, "week")
        assert week.start == datetime(2026, 12, 27, 18, 30, tzinfo=UTC)

    def test_the_week_of_an_instant_is_that_of_its_local_day(self) -> None:
        # Monday 00:10 in Kolkata is still Sunday in UTC.
        moment = datetime(2026, 10, 25, 18, 40, tzinfo=UTC)
        assert period_of(moment, KOLKATA, "week").first_day == date(2026, 10, 26)
        assert period_of(moment, "UTC", "week").first_day == date(2026, 10, 19)


class TestParsing:
    """Months, days and instants from text: ASCII digits, the whole text, nothing else."""

    @pytest.mark.parametrize("text", ["1٠00-01", "２０２６-10", "2026-10\n", " 2026-10", "2026-1", "2026-13"])
    def test_a_month_is_four_ascii_digits_and_a_month_number(self, text: str) -> None:
        with pytest.raises(InvalidInput) as refused:
            parse_month(text, "UTC")
        assert refused.value.detail[0]["field"] == "month"

    def test_a_month_parses(self) -> None:
        assert parse_month("2026-10", KOLKATA) == Period(date(2026, 10, 1), KOLKATA)

    @pytest.mark.parametrize("text", ["2026-1٠-01", "2026-10-01\n"])
    def test_a_day_is_ascii_digits_only(self, text: str) -> None:
        with pytest.raises(InvalidInput):
            parse_day(text, field="from")

    @pytest.mark.parametrize("text", ["2026-10-05T12:00:0٠Z", "2026-10-05T12:00:00Z\n"])
    def test_an_instant_is_ascii_digits_only(self, text: str) -> None:
        with pytest.raises(InvalidInput):
            parse_instant(text, field="since")
        assert parse_instant(text.strip().replace("٠", "0"), field="since") == datetime(2026, 10, 5, 12, tzinfo=UTC)
