"""The monthly CSVs bill jobs where the invoices do: under outcome rules a per-job plan bills a
completed task in the tenant-local month in which it settles, so the customers file's
`jobs_billed` and the comparison's `tasks_completed` follow settlement, and `jobs_pending` counts
what a month's end left waiting. For each month, the CSVs' billed-job counts and amounts are the
invoice's lines exactly, with rules (a window across a month end in UTC+05:30 and UTC-10) and
without them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from freezegun import freeze_time
from sqlalchemy import select

from metering.core.db import unit_of_work
from pricing import disputes, invoices
from pricing.tables import invoices as invoice_table
from tests.reports.conftest import CUSTOMERS, JOBS, PRICES, TOKENS, Books, ended, usage


def job(task: str, time: str, outcome: str = "completed", **fields: Any) -> list[dict[str, Any]]:
    return [usage(task, time, input_tokens=1000), ended(task, time, outcome, **fields)]


def configure(books: Books, rules: list[dict[str, Any]] | None) -> None:
    config: dict[str, Any] = {"prices": PRICES, "plans": [JOBS, TOKENS], "customers": CUSTOMERS}
    if rules is not None:
        config["outcomes"] = rules
    books.config(config)


def invoice_of(books: Books, month: str, customer: str = "acme") -> dict[str, Any]:
    """The customer's finalized invoice of the month (none: no lines, a total of 0)."""
    with unit_of_work(books.engine) as session:
        invoice_id = session.execute(
            select(invoice_table.c.id).where(
                invoice_table.c.tenant_id == books.tenant.id,
                invoice_table.c.period == month,
                invoice_table.c.customer == customer,
            )
        ).scalar_one_or_none()
        if invoice_id is None:
            return {"lines": [], "total": Decimal("0.00")}
        return invoices.invoice_view(session, books.tenant, invoice_id)


def closed_month(books: Books, month: str, closing: str, tmp_path: Path) -> dict[str, list[dict[str, str]]]:
    """Close the month at `closing` (UTC, frozen) and write its CSVs."""
    with freeze_time(closing):
        books.close(month, now=datetime.now(UTC))
        return books.rows(month, tmp_path / month)


def assert_agrees_with_the_invoice(books: Books, month: str, rows: dict[str, list[dict[str, str]]]) -> dict[str, str]:
    """The acme row of the customers file, after checking every billed-job figure of the month's
    CSVs against its finalized invoice."""
    invoice = invoice_of(books, month)
    acme = next(r for r in rows["customers"] if r["customer"] == "acme")
    jobs = sum((line["quantity"] for line in invoice["lines"] if line["kind"] == "jobs"), Decimal(0))
    assert Decimal(acme["jobs_billed"]) == jobs
    billed = next(r for r in rows["comparison"] if r["customer"] == "acme" and r["billed"] == "true")
    assert (Decimal(billed["tasks_completed"]), Decimal(billed["revenue"])) == (jobs, invoice["total"])
    assert Decimal(acme["amount_due"]) == invoice["total"]
    assert [
        (r["description"], Decimal(r["quantity"]), Decimal(r["unit_price"]), Decimal(r["amount"]))
        for r in rows["invoice-lines"]
        if r["customer"] == "acme"
    ] == [(line["description"], line["quantity"], line["unit_price"], line["amount"]) for line in invoice["lines"]]
    return acme


def counts(acme: dict[str, str]) -> tuple[str, ...]:
    return acme["tasks_completed"], acme["tasks_failed"], acme["jobs_billed"], acme["jobs_pending"], acme["amount_due"]


class TestSettlementAcrossAMonthEnd:
    def test_kolkata(self, make_books: Any, tmp_path: Path) -> None:
        books = make_books(timezone="Asia/Kolkata", configured=False)
        configure(books, [{"task_type": "default", "settle_after": "30m"}])
        books.send(
            # Oct 31, local: a settles at 23:50 (October); b at 00:10 on Nov 1 (November);
            # c is rejected before its window ends: failed, in October.
            *job("a", "2026-10-31T23:20:00+05:30"),
            *job("b", "2026-10-31T23:40:00+05:30", task_type="support_ticket"),
            *job("c", "2026-10-31T23:45:00+05:30"),
            ended("c", "2026-10-31T23:55:00+05:30", "rejected"),
        )
        october = assert_agrees_with_the_invoice(
            books, "2026-10", closed_month(books, "2026-10", "2026-10-31T18:30:00Z", tmp_path)
        )
        # b completed in October (tasks_completed) but settles in November: pending at October's end.
        assert counts(october) == ("2", "1", "1", "1", "0.55")
        november = assert_agrees_with_the_invoice(
            books, "2026-11", closed_month(books, "2026-11", "2026-11-30T18:30:00Z", tmp_path)
        )
        assert counts(november) == ("0", "0", "1", "0", "1.20")  # no event in November, billed in it

    def test_honolulu(self, make_books: Any, tmp_path: Path) -> None:
        books = make_books(timezone="Pacific/Honolulu", configured=False)
        configure(books, [{"task_type": "default", "settle_after": "2d"}])
        # a: Oct 29 23:00 local settles Oct 31 23:00 local (Nov 1 09:00 UTC): October.
        # b: Oct 30 01:00 local settles Nov 1 01:00 local: November.
        books.send(*job("a", "2026-10-29T23:00:00-10:00"), *job("b", "2026-10-30T01:00:00-10:00"))
        october = assert_agrees_with_the_invoice(
            books, "2026-10", closed_month(books, "2026-10", "2026-11-01T10:00:00Z", tmp_path)
        )
        assert counts(october) == ("2", "0", "1", "1", "0.50")
        november = assert_agrees_with_the_invoice(
            books, "2026-11", closed_month(books, "2026-11", "2026-12-01T10:00:00Z", tmp_path)
        )
        assert counts(november) == ("0", "0", "1", "0", "0.50")

    def test_awaiting_acceptance_is_pending_until_accepted(self, make_books: Any, tmp_path: Path) -> None:
        books = make_books(configured=False)
        configure(books, [{"task_type": "default", "require_acceptance": True}])
        books.send(*job("a", "2026-10-20T00:00:00Z"), ended("a", "2026-11-02T00:00:00Z", "accepted"))
        october = assert_agrees_with_the_invoice(
            books, "2026-10", closed_month(books, "2026-10", "2026-11-01T00:00:00Z", tmp_path)
        )
        assert counts(october) == ("1", "0", "0", "1", "0.00")
        november = assert_agrees_with_the_invoice(
            books, "2026-11", closed_month(books, "2026-11", "2026-12-01T00:00:00Z", tmp_path)
        )
        assert counts(november) == ("0", "0", "1", "0", "0.50")

    def test_the_open_month_counts_what_its_drafts_bill(self, make_books: Any, tmp_path: Path) -> None:
        books = make_books(timezone="Asia/Kolkata", configured=False)
        configure(books, [{"task_type": "default", "settle_after": "30m"}])
        books.send(*job("a", "2026-10-31T23:20:00+05:30"), *job("b", "2026-10-31T23:40:00+05:30"))
        rows = books.rows("2026-11", tmp_path)  # November open: its draft bills b
        acme = next(r for r in rows["customers"] if r["customer"] == "acme")
        assert (acme["jobs_billed"], acme["jobs_pending"], acme["amount_due"]) == ("1", "0", "0.50")
        lines = [(r["description"], r["quantity"], r["amount"]) for r in rows["invoice-lines"]]
        assert lines == [("Completed tasks (default price)", "1", "0.50")]


class TestWithoutRules:
    def test_jobs_bill_in_the_month_they_completed_and_none_is_pending(
        self, make_books: Any, tmp_path: Path
    ) -> None:
        books = make_books(timezone="Asia/Kolkata")
        books.send(
            *job("a", "2026-10-31T23:20:00+05:30"),
            *job("b", "2026-10-31T23:59:59+05:30", task_type="support_ticket"),
            *job("c", "2026-11-01T00:00:00+05:30"),
            *job("d", "2026-10-31T12:00:00+05:30", "failed"),
        )
        october = assert_agrees_with_the_invoice(
            books, "2026-10", closed_month(books, "2026-10", "2026-10-31T18:30:00Z", tmp_path)
        )
        assert counts(october) == ("2", "1", "2", "0", "1.75")
        november = assert_agrees_with_the_invoice(
            books, "2026-11", closed_month(books, "2026-11", "2026-11-30T18:30:00Z", tmp_path)
        )
        assert counts(november) == ("1", "0", "1", "0", "0.50")

    def test_a_task_whose_dispute_was_accepted_in_the_open_month_is_billed_by_no_file(
        self, books: Books, tmp_path: Path
    ) -> None:
        books.send(*job("a", "2026-10-10T00:00:00Z"), *job("b", "2026-10-11T00:00:00Z"))
        books.rollup()
        moment = datetime(2026, 10, 12, tzinfo=UTC)
        with unit_of_work(books.engine) as session:
            dispute, _ = disputes.open_dispute(session, books.tenant, "a", reason="not solved", actor="key:t", now=moment)
        with unit_of_work(books.engine) as session:
            disputes.resolve_dispute(session, books.tenant, dispute["id"], accept=True, note="ok", actor="key:a", now=moment)
        october = assert_agrees_with_the_invoice(
            books, "2026-10", closed_month(books, "2026-10", "2026-11-01T00:00:00Z", tmp_path)
        )
        assert counts(october) == ("2", "0", "1", "0", "0.50")  # both completed; b alone billed
