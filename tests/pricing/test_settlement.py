"""Settlement on a real database: a per-job plan bills a completed task in the tenant-local month
in which it settles; the upcoming invoice shows the tasks awaiting settlement apart."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from freezegun import freeze_time

from tests.pricing.conftest import Billing, at, ended, job

WINDOW = {"outcomes": [{"task_type": "default", "settle_after": "72h"}]}


def rules(billing: Billing, *entries: dict[str, Any], effective_from: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"outcomes": list(entries)}
    if effective_from:
        config["effective_from"] = effective_from
    return billing.config(config, now=datetime(2020, 1, 1, tzinfo=UTC))


def jobs(invoice: dict[str, Any]) -> Decimal:
    return sum((line["quantity"] for line in invoice["lines"] if line["kind"] == "jobs"), Decimal(0))


def event(task: str, outcome: str, time: str, **fields: Any) -> dict[str, Any]:
    return ended(task, time, outcome, **fields)


class TestWithoutRules:
    def test_a_completed_task_bills_at_once_and_nothing_is_pending(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        upcoming = billing.upcoming(now=at("2026-10-10T00:00:01Z"))
        assert jobs(upcoming) == 1
        assert upcoming["pending"] == {"count": 0, "amount": Decimal("0.00"), "currency": "USD"}
        assert upcoming["outcome_versions"] == []


class TestWindow:
    def test_pending_until_the_window_passes(self, billing: Billing) -> None:
        rules(billing, {"task_type": "default", "settle_after": "72h"})
        billing.send(
            job("a", "2026-10-10T00:00:00Z"), job("b", "2026-10-10T00:00:00Z", task_type="support_ticket")
        )
        before = billing.upcoming(now=at("2026-10-12T23:59:59Z"))
        assert jobs(before) == 0
        assert before["pending"] == {"count": 2, "amount": Decimal("1.70"), "currency": "USD"}
        after = billing.upcoming(now=at("2026-10-13T00:00:00Z"))
        assert jobs(after) == 2 and after["total"] == Decimal("1.70")
        assert after["pending"]["count"] == 0
        assert after["outcome_versions"] == [1]

    def test_reopened_before_settlement_is_not_billed_and_a_new_completion_starts_a_new_window(
        self, billing: Billing
    ) -> None:
        rules(billing, {"task_type": "default", "settle_after": "72h"})
        billing.send(job("a", "2026-10-10T00:00:00Z"), event("a", "reopened", "2026-10-11T00:00:00Z"))
        assert jobs(billing.upcoming(now=at("2026-10-14T00:00:00Z"))) == 0
        billing.send(event("a", "completed", "2026-10-15T00:00:00Z"))
        assert jobs(billing.upcoming(now=at("2026-10-17T23:00:00Z"))) == 0
        assert jobs(billing.upcoming(now=at("2026-10-18T00:00:00Z"))) == 1

    def test_rejected_is_billed_as_failed(self, billing: Billing) -> None:
        rules(billing, {"task_type": "default", "settle_after": "72h"})
        billing.send(job("a", "2026-10-10T00:00:00Z"), event("a", "rejected", "2026-10-11T00:00:00Z"))
        upcoming = billing.upcoming(now=at("2026-10-20T00:00:00Z"))
        assert [(line["kind"], line["amount"]) for line in upcoming["lines"]] == [
            ("jobs_failed", Decimal("0.05"))
        ]

    def test_acceptance_settles_at_once(self, billing: Billing) -> None:
        rules(billing, {"task_type": "default", "settle_after": "72h"})
        billing.send(job("a", "2026-10-10T00:00:00Z"), event("a", "accepted", "2026-10-10T01:00:00Z"))
        assert jobs(billing.upcoming(now=at("2026-10-10T01:00:00Z"))) == 1

    def test_require_acceptance(self, billing: Billing) -> None:
        rules(billing, {"task_type": "default", "require_acceptance": True})
        billing.send(job("a", "2026-10-10T00:00:00Z"))
        upcoming = billing.upcoming(now=at("2026-10-30T00:00:00Z"))
        assert (jobs(upcoming), upcoming["pending"]["count"]) == (0, 1)
        billing.send(event("a", "accepted", "2026-10-30T00:00:00Z"))
        assert jobs(billing.upcoming(now=at("2026-10-30T00:00:00Z"))) == 1


class TestMonthEnds:
    """A window that runs past a month end moves the job to the next month, in the tenant's zone."""

    def test_kolkata(self, make_billing: Any) -> None:
        billing = make_billing(timezone="Asia/Kolkata")
        rules(billing, {"task_type": "default", "settle_after": "30m"})
        # 23:20 and 23:40 local on Oct 31: the first settles at 23:50 (October), the second at 00:10 (November).
        billing.send(job("a", "2026-10-31T23:20:00+05:30"), job("b", "2026-10-31T23:40:00+05:30"))
        with freeze_time("2026-10-31T18:29:59Z"):  # 23:59:59 local
            now = datetime.now(UTC)
            upcoming = billing.upcoming(now=now)
            assert (jobs(upcoming), upcoming["pending"]["count"]) == (1, 1)
        with freeze_time("2026-10-31T18:30:00Z"):  # midnight local: October has ended
            now = datetime.now(UTC)
            october = billing.close("2026-10", now=now)
            assert [i["total"] for i in october["invoices"]] == [Decimal("0.50")]
            assert billing.invoice("2026-10")["outcome_versions"] == [1]
        with freeze_time("2026-10-31T18:40:00Z"):  # 00:10 local, November 1st
            assert jobs(billing.upcoming(now=datetime.now(UTC))) == 1

    def test_honolulu(self, make_billing: Any) -> None:
        billing = make_billing(timezone="Pacific/Honolulu")
        rules(billing, {"task_type": "default", "settle_after": "2d"})
        # Oct 29 23:00 local settles Oct 31 23:00 local (Nov 1 09:00 UTC): October.
        # Oct 30 01:00 local settles Nov 1 01:00 local: November.
        billing.send(job("a", "2026-10-29T23:00:00-10:00"), job("b", "2026-10-30T01:00:00-10:00"))
        with freeze_time("2026-11-01T10:00:00Z"):  # midnight local
            october = billing.close("2026-10", now=datetime.now(UTC))
            assert [i["total"] for i in october["invoices"]] == [Decimal("0.50")]
        with freeze_time("2026-11-01T11:00:00Z"):  # 01:00 local
            upcoming = billing.upcoming(now=datetime.now(UTC))
            assert (jobs(upcoming), upcoming["pending"]["count"]) == (1, 0)

    def test_a_rule_version_applies_from_its_day(self, billing: Billing) -> None:
        rules(billing, {"task_type": "default", "settle_after": "1h"})
        rules(billing, {"task_type": "default", "settle_after": "2d"}, effective_from="2026-10-15")
        billing.send(job("a", "2026-10-14T12:00:00Z"), job("b", "2026-10-15T12:00:00Z"))
        upcoming = billing.upcoming(now=at("2026-10-15T13:00:00Z"))
        assert (jobs(upcoming), upcoming["pending"]["count"], upcoming["outcome_versions"]) == (1, 1, [1])
