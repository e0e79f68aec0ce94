"""The reports' cells and writer, without a database."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.core.money import display_cost
from reports.cells import cost_text, instants_text, micro_units, minor_text
from reports.columns import Report
from reports.csvwriter import encode, neutralize
from reports.tasks import RunningCost


class TestCosts:
    @given(st.integers(0, 10**15), st.integers(0, 10**12))
    def test_micro_units_round_exactly_as_display_cost(self, nanos: int, rem: int) -> None:
        assert Decimal(cost_text(micro_units(nanos, rem))) == display_cost(nanos, rem)

    @pytest.mark.parametrize(("nanos", "rem", "text"), [
        (0, 0, "0.000000"), (499, 999_999, "0.000000"), (500, 0, "0.000001"), (1_234_567_890, 0, "1.234568"),
        (10**18, 0, "1000000000.000000"),
    ])  # fmt: skip
    def test_six_decimals_half_up_never_scientific(self, nanos: int, rem: int, text: str) -> None:
        assert cost_text(micro_units(nanos, rem)) == text

    @given(
        st.lists(
            st.tuples(st.sampled_from("abc"), st.integers(0, 10**12), st.integers(0, 10**9)), max_size=60
        ),
        st.integers(0, 60),
    )
    def test_running_rounding_adds_up_per_customer(self, rows: list[tuple[str, int, int]], cut: int) -> None:
        running = RunningCost()  # two batches: the running totals carry over
        shown: list[str] = []
        for part in (rows[:cut], rows[cut:]):
            shown += running.texts([r[0] for r in part], [r[1] for r in part], [r[2] for r in part])
        for customer in {r[0] for r in rows}:
            mine = [(r, s) for r, s in zip(rows, shown, strict=True) if r[0] == customer]
            exact = display_cost(sum(r[1] for r, _ in mine), sum(r[2] for r, _ in mine))
            assert sum(Decimal(s) for _, s in mine) == exact
            for (_, nanos, rem), text in mine:  # each within a micro-unit of its own rounding
                assert abs(Decimal(text) - display_cost(nanos, rem)) <= Decimal("0.000001")


class TestOtherCells:
    @pytest.mark.parametrize(("minor", "currency", "text"), [
        (125, "USD", "1.25"), (-460, "USD", "-4.60"), (0, "USD", "0.00"), (1234, "JPY", "1234"), (1234, "KWD", "1.234"),
    ])  # fmt: skip
    def test_amounts_have_the_currencys_minor_unit(self, minor: int, currency: str, text: str) -> None:
        assert minor_text(minor, currency) == text

    def test_instants_are_rfc3339_utc(self) -> None:
        assert instants_text([1_790_812_800_000_000, None, 1_790_812_800_250_000]) == [
            "2026-10-01T00:00:00Z", "", "2026-10-01T00:00:00.250000Z",
        ]  # fmt: skip
        assert instants_text([]) == []


class TestWriter:
    @pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
    def test_formula_starts_get_a_quote(self, text: str) -> None:
        assert neutralize(text) == "'" + text

    @pytest.mark.parametrize("text", ["acme", "", "1-2", " =x", "'quoted", "a=b"])
    def test_other_text_is_kept(self, text: str) -> None:
        assert neutralize(text) == text

    def test_only_text_columns_are_neutralized_and_quoting_is_rfc4180(self) -> None:
        report = Report("t", ("name", "amount"), frozenset({"name"}))
        data = b"".join(
            encode(
                report, [{"name": ["=x", 'a,"b"\nc'], "amount": ["-1.50", "2"]}, {"name": [], "amount": []}]
            )
        )
        assert data == b'name,amount\r\n\'=x,-1.50\r\n"a,""b""\nc",2\r\n'
        assert list(csv.reader(io.StringIO(data.decode(), newline=""))) == [
            ["name", "amount"],
            ["'=x", "-1.50"],
            ['a,"b"\nc', "2"],
        ]

    def test_a_batch_must_have_every_column(self) -> None:
        report = Report("t", ("name", "amount"), frozenset({"name"}))
        with pytest.raises(ValueError, match="columns"):
            list(encode(report, [{"name": ["x"]}]))
