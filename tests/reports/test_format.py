"""How the dashboard writes money, quantities and times for people, and the charts' exact axes
(no database)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reports.charts import MonthPoint, _ticks, months_chart
from reports.format import clock, compact_money, instant, money, money_text, quantity, task_cost, unit_price


class TestMoney:
    @pytest.mark.parametrize(("amount", "currency", "text"), [
        ("4.279063", "USD", "$4.28"), ("1234567.891", "USD", "$1,234,567.89"), ("0.005", "USD", "$0.01"),
        ("0.004999", "USD", "$0.00"), ("-4.605", "USD", "−$4.61"), ("-0.004", "USD", "$0.00"),
        ("1234.5", "EUR", "€1,234.50"), ("-0.5", "EUR", "−€0.50"),
        ("1234.5", "JPY", "¥1,235"), ("1234.49", "JPY", "¥1,234"), ("-2.5", "JPY", "−¥3"), ("987654321", "JPY", "¥987,654,321"),
        ("1.2345", "KWD", "1.235 KWD"), ("1000", "SEK", "1,000.00 SEK"),
    ])  # fmt: skip
    def test_the_minor_unit_rounded_half_up_once_with_sign_symbol_and_separators(
        self, amount: str, currency: str, text: str
    ) -> None:
        assert money(Decimal(amount), currency) == text
        assert money_text(amount, currency) == text

    @given(st.decimals(min_value=-(10**12), max_value=10**12, places=9))
    def test_the_text_reads_back_as_the_amount_rounded_half_up(self, amount: Decimal) -> None:
        text = money(amount, "USD")
        back = Decimal(text.replace("−", "-").replace("$", "").replace(",", ""))
        assert back == amount.quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
        assert len(text.split(".")[1]) == 2

    def test_a_tasks_provider_cost_keeps_six_decimals(self) -> None:
        assert task_cost("0.236141", "USD") == "$0.236141"
        assert task_cost(Decimal("1234.5678905"), "EUR") == "€1,234.567891"
        assert task_cost("", "USD") == "—"

    def test_unit_prices_keep_their_decimals_and_at_least_the_minor_unit(self) -> None:
        assert unit_price("6.00", "USD") == "$6.00"
        assert unit_price("6", "USD") == "$6.00"
        assert unit_price("0.125", "USD") == "$0.125"
        assert unit_price(Decimal("0.0000025"), "EUR") == "€0.0000025"
        assert unit_price("1200", "JPY") == "¥1,200"
        assert unit_price("0", "USD") == "$0.00"

    @pytest.mark.parametrize(("amount", "currency", "text"), [
        ("0", "USD", "$0"), ("0.005", "USD", "$0.005"), ("1.20", "USD", "$1.2"), ("99.95", "USD", "$100"),
        ("2500", "USD", "$2.5k"), ("-2500", "EUR", "−€2.5k"), ("1234567", "JPY", "¥1.2M"), ("2500", "SEK", "2.5k SEK"),
    ])  # fmt: skip
    def test_axis_labels_are_short_and_go_through_the_same_helper(self, amount: str, currency: str, text: str) -> None:
        assert compact_money(Decimal(amount), currency) == text

    def test_an_empty_cell_is_a_dash(self) -> None:
        assert money_text("", "USD") == "—"


class TestQuantitiesAndTimes:
    def test_quantities_have_thousands_separators(self) -> None:
        assert quantity("2025670") == "2,025,670"
        assert quantity("1") == "1"
        assert quantity("1234.5") == "1,234.5"

    def test_times_to_the_second(self) -> None:
        assert instant("2026-10-20T12:05:00.250000Z") == "2026-10-20 12:05:00"
        assert instant("2026-10-20T12:05:00Z") == "2026-10-20 12:05:00"
        assert instant("") == ""
        assert clock(datetime(2026, 12, 6, 2, 30, 58, 999_999, tzinfo=UTC)) == "06 Dec 2026 02:30:58"


class TestCharts:
    @pytest.mark.parametrize(("low", "high", "ticks"), [
        ("0", "137.45", ["0", "50", "100", "150"]), ("-2.32", "8.13", ["-5", "0", "5", "10"]),
        ("0", "0.0031", ["0", "0.001", "0.002", "0.003", "0.004"]), ("-16.4", "0", ["-20", "-15", "-10", "-5", "0"]),
        ("0", "0.3", ["0", "0.1", "0.2", "0.3"]),
    ])  # fmt: skip
    def test_axis_ticks_are_exact_round_numbers_covering_the_figures(self, low: str, high: str, ticks: list[str]) -> None:
        assert _ticks(Decimal(low), Decimal(high)) == [Decimal(t) for t in ticks]

    def test_the_months_chart_names_every_month_it_is_given(self) -> None:
        months = [f"2026-{m:02d}" for m in range(1, 13)]
        points = [MonthPoint(m, "ready" if m >= "2026-09" else "empty", Decimal("1.5"), Decimal("0.25"), Decimal("1.25"))
                  for m in months]  # fmt: skip
        svg = months_chart(points, "EUR", selected="2026-12")
        labels = re.findall(r'<text class="axis[^"]*"[^>]*>([^<]*)</text>', svg)
        assert labels == ["€0", "€0.5", "€1", "€1.5", "Jan 26", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
                          "Oct", "Nov", "Dec"]  # fmt: skip
        assert svg.count('class="bar revenue"') == 4

    def test_the_selected_month_is_behind_and_the_margin_line_above_the_bars(self) -> None:
        points = [MonthPoint(m, "ready", Decimal(0), Decimal(15), Decimal(-15)) for m in ("2026-10", "2026-11", "2026-12")]
        svg = months_chart(points, "USD", selected="2026-12")
        assert svg.index('class="highlight"') < svg.index('class="grid')
        assert svg.rindex('class="bar cost"') < svg.index('class="margin-line"') < svg.index('class="dot loss"')
        assert svg.count('class="dot loss"') == 3
