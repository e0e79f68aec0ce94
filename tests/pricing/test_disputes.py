"""Disputes on a real database: opening within the window, accepting in an open month (the task
is not billed) and after the close (a credit note for what the task was billed, linked to the
task and the dispute, never more than is left to credit), idempotent replays."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from metering.core.db import unit_of_work
from metering.core.errors import Conflict, NotFound
from pricing import credit_notes, disputes
from tests.pricing.conftest import Billing, at, ended, job

NOV_1 = at("2026-11-01T00:00:00Z")


def open_(billing: Billing, task: str, *, now: datetime, **kwargs: Any) -> tuple[dict[str, Any], bool]:
    with unit_of_work(billing.engine) as session:
        return disputes.open_dispute(
            session, billing.tenant, task, reason="not solved", actor="key:test", now=now, **kwargs
        )


def resolve(billing: Billing, dispute_id: int, accept: bool, *, now: datetime) -> tuple[dict[str, Any], bool]:
    with unit_of_work(billing.engine) as session:
        return disputes.resolve_dispute(
            session, billing.tenant, dispute_id, accept=accept, note="checked", actor="key:admin", now=now
        )


def jobs(invoice: dict[str, Any]) -> Decimal:
    return sum((line["quantity"] for line in invoice["lines"] if line["kind"] == "jobs"), Decimal(0))


class TestOpen:
    def test_opens_within_the_window_and_replays_with_the_same_key(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        billing.rollup(now=NOV_1)
        first, created = open_(billing, "a", now=at("2026-10-20T00:00:00Z"), idempotency_key="k1")
        assert (first["status"], created) == ("open", True)
        again, created = open_(billing, "a", now=at("2026-10-20T00:00:01Z"), idempotency_key="k1")
        assert (again, created) == (first, False)

    def test_a_second_dispute_of_the_task_conflicts(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        billing.rollup(now=NOV_1)
        open_(billing, "a", now=at("2026-10-20T00:00:00Z"))
        with pytest.raises(Conflict, match="already has an open dispute"):
            open_(billing, "a", now=at("2026-10-20T00:00:00Z"))

    def test_past_the_window_conflicts(self, billing: Billing) -> None:
        billing.config(
            {"outcomes": [{"task_type": "default", "settle_after": "1d", "dispute_window": "2d"}]},
            now=at("2020-01-01T00:00:00Z"),
        )
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        billing.rollup(now=NOV_1)
        open_(
            billing, "a", now=at("2026-10-13T00:00:00Z"), idempotency_key="in-time"
        )  # settled 11th, window to the 13th
        with pytest.raises(Conflict, match="dispute window"):
            open_(billing, "a", now=at("2026-10-13T00:00:00.000001Z"))

    def test_another_customers_task_is_not_found(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        billing.rollup(now=NOV_1)
        with pytest.raises(NotFound):
            open_(billing, "a", now=at("2026-10-20T00:00:00Z"), customer="globex")
        with pytest.raises(NotFound):
            open_(billing, "nope", now=at("2026-10-20T00:00:00Z"))

    def test_an_open_task_has_nothing_to_dispute(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z", "failed"))
        billing.rollup(now=NOV_1)
        with pytest.raises(Conflict, match="only a completed task"):
            open_(billing, "a", now=at("2026-10-20T00:00:00Z"))


class TestResolve:
    def test_accepted_in_an_open_month_the_task_is_not_billed(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"), job("b", "2026-10-10T00:00:00Z"))
        assert jobs(billing.upcoming(now=at("2026-10-20T00:00:00Z"))) == 2
        dispute, _ = open_(billing, "a", now=at("2026-10-20T00:00:00Z"))
        resolved, done = resolve(billing, dispute["id"], True, now=at("2026-10-21T00:00:00Z"))
        assert (resolved["status"], resolved["note"], resolved["credit_note_id"], done) == (
            "accepted",
            "checked",
            None,
            True,
        )
        assert jobs(billing.upcoming(now=at("2026-10-21T00:00:00Z"))) == 1
        billing.close("2026-10", now=NOV_1)
        assert billing.invoice("2026-10")["total"] == Decimal("0.50")

    def test_rejected_changes_nothing_billed(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        billing.rollup(now=NOV_1)
        dispute, _ = open_(billing, "a", now=at("2026-10-20T00:00:00Z"))
        assert (
            resolve(billing, dispute["id"], False, now=at("2026-10-21T00:00:00Z"))[0]["status"] == "rejected"
        )
        assert jobs(billing.upcoming(now=at("2026-10-21T00:00:00Z"))) == 1

    def test_accepted_after_the_close_credits_what_the_task_was_billed(self, billing: Billing) -> None:
        billing.send(
            job("a", "2026-10-10T00:00:00Z", task_type="support_ticket"), job("b", "2026-10-10T00:00:00Z")
        )
        billing.close("2026-10", now=NOV_1)
        assert billing.invoice("2026-10")["total"] == Decimal("1.70")
        dispute, _ = open_(billing, "a", now=at("2026-11-02T00:00:00Z"))
        resolved, _ = resolve(billing, dispute["id"], True, now=at("2026-11-03T00:00:00Z"))
        invoice = billing.invoice("2026-10")
        [note] = invoice["credit_notes"]
        assert (note["amount"], note["task"], note["dispute_id"]) == (Decimal("1.20"), "a", dispute["id"])
        assert (resolved["invoice_id"], resolved["credit_note_id"]) == (invoice["id"], note["id"])
        assert invoice["amount_due"] == Decimal("0.50") and invoice["total"] == Decimal(
            "1.70"
        )  # the invoice stays as it was
        # The closed month is not re-billed: no adjustment on November's invoice.
        assert billing.upcoming(now=at("2026-11-03T00:00:00Z"))["lines"] == []

    def test_the_credit_never_exceeds_what_is_left(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z", task_type="support_ticket"))
        billing.close("2026-10", now=NOV_1)
        invoice = billing.invoice("2026-10")
        with unit_of_work(billing.engine) as session:
            credit_notes.create_credit_note(
                session, billing.tenant, invoice["id"], amount="1.00", reason="goodwill", now=NOV_1
            )
        dispute, _ = open_(billing, "a", now=at("2026-11-02T00:00:00Z"))
        resolve(billing, dispute["id"], True, now=at("2026-11-03T00:00:00Z"))
        amounts = [n["amount"] for n in billing.invoice("2026-10")["credit_notes"]]
        assert amounts == [Decimal("1.00"), Decimal("0.20")]

    def test_resolving_again_the_same_way_replays_and_the_other_way_conflicts(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        billing.rollup(now=NOV_1)
        dispute, _ = open_(billing, "a", now=at("2026-10-20T00:00:00Z"))
        first, _ = resolve(billing, dispute["id"], True, now=at("2026-10-21T00:00:00Z"))
        assert resolve(billing, dispute["id"], True, now=at("2026-10-22T00:00:00Z")) == (first, False)
        with pytest.raises(Conflict, match="accepted already"):
            resolve(billing, dispute["id"], False, now=at("2026-10-22T00:00:00Z"))


def test_a_task_rolled_up_as_reopened_is_not_disputable(billing: Billing) -> None:
    billing.send(job("a", "2026-10-10T00:00:00Z"), ended("a", "2026-10-10T01:00:00Z", "reopened"))
    billing.rollup(now=datetime(2026, 11, 1, tzinfo=UTC))
    with pytest.raises(Conflict):
        open_(billing, "a", now=at("2026-10-20T00:00:00Z"))
