"""A month's outcomes per task type, without a database (`pricing.outcome_counts`): counts from each
task's settlement, and the effective price per settled job against exact Decimal references."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pandas as pd

from metering.core.periods import parse_month
from metering.events.ingest import to_us
from pricing.config import validate_config
from pricing.outcome_counts import DISPUTE_INPUT, OUTCOME_INPUT, TaskTypeOutcomes, count_outcomes
from pricing.plans import PlanBook

JOBS = {"id": "jobs", "type": "per_job", "prices": {"default": "0.50", "support_ticket": "1.20"}, "failed": "0.05"}
TOKENS = {"id": "tokens", "type": "per_token", "rates": {"input": "6.00", "output": "30.00", "cache_read": "0.60", "cache_write": "7.50"}}
OCTOBER = parse_month("2026-10", "UTC")
AFTER = datetime(2026, 11, 15, tzinfo=UTC)


def us(text: str) -> int:
    return to_us(datetime.fromisoformat(text.replace("Z", "+00:00")))


def task(name: str, *, customer: str = "acme", task_type: str | None = None, status: str = "completed",
         completed: str | None = None, settled: str | None = None, ended: str | None = None,
         reopened: str | None = None, rejected: int = 0, rule: int | None = None, excluded: bool = False) -> dict[str, Any]:  # fmt: skip
    ended = ended if ended is not None else (completed if status == "completed" else None)
    return {
        "customer": customer, "task": name, "task_type": task_type, "status": status,
        "ended_us": us(ended) if ended else None, "completed_us": us(completed) if completed else None,
        "reopened_us": us(reopened) if reopened else None, "rejected": rejected,
        "settled_us": us(settled) if settled else None, "rule_version": rule, "excluded": excluded,
    }  # fmt: skip


def frame(*rows: dict[str, Any]) -> pd.DataFrame:
    data = pd.DataFrame(list(rows), columns=list(OUTCOME_INPUT))
    for name in ("ended_us", "completed_us", "reopened_us", "settled_us", "rule_version"):
        data[name] = data[name].astype("Int64")
    return data.astype({"rejected": "int64", "excluded": bool})


def disputes(*rows: tuple[str, str | None, str]) -> pd.DataFrame:
    return pd.DataFrame([(t, k, us(at)) for t, k, at in rows], columns=list(DISPUTE_INPUT))


def book(*plans: dict[str, Any]) -> PlanBook:
    return validate_config({"plans": list(plans)}).plans


def count(tasks: pd.DataFrame, *, plans: PlanBook | None = None, customers: dict[str, str] | None = None,
          disputed: pd.DataFrame | None = None, now: datetime = AFTER, period: Any = OCTOBER) -> dict[str | None, TaskTypeOutcomes]:  # fmt: skip
    rows = count_outcomes(
        tasks, disputed if disputed is not None else disputes(), period=period, now=now,
        plans=plans or book(JOBS, TOKENS), customers=customers or {"acme": "jobs"}, currency="USD",
    )  # fmt: skip
    return {row.task_type: row for row in rows}


class TestWithoutRules:
    def test_settled_is_completed_and_nothing_is_pending(self) -> None:
        found = count(frame(
            task("a", completed="2026-10-03T00:00:00Z", settled="2026-10-03T00:00:00Z"),
            task("b", task_type="support_ticket", completed="2026-10-04T00:00:00Z", settled="2026-10-04T00:00:00Z"),
            task("c", task_type="support_ticket", completed="2026-10-05T00:00:00Z", settled="2026-10-05T00:00:00Z"),
            task("d", status="failed", ended="2026-10-06T00:00:00Z"),
        ))  # fmt: skip
        assert found["support_ticket"] == TaskTypeOutcomes(
            "support_ticket", completed=2, settled=2, billed_jobs=2, billed=Decimal("2.40"),
            price_per_settled_job=Decimal("1.2"),
        )  # fmt: skip
        assert found[None] == TaskTypeOutcomes(
            None, completed=1, settled=1, billed_jobs=1, billed=Decimal("0.5"), price_per_settled_job=Decimal("0.5")
        )
        assert list(found) == ["support_ticket", None]

    def test_a_task_completed_then_failed_counts_nowhere(self) -> None:
        found = count(frame(task("a", status="failed", completed="2026-10-03T00:00:00Z", ended="2026-10-04T00:00:00Z")))
        assert found == {}


class TestWithRules:
    def test_states_by_task_type(self) -> None:
        found = count(
            frame(
                task("s", completed="2026-10-01T00:00:00Z", settled="2026-10-04T00:00:00Z", rule=1),
                task("late", completed="2026-10-31T00:00:00Z", settled="2026-11-03T00:00:00Z", rule=1),
                task("open", status="open", completed="2026-10-10T00:00:00Z", reopened="2026-10-11T00:00:00Z", rule=1),
                task("rej", status="failed", completed="2026-10-12T00:00:00Z", ended="2026-10-13T00:00:00Z", rejected=1, rule=1),
                task("prev", completed="2026-09-29T00:00:00Z", settled="2026-10-02T00:00:00Z", rule=1),
            ),
            disputed=disputes(("s", None, "2026-10-20T00:00:00Z"), ("s", None, "2026-10-21T00:00:00Z"),
                              ("x", None, "2026-11-01T00:00:00Z")),
        )  # fmt: skip
        assert found[None] == TaskTypeOutcomes(
            None, completed=4, settled=2, pending=1, reopened=1, rejected=1, disputed=1, billed_jobs=2,
            billed=Decimal("1.00"), price_per_settled_job=Decimal("0.5"),
        )  # fmt: skip

    def test_pending_is_counted_at_now_in_the_current_month(self) -> None:
        tasks = frame(task("a", completed="2026-10-20T00:00:00Z", settled="2026-10-23T00:00:00Z", rule=1))
        during = count(tasks, now=datetime(2026, 10, 22, tzinfo=UTC))[None]
        assert (during.completed, during.settled, during.pending, during.price_per_settled_job) == (1, 0, 1, None)
        after = count(tasks, now=datetime(2026, 10, 23, tzinfo=UTC))[None]
        assert (after.settled, after.pending, after.billed) == (1, 0, Decimal("0.5"))

    def test_a_job_settling_next_month_is_pending_then_settled_there(self) -> None:
        tasks = frame(task("a", task_type="support_ticket", completed="2026-10-31T23:00:00Z",
                           settled="2026-11-01T00:30:00Z", rule=1))  # fmt: skip
        october = count(tasks)["support_ticket"]
        november = count(tasks, period=parse_month("2026-11", "UTC"), now=datetime(2026, 12, 1, tzinfo=UTC))
        assert (october.completed, october.settled, october.pending) == (1, 0, 1)
        assert (november["support_ticket"].completed, november["support_ticket"].settled) == (0, 1)
        assert november["support_ticket"].price_per_settled_job == Decimal("1.2")

    def test_an_accepted_dispute_in_an_open_month_settles_but_bills_nothing(self) -> None:
        found = count(frame(
            task("a", completed="2026-10-01T00:00:00Z", settled="2026-10-01T00:00:00Z", rule=1),
            task("b", completed="2026-10-02T00:00:00Z", settled="2026-10-02T00:00:00Z", rule=1, excluded=True),
        ))[None]  # fmt: skip
        assert (found.settled, found.billed_jobs, found.billed) == (2, 1, Decimal("0.5"))


class TestEffectivePrice:
    def test_included_jobs_and_a_shared_default_key_split_by_count(self) -> None:
        plans = book({"id": "jobs", "type": "per_job", "prices": {"default": "0.90"}, "included": 1})
        found = count(frame(
            task("a", task_type="x", completed="2026-10-01T00:00:00Z", settled="2026-10-01T00:00:00Z"),
            task("b", task_type="x", completed="2026-10-02T00:00:00Z", settled="2026-10-02T00:00:00Z"),
            task("c", task_type="y", completed="2026-10-03T00:00:00Z", settled="2026-10-03T00:00:00Z"),
        ), plans=plans)  # fmt: skip
        # One line: 2 charged jobs × 0.90 = 1.80 over 3 jobs: x has 2/3 of it, y 1/3.
        assert (found["x"].billed, found["x"].price_per_settled_job) == (Decimal("1.2"), Decimal("0.6"))
        assert (found["y"].billed, found["y"].price_per_settled_job) == (Decimal("0.6"), Decimal("0.6"))

    def test_graduated_tiers_over_the_customers_jobs(self) -> None:
        plans = book({"id": "jobs", "type": "per_job", "tiers": {"mode": "graduated", "steps": [
            {"up_to": 2, "price": "1.00"}, {"up_to": None, "price": "0.25"}]}})  # fmt: skip
        found = count(frame(*(
            task(f"t{i}", task_type="x" if i < 3 else "y", completed=f"2026-10-0{i + 1}T00:00:00Z",
                 settled=f"2026-10-0{i + 1}T00:00:00Z") for i in range(4)
        )), plans=plans)  # fmt: skip
        # 2 × 1.00 + 2 × 0.25 = 2.50 over 4 jobs: 0.625 a job whatever its type.
        assert found["x"].billed == Decimal("1.875") and found["y"].billed == Decimal("0.625")
        assert found["x"].price_per_settled_job == found["y"].price_per_settled_job == Decimal("0.625")

    def test_a_repeating_quotient_is_exact_to_60_digits(self) -> None:
        plans = book({"id": "jobs", "type": "per_job", "prices": {"default": "1.00"}, "included": 2})
        found = count(frame(*(
            task(f"t{i}", completed=f"2026-10-0{i + 1}T00:00:00Z", settled=f"2026-10-0{i + 1}T00:00:00Z") for i in range(3)
        )), plans=plans)[None]  # fmt: skip
        assert found.price_per_settled_job == Decimal("0." + "3" * 60)

    def test_customers_billed_per_token_are_left_out_of_the_price(self) -> None:
        found = count(frame(
            task("a", completed="2026-10-01T00:00:00Z", settled="2026-10-01T00:00:00Z"),
            task("b", customer="globex", completed="2026-10-01T00:00:00Z", settled="2026-10-01T00:00:00Z"),
        ), customers={"acme": "jobs", "globex": "tokens"})[None]  # fmt: skip
        assert (found.settled, found.billed_jobs, found.price_per_settled_job) == (2, 1, Decimal("0.5"))

    def test_a_price_change_mid_month_splits_by_version(self) -> None:
        plans = book(
            {**JOBS, "prices": {"default": "0.50"}},
            {**JOBS, "prices": {"default": "0.80"}, "effective_from": "2026-10-16"},
        )
        found = count(frame(
            task("a", completed="2026-10-01T00:00:00Z", settled="2026-10-01T00:00:00Z"),
            task("b", completed="2026-10-20T00:00:00Z", settled="2026-10-20T00:00:00Z"),
        ), plans=plans)[None]  # fmt: skip
        assert (found.billed, found.price_per_settled_job) == (Decimal("1.3"), Decimal("0.65"))
