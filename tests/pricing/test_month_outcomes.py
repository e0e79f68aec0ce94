"""A month's outcomes per task type on a real database (`pricing.analysis.month_outcomes`, what
`compare` and the dashboard show), with settlement across a tenant-local month end."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from freezegun import freeze_time

from metering.core.db import unit_of_work
from metering.core.periods import parse_month
from pricing import analysis
from pricing.disputes import open_dispute
from tests.pricing.conftest import Billing, ended, job
from tests.pricing.test_settlement import rules


def outcomes(billing: Billing, month: str, *, now: datetime) -> dict[str | None, dict[str, Any]]:
    billing.rollup(now=now)
    with unit_of_work(billing.engine) as session:
        rows = analysis.month_outcomes(
            session, billing.tenant, parse_month(month, billing.tenant.timezone), now=now
        )
    return {row.task_type: row.as_dict() for row in rows}


def figures(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in ("completed", "settled", "pending", "reopened", "rejected", "disputed", "price_per_settled_job"))


class TestWithoutRules:
    def test_settled_is_completed_and_nothing_is_pending(self, billing: Billing) -> None:
        billing.send(job("a", "2026-10-10T00:00:00Z"), job("b", "2026-10-11T00:00:00Z", task_type="support_ticket"),
                     job("c", "2026-10-12T00:00:00Z", outcome="failed"))  # fmt: skip
        found = outcomes(billing, "2026-10", now=datetime(2026, 11, 2, tzinfo=UTC))
        assert figures(found[None]) == (1, 1, 0, 0, 0, 0, Decimal("0.5"))
        assert figures(found["support_ticket"]) == (1, 1, 0, 0, 0, 0, Decimal("1.2"))


class TestMonthEnd:
    def test_kolkata_a_job_completed_on_the_last_day_settles_next_month(self, make_billing: Any) -> None:
        billing = make_billing(timezone="Asia/Kolkata")
        rules(billing, {"task_type": "default", "settle_after": "30m"})
        # 23:20 and 23:40 local on Oct 31: the first settles at 23:50 (October), the second at 00:10 (November).
        billing.send(job("a", "2026-10-31T23:20:00+05:30", task_type="support_ticket"),
                     job("b", "2026-10-31T23:40:00+05:30", task_type="support_ticket"))  # fmt: skip
        with freeze_time("2026-10-31T18:29:59Z"):  # 23:59:59 local
            october = outcomes(billing, "2026-10", now=datetime.now(UTC))["support_ticket"]
            assert figures(october) == (2, 1, 1, 0, 0, 0, Decimal("1.2"))
        with freeze_time("2026-10-31T18:30:00Z"):  # midnight local: October has ended
            billing.close("2026-10", now=datetime.now(UTC))
        with freeze_time("2026-10-31T18:40:00Z"):  # 00:10 local, November 1st
            now = datetime.now(UTC)
            assert figures(outcomes(billing, "2026-10", now=now)["support_ticket"]) == (2, 1, 1, 0, 0, 0, Decimal("1.2"))
            november = outcomes(billing, "2026-11", now=now)["support_ticket"]
            assert figures(november) == (0, 1, 0, 0, 0, 0, Decimal("1.2"))
            assert (november["billed_jobs"], november["billed"]) == (1, Decimal("1.2"))


class TestStates:
    def test_reopened_rejected_and_disputed(self, billing: Billing) -> None:
        rules(billing, {"task_type": "default", "settle_after": "72h"})
        billing.send(
            job("a", "2026-10-01T00:00:00Z"), job("b", "2026-10-10T00:00:00Z"), ended("b", "2026-10-11T00:00:00Z", "reopened"),
            job("c", "2026-10-10T00:00:00Z"), ended("c", "2026-10-11T00:00:00Z", "rejected"), job("d", "2026-10-20T00:00:00Z"),
        )  # fmt: skip
        now = datetime(2026, 10, 21, tzinfo=UTC)
        billing.rollup(now=now)
        with unit_of_work(billing.engine) as session:
            open_dispute(session, billing.tenant, "a", reason="not done", actor="test", now=now)
        found = outcomes(billing, "2026-10", now=now)[None]
        assert figures(found) == (4, 1, 1, 1, 1, 1, Decimal("0.5"))
        assert found["billed"] == Decimal("0.50")
