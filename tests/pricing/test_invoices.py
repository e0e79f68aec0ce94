"""Invoices on a real database: month boundaries in several time zones, closing, late usage as
adjustments, immutability, credit notes, and two closers racing."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import version as package_version
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import IntegrityError

from metering.core.db import unit_of_work
from metering.core.errors import Conflict, InvalidInput, NotFound
from metering.core.periods import parse_month
from metering.rollup.pipeline import price_version, tenant_overrides
from pricing import credit_notes, invoices
from pricing.tables import billing_periods, invoice_lines
from pricing.tables import invoices as invoice_table
from tests.pricing.conftest import JOBS, PRICES, TOKENS, Billing, at, ended, job, lines_of, usage

NOV_1 = at("2026-11-01T00:00:00Z")
DEC_1 = at("2026-12-01T00:00:00Z")


def jobs_count(invoice: dict[str, Any]) -> Decimal:
    return sum((line["quantity"] for line in invoice["lines"] if line["kind"] == "jobs" and not line["adjusts_period"]), Decimal(0))


class TestMonthBoundaries:
    def test_the_last_millisecond_of_a_utc_month_belongs_to_it(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-31T23:59:59.999Z"), job("b", "2026-11-01T00:00:00Z"))
        summary = billing.close("2026-10", now=NOV_1)
        assert [(i["number"], i["total"]) for i in summary["invoices"]] == [("INV-acme-ai-202610-0001", Decimal("0.50"))]
        assert lines_of(billing.invoice("2026-10")) == [("jobs", "", Decimal("0.50"))]
        assert billing.upcoming(now=NOV_1)["lines"][0]["quantity"] == Decimal(1)

    def test_a_month_closes_only_once_it_has_ended(self, billing: Billing) -> None:
        with pytest.raises(InvalidInput, match="has not ended"):
            billing.close("2026-10", now=at("2026-10-31T23:59:59.999Z"))
        assert billing.close("2026-10", now=NOV_1)["closed"] is True

    def test_new_york_across_the_november_dst_change(self, make_billing: Any) -> None:
        billing = make_billing(timezone="America/New_York")
        billing.send(
            job("oct-last", "2026-11-01T03:59:59.999Z"),  # Oct 31, 23:59:59.999 EDT
            job("nov-first", "2026-11-01T04:00:00Z"),  # Nov 1, 00:00 EDT
            job("edt-0130", "2026-11-01T05:30:00Z"),  # 01:30 EDT
            job("est-0130", "2026-11-01T06:30:00Z"),  # 01:30 EST: the hour that happens twice
            job("nov-last", "2026-12-01T04:59:59.999Z"),  # Nov 30, 23:59:59.999 EST
            job("dec-first", "2026-12-01T05:00:00Z"),  # Dec 1, 00:00 EST
        )
        with pytest.raises(InvalidInput):
            billing.close("2026-10", now=at("2026-11-01T03:59:59.999Z"))
        billing.close("2026-10", now=at("2026-11-01T04:00:00Z"))
        with pytest.raises(InvalidInput):
            billing.close("2026-11", now=at("2026-12-01T04:59:59.999Z"))
        billing.close("2026-11", now=at("2026-12-01T05:00:00Z"))
        assert jobs_count(billing.invoice("2026-10")) == 1
        assert billing.invoice("2026-11")["lines"][0]["quantity"] == Decimal(4)
        assert billing.invoice("2026-11")["total"] == Decimal("2.00")
        assert billing.upcoming(now=at("2026-12-01T05:00:00Z"))["total"] == Decimal("0.50")

    def test_kolkata_half_hour_offset(self, make_billing: Any) -> None:
        billing = make_billing(timezone="Asia/Kolkata")
        billing.send(
            job("sep-last", "2026-09-30T18:29:59.999Z"),  # Sep 30, 23:59:59.999 IST
            job("oct-first", "2026-09-30T18:30:00Z"),
            job("oct-last", "2026-10-31T18:29:59.999Z"),
            job("nov-first", "2026-10-31T18:30:00Z"),
        )
        billing.close("2026-09", now=at("2026-09-30T18:30:00Z"))
        with pytest.raises(InvalidInput):
            billing.close("2026-10", now=at("2026-10-31T18:29:59.999Z"))
        billing.close("2026-10", now=at("2026-10-31T18:30:00Z"))
        assert billing.invoice("2026-09")["lines"][0]["quantity"] == Decimal(1)
        assert billing.invoice("2026-10")["lines"][0]["quantity"] == Decimal(2)
        assert billing.invoice("2026-10")["number"] == "INV-acme-ai-202610-0001"

    def test_tokens_fall_on_tenant_local_days(self, make_billing: Any) -> None:
        billing = make_billing(timezone="Asia/Kolkata", customers=[{"id": "acme", "plan": "tokens"}])
        billing.send(
            usage("t1", "2026-10-31T18:29:59.999Z", input_tokens=1_000_000),  # October in Kolkata
            usage("t1", "2026-10-31T18:30:00Z", input_tokens=3_000_000),  # November in Kolkata
        )
        billing.close("2026-10", now=at("2026-10-31T18:30:00Z"))
        assert lines_of(billing.invoice("2026-10")) == [("tokens", "", Decimal("6.00"))]
        assert lines_of(billing.upcoming(now=at("2026-11-02T00:00:00Z"))) == [("tokens", "", Decimal("18.00"))]

    def test_december_to_january(self, billing: Billing) -> None:
        billing.send(job("dec", "2026-12-31T23:59:59.999Z"), job("jan", "2027-01-01T00:00:00Z"))
        billing.close("2026-12", now=at("2027-01-01T00:00:00Z"))
        billing.send(job("late-dec", "2026-12-31T12:00:00Z"))  # arrives after December closed
        draft = billing.upcoming(now=at("2027-01-15T00:00:00Z"))
        assert draft["period"] == "2027-01"
        assert lines_of(draft) == [("jobs", "", Decimal("0.50")), ("jobs", "2026-12", Decimal("0.50"))]
        billing.close("2027-01", now=at("2027-02-01T00:00:00Z"))
        january = billing.invoice("2027-01")
        assert january["number"] == "INV-acme-ai-202701-0001"
        assert "2026-12" in january["lines"][1]["description"]
        assert january["total"] == Decimal("1.00")
        assert billing.invoice("2026-12")["total"] == Decimal("0.50")

    def test_a_leap_day_with_a_price_change_on_it(self, make_billing: Any) -> None:
        v2 = JOBS | {"prices": {"default": "2.00"}, "effective_from": "2028-02-29"}
        billing = make_billing(plans=[JOBS, v2, TOKENS])
        billing.send(
            job("feb-28", "2028-02-28T12:00:00Z"),
            job("leap-day", "2028-02-29T12:00:00Z"),
            job("leap-last", "2028-02-29T23:59:59.999Z"),
            job("march", "2028-03-01T00:00:00Z"),
        )
        billing.close("2028-02", now=at("2028-03-01T00:00:00Z"))
        february = billing.invoice("2028-02")
        assert [(line["quantity"], line["unit_price"], line["amount"], line["plan_version"]) for line in february["lines"]] == [
            (Decimal(1), Decimal("0.50"), Decimal("0.50"), 1),
            (Decimal(2), Decimal("2.00"), Decimal("4.00"), 2),
        ]
        assert "[prices from 2028-02-29]" in february["lines"][1]["description"]
        assert february["plan_versions"] == {"jobs": [1, 2]}
        assert february["total"] == Decimal("4.50")


class TestClose:
    def test_numbers_totals_versions_and_price_version(self, make_billing: Any) -> None:
        billing = make_billing(customers=[
            {"id": "acme", "plan": "jobs"}, {"id": "globex", "plan": "tokens"}, {"id": "initech", "plan": "jobs"},
        ])  # fmt: skip
        billing.send(
            job("a1", "2026-10-05T10:00:00Z", task_type="support_ticket"), job("a2", "2026-10-06T10:00:00Z"),
            job("a3", "2026-10-07T10:00:00Z", outcome="failed"),
            usage("g1", "2026-10-08T00:00:00Z", customer="globex", input_tokens=1_234_567, output_tokens=98_765),
            job("i1", "2026-10-09T10:00:00Z", customer="initech"),
        )  # fmt: skip
        summary = billing.close("2026-10", now=NOV_1)
        assert [(i["number"], i["customer"], i["total"]) for i in summary["invoices"]] == [
            ("INV-acme-ai-202610-0001", "acme", Decimal("1.75")),  # 1.20 + 0.50 + 0.05
            ("INV-acme-ai-202610-0002", "globex", Decimal("10.37")),  # 7.41 + 2.96
            ("INV-acme-ai-202610-0003", "initech", Decimal("0.50")),
        ]
        assert summary["totals"] == {"USD": Decimal("12.62")}
        globex = billing.invoice("2026-10", "globex")
        assert [(line["quantity"], line["unit_price"], line["amount_exact"], line["amount"]) for line in globex["lines"]] == [
            (Decimal(1_234_567), Decimal("6.00"), Decimal("7.40740200"), Decimal("7.41")),
            (Decimal(98_765), Decimal("30.00"), Decimal("2.96295000"), Decimal("2.96")),
        ]
        assert globex["total_minor"] == 1037 == sum(int(line["amount"] * 100) for line in globex["lines"])
        assert globex["plan_versions"] == {"tokens": [1]}
        assert globex["price_version"].startswith("genai-prices@")

    def test_each_invoice_keeps_the_price_version_it_was_rated_with(self, make_billing: Any) -> None:
        billing = make_billing(customers=[{"id": "acme", "plan": "jobs", "compare_with": ["tokens"]}])
        billing.send(job("a1", "2026-10-05T10:00:00Z"))
        october = billing.close("2026-10", now=NOV_1)["invoices"][0]["number"]
        before = billing.invoice("2026-10")["price_version"]
        # The tenant's own model price changes in November: a new price version.
        billing.config({"prices": [{**PRICES[0], "input": "4.00"}], "plans": [JOBS, TOKENS],
                        "customers": [{"id": "acme", "plan": "jobs", "compare_with": ["tokens"]}]}, now=NOV_1)  # fmt: skip
        billing.send(job("a2", "2026-11-05T10:00:00Z"))
        billing.close("2026-11", now=DEC_1)
        after = billing.invoice("2026-11")["price_version"]

        pattern = re.compile(rf"genai-prices@{re.escape(package_version('genai-prices'))}\+tenant:[0-9a-f]{{12}}")
        assert pattern.fullmatch(before) and pattern.fullmatch(after) and before != after
        with billing.engine.connect() as connection:
            assert after == price_version(tenant_overrides(connection, billing.tenant.id))  # the prices in force
        october_again = billing.invoice("2026-10")
        assert (october_again["number"], october_again["price_version"]) == (october, before)

    def test_closing_twice_changes_nothing(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        first = billing.close("2026-10", now=NOV_1)
        before = billing.snapshot()
        billing.send(job("late", "2026-10-11T00:00:00Z"))
        again = billing.close("2026-10", now=at("2026-11-02T00:00:00Z"))
        assert (first["closed"], again["closed"]) == (True, False)
        assert again["invoices"] == first["invoices"]
        assert billing.snapshot() == before

    def test_customers_without_anything_to_bill_get_no_invoice(self, make_billing: Any) -> None:
        fee = JOBS | {"id": "fee", "platform_fee": "10.00"}
        billing = make_billing(plans=[JOBS, fee], customers=[{"id": "idle", "plan": "jobs"}, {"id": "subscriber", "plan": "fee"}])
        summary = billing.close("2026-10", now=NOV_1)
        assert [(i["customer"], i["total"]) for i in summary["invoices"]] == [("subscriber", Decimal("10.00"))]

    def test_usage_of_a_customer_without_a_plan_stops_the_close(self, billing: Billing, engine: Engine) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"), job("x", "2026-10-10T00:00:00Z", customer="stranger"))
        with pytest.raises(InvalidInput) as caught:
            billing.close("2026-10", now=NOV_1)
        assert "stranger" in str(caught.value.detail)
        with engine.connect() as connection:
            assert connection.execute(select(billing_periods)).all() == []
            assert connection.execute(select(invoice_table)).all() == []

    def test_a_task_spanning_two_months_is_billed_once_when_it_ends(self, make_billing: Any) -> None:
        billing = make_billing(customers=[{"id": "acme", "plan": "jobs"}, {"id": "globex", "plan": "tokens"}])
        for customer in ("acme", "globex"):
            billing.send(
                {"id": f"{customer}-start", "type": "task.started", "time": "2026-10-31T20:00:00Z", "customer": customer, "task": f"{customer}-long"},
                usage(f"{customer}-long", "2026-10-31T21:00:00Z", customer=customer, input_tokens=1_000_000),
                usage(f"{customer}-long", "2026-11-01T01:00:00Z", customer=customer, input_tokens=2_000_000),
                ended(f"{customer}-long", "2026-11-01T02:00:00Z", customer=customer),
            )  # fmt: skip
        billing.close("2026-10", now=NOV_1)
        billing.close("2026-11", now=DEC_1)
        assert [i["customer"] for i in billing_invoices(billing, "2026-10")] == ["globex"]  # the job is open in October
        assert lines_of(billing.invoice("2026-11", "acme")) == [("jobs", "", Decimal("0.50"))]
        assert lines_of(billing.invoice("2026-10", "globex")) == [("tokens", "", Decimal("6.00"))]
        assert lines_of(billing.invoice("2026-11", "globex")) == [("tokens", "", Decimal("12.00"))]

    def test_two_closers_racing_close_once(self, make_billing: Any, engine: Engine) -> None:
        billing = make_billing(customers=[{"id": f"c{i}", "plan": "jobs"} for i in range(5)])
        billing.send(*[job(f"t{i}", "2026-10-10T00:00:00Z", customer=f"c{i % 5}") for i in range(20)])
        # Rolled up before: the first rollup of a tenant is a rebuild, whose `PRAGMA optimize` on
        # SQLite fails with "database is locked" while a closer holds the write lock.
        billing.rollup(now=NOV_1)
        billing.send(job("late", "2026-10-11T00:00:00Z", customer="c0"))  # each closer's rollup races for it
        barrier = threading.Barrier(3)
        results: list[Any] = []

        def close() -> None:
            barrier.wait()
            try:
                results.append(billing.close("2026-10", now=NOV_1)["closed"])
            except Exception as exc:  # noqa: BLE001 - reported below
                results.append(exc)

        threads = [threading.Thread(target=close) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(results, key=str) == [False, False, True]
        with engine.connect() as connection:
            numbers = connection.execute(select(invoice_table.c.number).order_by(invoice_table.c.number)).scalars().all()
        assert numbers == [f"INV-acme-ai-202610-{n:04d}" for n in range(1, 6)]
        assert billing.invoice("2026-10", "c0")["total"] == Decimal("2.50")  # the late job included


def billing_invoices(billing: Billing, month: str) -> list[dict[str, Any]]:
    with unit_of_work(billing.engine) as session:
        rows = session.execute(
            select(invoice_table).where(invoice_table.c.tenant_id == billing.tenant.id, invoice_table.c.period == month)
        ).all()
        return [invoices.invoice_view(session, billing.tenant, r.id) for r in rows]


class TestLateUsage:
    def test_a_price_change_adjusts_a_closed_month_and_says_so(self, make_billing: Any) -> None:
        plus = {"id": "plus", "type": "per_token", "markup": "0.40"}
        customers = [{"id": "acme", "plan": "plus"}]
        billing = make_billing(plans=[plus], customers=customers)
        billing.send(usage("a", "2026-10-05T10:00:00Z", input_tokens=1_000_000))  # 3.00 of provider cost
        billing.close("2026-10", now=NOV_1)
        billing.config({"prices": [{**PRICES[0], "input": "4.00"}], "plans": [plus], "customers": customers}, now=NOV_1)
        billing.close("2026-11", now=DEC_1)
        [line] = [line for line in billing.invoice("2026-11")["lines"] if line["adjusts_period"] == "2026-10"]
        assert line["adjustment_reason"] == "repricing"
        assert line["description"] == (
            "Adjustment for 2026-10, provider prices changed after the month closed: provider cost (cost-plus) (billed 4.20, now 5.60)"
        )
        assert line["amount"] == Decimal("1.40")

    def test_a_late_completed_task_is_billed_on_the_next_invoice(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"), job("b", "2026-10-11T00:00:00Z"))
        billing.close("2026-10", now=NOV_1)
        october = billing.invoice("2026-10")
        billing.send(job("late", "2026-10-31T23:00:00Z"))
        billing.send(job("nov", "2026-11-03T00:00:00Z"))
        billing.close("2026-11", now=DEC_1)
        november = billing.invoice("2026-11")
        assert lines_of(november) == [("jobs", "", Decimal("0.50")), ("jobs", "2026-10", Decimal("0.50"))]
        assert november["lines"][1]["description"] == (
            "Adjustment for 2026-10, usage reported after the month closed: completed tasks (billed 1.00, now 1.50)"
        )
        assert november["lines"][1]["adjustment_reason"] == "late_usage"
        assert november["total"] == Decimal("1.00")
        assert billing.invoice("2026-10") == october  # untouched
        billing.close("2026-12", now=at("2027-01-01T00:00:00Z"))  # nothing is billed twice
        assert billing_invoices(billing, "2026-12") == []

    def test_a_completed_task_that_failed_after_the_close_is_credited(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z", task_type="support_ticket"), job("b", "2026-10-11T00:00:00Z"))
        billing.close("2026-10", now=NOV_1)
        billing.send(ended("a", "2026-10-10T00:05:00Z", "failed"))  # later than its completion: now failed
        billing.close("2026-11", now=DEC_1)
        assert lines_of(billing.invoice("2026-11")) == [
            ("jobs", "2026-10", Decimal("-1.20")),
            ("jobs_failed", "2026-10", Decimal("0.05")),
        ]
        assert billing.invoice("2026-11")["total"] == Decimal("-1.15")

    def test_a_task_ending_again_in_a_later_month_moves_there(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        billing.close("2026-10", now=NOV_1)
        billing.send(ended("a", "2026-11-02T00:00:00Z", "failed"))
        billing.close("2026-11", now=DEC_1)
        assert lines_of(billing.invoice("2026-11")) == [("jobs_failed", "", Decimal("0.05")), ("jobs", "2026-10", Decimal("-0.50"))]

    def test_late_tokens_and_a_second_correction_bill_only_the_difference(self, make_billing: Any) -> None:
        billing = make_billing(customers=[{"id": "acme", "plan": "tokens"}])
        billing.send(usage("t", "2026-10-10T00:00:00Z", input_tokens=1_000_001))  # 6.000006 → 6.00
        billing.close("2026-10", now=NOV_1)
        billing.send(usage("t", "2026-10-20T00:00:00Z", input_tokens=1_000))  # 1,001,001 × 6 / 1M = 6.006006 → 6.01
        billing.close("2026-11", now=DEC_1)
        assert lines_of(billing.invoice("2026-11")) == [("tokens", "2026-10", Decimal("0.01"))]
        billing.send(usage("t", "2026-10-21T00:00:00Z", input_tokens=500_000))  # 1,501,001 → 9.006006 → 9.01
        billing.close("2026-12", now=at("2027-01-01T00:00:00Z"))
        assert lines_of(billing.invoice("2026-12")) == [("tokens", "2026-10", Decimal("3.00"))]

    def test_the_draft_shows_adjustments_once_the_month_before_is_closed(self, billing: Billing) -> None:
        billing.send(job("a", "2026-09-10T00:00:00Z"))
        billing.close("2026-09", now=at("2026-10-01T00:00:00Z"))
        billing.send(job("late-sep", "2026-09-30T00:00:00Z"))
        # October has not closed: the September adjustment will go on October's invoice.
        assert billing.upcoming(now=at("2026-11-05T00:00:00Z"))["lines"] == []
        october_draft = billing.upcoming(now=at("2026-11-05T00:00:00Z"), month="2026-10")
        assert lines_of(october_draft) == [("jobs", "2026-09", Decimal("0.50"))]
        billing.close("2026-10", now=at("2026-11-05T00:00:00Z"))
        assert lines_of(billing.invoice("2026-10")) == [("jobs", "2026-09", Decimal("0.50"))]

    def test_closed_months_are_re_rated_with_the_plan_versions_they_were_billed_with(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        billing.close("2026-10", now=NOV_1)
        # A retroactive price change does not re-price what October billed ...
        billing.config({"plans": [JOBS | {"prices": {"default": "0.70"}, "effective_from": "2026-10-01"}]}, now=at("2026-11-02T00:00:00Z"))
        billing.send(job("late", "2026-10-12T00:00:00Z"))
        billing.close("2026-11", now=DEC_1)
        # ... and late usage of October is billed at October's prices.
        assert lines_of(billing.invoice("2026-11")) == [("jobs", "2026-10", Decimal("0.50"))]

    def test_new_provider_prices_re_rate_cost_plus_months(self, make_billing: Any) -> None:
        markup = {"id": "markup", "type": "per_token", "markup": "0.50"}
        billing = make_billing(plans=[markup], customers=[{"id": "acme", "plan": "markup"}])
        billing.send(usage("t", "2026-10-10T00:00:00Z", input_tokens=2_000_000))  # cost 6.00 → 9.00
        billing.close("2026-10", now=NOV_1)
        prices = [{"provider": "acme-ai", "model": "acme-large", "input": "4.00", "output": "15.00"}]
        billing.config({"prices": prices}, now=at("2026-11-02T00:00:00Z"))  # cost 8.00 → 12.00
        billing.close("2026-11", now=DEC_1)
        assert lines_of(billing.invoice("2026-11")) == [("markup", "2026-10", Decimal("3.00"))]


class TestFinalizedInvoicesNeverChange:
    @pytest.fixture
    def closed(self, billing: Billing) -> Billing:
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        billing.close("2026-10", now=NOV_1)
        return billing

    @pytest.mark.parametrize("statement", [
        "UPDATE invoices SET total_minor = 1",
        "UPDATE invoices SET number = 'INV-other'",
        "UPDATE invoices SET status = 'draft'",
        "DELETE FROM invoices",
        "UPDATE invoice_lines SET amount_minor = 1",
        "UPDATE invoice_lines SET description = 'changed'",
        "DELETE FROM invoice_lines",
    ])  # fmt: skip
    def test_the_database_refuses_changes(self, closed: Billing, engine: Engine, statement: str) -> None:
        before = closed.snapshot()
        with pytest.raises(IntegrityError, match="a finalized invoice never changes"), engine.begin() as connection:
            connection.execute(text(statement))
        assert closed.snapshot() == before

    def test_no_line_can_be_added(self, closed: Billing, engine: Engine) -> None:
        invoice_id = closed.invoice("2026-10")["id"]
        row = {"invoice_id": invoice_id, "line_no": 9, "kind": "jobs", "description": "extra", "quantity": "1",
               "unit_price": "1", "amount_exact": "1", "amount_minor": 100}  # fmt: skip
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(invoice_lines.insert().values(**row))

    def test_stripe_bookkeeping_and_voiding_are_allowed(self, closed: Billing, engine: Engine) -> None:
        with engine.begin() as connection:
            connection.execute(update(invoice_table).values(stripe_invoice_id="in_1", stripe_status="synced", payment_status="paid"))
            connection.execute(update(invoice_lines).values(stripe_item_id="ii_1"))
            connection.execute(update(invoice_table).values(status="void"))
        invoice = closed.invoice("2026-10")
        assert (invoice["status"], invoice["stripe_invoice_id"], invoice["total"]) == ("void", "in_1", Decimal("0.50"))
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(update(invoice_table).values(status="finalized"))

    def test_a_voided_month_is_billed_again_as_an_adjustment(self, closed: Billing, engine: Engine) -> None:
        with engine.begin() as connection:
            connection.execute(update(invoice_table).values(status="void"))
        closed.send(job("x", "2026-11-10T00:00:00Z"))  # touches nothing of October
        closed.send(job("late", "2026-10-11T00:00:00Z"))
        closed.close("2026-11", now=DEC_1)
        assert lines_of(closed.invoice("2026-11")) == [("jobs", "", Decimal("0.50")), ("jobs", "2026-10", Decimal("1.00"))]


class TestCreditNotes:
    def credit(self, billing: Billing, amount: object, reason: str = "goodwill") -> dict[str, Any]:
        invoice_id = billing.invoice("2026-10")["id"]
        with unit_of_work(billing.engine) as session:
            return credit_notes.create_credit_note(session, billing.tenant, invoice_id, amount=amount, reason=reason, now=NOV_1)

    @pytest.fixture
    def closed(self, billing: Billing) -> Billing:
        billing.send(job("a", "2026-10-10T00:00:00Z", task_type="support_ticket"), job("b", "2026-10-11T00:00:00Z"))
        billing.close("2026-10", now=NOV_1)  # 1.70
        return billing

    def test_credits_up_to_the_total_and_the_invoice_stays(self, closed: Billing) -> None:
        before = closed.invoice("2026-10")
        assert self.credit(closed, "1.20")["amount"] == Decimal("1.20")
        assert self.credit(closed, "0.50")["amount"] == Decimal("0.50")
        with pytest.raises(Conflict, match="at most 0.00 USD is left"):
            self.credit(closed, "0.01")
        after = closed.invoice("2026-10")
        assert {k: v for k, v in after.items() if k not in ("credit_notes", "credited", "amount_due")} == {
            k: v for k, v in before.items() if k not in ("credit_notes", "credited", "amount_due")
        }
        assert (after["credited"], after["amount_due"]) == (Decimal("1.70"), Decimal("0.00"))

    @pytest.mark.parametrize(("amount", "message"), [
        ("0.001", "minor unit"), ("0", "greater than 0"), ("-1", "negative"), (1.5, "not a float"), ("abc", "not a decimal"),
        ("1" + "0" * 30, "too large"),
    ])  # fmt: skip
    def test_bad_amounts(self, closed: Billing, amount: object, message: str) -> None:
        with pytest.raises(InvalidInput) as caught:
            self.credit(closed, amount)
        assert message in caught.value.detail[0]["message"]

    def test_credit_notes_are_not_billed_usage(self, closed: Billing) -> None:
        self.credit(closed, "1.70", "disputed")
        closed.send(job("late", "2026-10-12T00:00:00Z"))
        closed.close("2026-11", now=DEC_1)
        assert lines_of(closed.invoice("2026-11")) == [("jobs", "2026-10", Decimal("0.50"))]

    def test_another_tenants_invoice_is_not_found(self, closed: Billing, make_billing: Any) -> None:
        other = make_billing(name="other")
        invoice_id = closed.invoice("2026-10")["id"]
        with unit_of_work(other.engine) as session, pytest.raises(NotFound):
            credit_notes.create_credit_note(session, other.tenant, invoice_id, amount="1.00", reason="x", now=NOV_1)
        with unit_of_work(other.engine) as session, pytest.raises(NotFound):
            invoices.invoice_view(session, other.tenant, invoice_id)


class TestUpcoming:
    def test_the_draft_follows_usage_and_stores_nothing(self, billing: Billing, engine: Engine) -> None:
        billing.send(job("a", "2026-11-02T00:00:00Z"))
        assert billing.upcoming(now=at("2026-11-03T00:00:00Z"))["total"] == Decimal("0.50")
        billing.send(job("b", "2026-11-02T01:00:00Z", task_type="support_ticket"))
        draft = billing.upcoming(now=at("2026-11-03T00:00:00Z"))
        assert (draft["status"], draft["number"], draft["total"]) == ("draft", None, Decimal("1.70"))
        with engine.connect() as connection:
            assert connection.execute(select(invoice_table)).all() == []

    def test_a_closed_month_has_no_draft(self, billing: Billing) -> None:
        billing.close("2026-10", now=NOV_1)
        with pytest.raises(Conflict):
            billing.upcoming(now=NOV_1, month="2026-10")

    def test_unknown_customer(self, billing: Billing) -> None:
        with pytest.raises(NotFound):
            billing.upcoming("nobody", now=NOV_1)


def test_invoice_numbers_fit_64_characters() -> None:
    from metering.core.tenants import Tenant

    tenant = Tenant(7, "a" * 64, "UTC", "USD")
    number = invoices.invoice_number(tenant, parse_month("2026-10", "UTC"), 12)
    assert number == "INV-" + "a" * 46 + ".7-202610-0012" and len(number) == 64
    assert invoices.invoice_number(Tenant(7, "acme", "UTC", "USD"), parse_month("2026-10", "UTC"), 1) == "INV-acme-202610-0001"


def test_close_records_the_month_as_it_saw_it(billing: Billing, engine: Engine) -> None:
    billing.send(job("a", "2026-10-10T00:00:00Z"))
    billing.close("2026-10", now=NOV_1)
    with engine.connect() as connection:
        row = connection.execute(select(billing_periods)).one()
    assert (row.period, row.watermark_seq, row.reconciled_seq) == ("2026-10", 2, 2)
    assert row.plans_as_of == 2 and row.assignments_as_of == 1
    assert row.closed_at.replace(tzinfo=UTC) == datetime(2026, 11, 1, tzinfo=UTC)
