"""Tier math against hand-worked examples, including Stripe's documented tier tables."""

from __future__ import annotations

from decimal import Decimal, Inexact

import pytest

from pricing.plans import TierStep
from pricing.tiers import exact_amount, graduated, price_tiers, step_problems, tier_total, volume


def steps(*table: tuple[int | str | None, str, str]) -> tuple[TierStep, ...]:
    """(up_to, price, flat) rows as validated tier steps."""
    return tuple(
        TierStep.model_validate({"up_to": up_to, "price": price, "flat": flat})
        for up_to, price, flat in table
    )


# Stripe's tiered pricing docs (docs.stripe.com/subscriptions/pricing-models/tiered-pricing):
# 1-5 fonts at 7 USD, 6-10 at 6.50 USD, 11+ at 6 USD.
STRIPE = steps((5, "7", "0"), (10, "6.50", "0"), (None, "6", "0"))
# The issue's table: 1-5 at 5, 6-10 at 4, 11+ at 3.
ISSUE = steps((5, "5", "0"), (10, "4", "0"), (None, "3", "0"))


class TestStripeDocumentedTables:
    @pytest.mark.parametrize(
        ("quantity", "total"),
        [(1, "7"), (5, "35"), (6, "39"), (20, "120"), (25, "150")],
    )
    def test_volume(self, quantity: int, total: str) -> None:
        assert tier_total(quantity, "volume", STRIPE) == Decimal(total)

    @pytest.mark.parametrize(
        ("quantity", "total"),
        # 6 = 5×7 + 1×6.50; 20 = 35 + 5×6.50 + 10×6; 25 = 35 + 32.50 + 15×6
        [(1, "7"), (5, "35"), (6, "41.50"), (20, "127.50"), (25, "157.50")],
    )
    def test_graduated(self, quantity: int, total: str) -> None:
        assert tier_total(quantity, "graduated", STRIPE) == Decimal(total)


class TestIssueTable:
    @pytest.mark.parametrize(
        ("quantity", "total"),
        # 6 = 25 + 4; 10 = 25 + 20; 11 = 45 + 3
        [(0, "0"), (3, "15"), (5, "25"), (6, "29"), (10, "45"), (11, "48")],
    )
    def test_graduated(self, quantity: int, total: str) -> None:
        assert tier_total(quantity, "graduated", ISSUE) == Decimal(total)

    @pytest.mark.parametrize(
        ("quantity", "total"),
        [(0, "0"), (3, "15"), (5, "25"), (6, "24"), (10, "40"), (11, "33")],
    )
    def test_volume(self, quantity: int, total: str) -> None:
        assert tier_total(quantity, "volume", ISSUE) == Decimal(total)


class TestBoundaries:
    def test_quantity_exactly_at_up_to_stays_in_that_step(self) -> None:
        charges = graduated(5, ISSUE)
        assert [(c.step, c.first, c.last, c.quantity) for c in charges] == [(1, 1, 5, 5)]
        assert [(c.step, c.quantity) for c in volume(10, ISSUE)] == [(2, 10)]

    def test_one_past_up_to_reaches_the_next_step(self) -> None:
        assert [(c.step, c.first, c.last, c.quantity) for c in graduated(11, ISSUE)] == [
            (1, 1, 5, 5),
            (2, 6, 10, 5),
            (3, 11, None, 1),
        ]
        assert [(c.step, c.price) for c in volume(11, ISSUE)] == [(3, Decimal("3"))]

    def test_zero_quantity_charges_nothing_not_even_flat_fees(self) -> None:
        flat = steps((5, "5", "10"), (None, "3", "1"))
        assert graduated(0, flat) == [] and volume(0, flat) == []

    def test_a_negative_quantity_is_refused(self) -> None:
        with pytest.raises(ValueError):
            price_tiers(-1, "graduated", ISSUE)


class TestFlatFees:
    FLAT = steps((5, "5", "10"), (10, "4", "20"), (None, "3", "0"))

    def test_graduated_adds_the_flat_fee_of_every_step_reached(self) -> None:
        # 5×5 + 10 (step 1) + 1×4 + 20 (step 2)
        assert tier_total(6, "graduated", self.FLAT) == Decimal("59")
        assert [c.flat for c in graduated(6, self.FLAT)] == [Decimal("10"), Decimal("20")]

    def test_volume_adds_the_flat_fee_of_the_step_reached(self) -> None:
        assert tier_total(6, "volume", self.FLAT) == Decimal("44")  # 6×4 + 20
        assert tier_total(5, "volume", self.FLAT) == Decimal("35")  # 5×5 + 10


class TestTokenUnits:
    def test_bounds_and_prices_are_per_million_tokens(self) -> None:
        table = steps((1, "2.00", "0"), (None, "1.00", "0"))
        charges = graduated(1_500_000, table, unit=10**6)
        assert [(c.quantity, c.amount) for c in charges] == [
            (1_000_000, Decimal("2")),
            (500_000, Decimal("0.5")),
        ]

    def test_fractional_million_bounds(self) -> None:
        table = steps(("0.5", "4", "0"), (None, "2", "0"))
        assert tier_total(500_001, "volume", table, unit=10**6) == Decimal("1.000002")
        assert tier_total(500_000, "volume", table, unit=10**6) == Decimal("2")


class TestExactness:
    def test_amounts_are_exact_decimals(self) -> None:
        assert exact_amount(1_234_567, Decimal("0.000001"), 10**6) == Decimal("0.000001234567")

    def test_an_inexact_amount_raises_instead_of_rounding(self) -> None:
        with pytest.raises(Inexact):
            exact_amount(1, Decimal(1), 3)


class TestStepProblems:
    def test_a_well_ordered_table_has_none(self) -> None:
        assert step_problems(ISSUE, 1, "jobs") == []

    def test_up_to_must_increase_strictly(self) -> None:
        table = steps((10, "1", "0"), (10, "1", "0"), (None, "1", "0"))
        assert step_problems(table, 1, "jobs") == [
            ("steps[1].up_to", "must be greater than the previous step's up_to (10)")
        ]

    def test_only_the_last_step_is_unbounded_and_it_must_be(self) -> None:
        assert step_problems(steps((None, "1", "0"), (5, "1", "0")), 1, "jobs") == [
            ("steps[0].up_to", "only the last step may be unbounded (null)"),
            ("steps[1].up_to", "the last step must be unbounded (null) so that every quantity has a price"),
        ]

    def test_bounds_are_whole_base_units(self) -> None:
        assert step_problems(steps(("1.5", "1", "0"), (None, "1", "0")), 1, "jobs") == [
            ("steps[0].up_to", "must be a whole number of jobs")
        ]
        assert step_problems(steps(("1.5", "1", "0"), (None, "1", "0")), 10**6, "tokens") == []
        assert step_problems(steps(("0.0000001", "1", "0"), (None, "1", "0")), 10**6, "tokens") == [
            ("steps[0].up_to", "must be a whole number of tokens")
        ]
