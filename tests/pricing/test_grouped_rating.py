"""Rating and comparison of grouped tasks (`pricing.usage.TASK_COUNT`: one row standing for the
tasks of a customer, task type and status that ended under one version of each plan, their costs
summed) give exactly what one row per task gives: every line's quantity, unit price and amounts,
every comparison figure, to the last digit. So does token usage summed over the month's days
when these do not matter (`pricing.usage.token_days_matter`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricing.compare import compare_plans
from pricing.plans import CustomerPlan, PlanBook
from pricing.rating import RatedMonth
from pricing.usage import TASK_COUNT, token_days_matter
from tests.pricing.test_rating import (
    OCTOBER,
    book,
    plan_versions,
    rate,
    task_frame,
    task_row,
    token_frame,
    token_row,
)

NAMES = ("acme", "beta", "gamma")


def grouped(tasks: pd.DataFrame, plans: PlanBook, tz: str) -> pd.DataFrame:
    """`tasks` as groups of one customer, task type, status and version of every plan, each with
    its task count, summed cost and the end of its first task."""
    days = tasks["ended_at"].dt.tz_convert(tz).dt.date
    signature = [tuple(plans.history(p).index(plans.at(p, day)) for p in sorted(plans.versions)) for day in days]
    keyed = tasks.assign(_kind=tasks["task_type"].fillna("\x00"), _versions=signature)
    rows = []
    for n, (_, group) in enumerate(keyed.groupby(["customer", "_kind", "status", "_versions"], sort=True)):
        first = group.iloc[0]
        rows.append({"customer": first["customer"], "task": f"group-{n}", "task_type": first["task_type"],
                     "status": first["status"], "ended_at": first["ended_at"],
                     "provider_cost_nanos": int(group["provider_cost_nanos"].sum()), TASK_COUNT: len(group)})  # fmt: skip
    frame = pd.DataFrame(rows, columns=[*tasks.columns, TASK_COUNT])
    frame["ended_at"] = pd.to_datetime(frame["ended_at"], utc=True)
    return frame.astype({"provider_cost_nanos": "int64", TASK_COUNT: "int64"})


def lines_of(rated: RatedMonth) -> list[tuple[str, ...]]:
    """Every field of every line as text (so that 1.0 and 1.00 differ)."""
    return [tuple(str(getattr(line, name)) for name in line.__dataclass_fields__) for line in rated.lines]


def no_allowance_one_by_one(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A per-job allowance without tiers takes the month's first tasks one by one: grouped rows
    are refused there (`TestRefused`), so the scenarios leave it out."""
    return [{**v, "included": 0} if v.get("prices") is not None else v for v in versions]


@st.composite
def months(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
    plan_dicts = [v for pid in ("p1", "p2") for v in no_allowance_one_by_one(draw(plan_versions(pid)))]
    names = list(NAMES[: draw(st.integers(min_value=1, max_value=3))])
    customers = {name: draw(st.sampled_from(["p1", "p2"])) for name in names}
    tokens = [
        token_row(customer=customer, day=f"2026-10-{day:02d}", input_tokens=draw(st.integers(0, 3_000_000)),
                  output_tokens=draw(st.integers(0, 500_000)), provider_cost_nanos=draw(st.integers(0, 10**11)))
        for day, customer in draw(st.sets(st.tuples(st.integers(1, 31), st.sampled_from(names)), max_size=5))
    ]  # fmt: skip
    tasks = []
    for index in range(draw(st.integers(min_value=8, max_value=60))):
        hour = draw(st.integers(min_value=0, max_value=30 * 24 + 21))
        ended = datetime(2026, 10, 1, 2) + timedelta(hours=hour)
        tasks.append(task_row(customer=draw(st.sampled_from(names)), task=f"t{index}",
                              task_type=draw(st.sampled_from([None, "support", "other", "default"])),
                              status=draw(st.sampled_from(["completed", "completed", "completed", "failed", "cancelled"])),
                              ended_at=ended.isoformat() + "+00:00",
                              provider_cost_nanos=draw(st.sampled_from([0, 1, 999_999, 10**9, 7 * 10**12]))))  # fmt: skip
    return plan_dicts, customers, tokens, tasks


def in_october(tasks: list[dict[str, Any]], tz: str) -> list[dict[str, Any]]:
    return [t for t in tasks if datetime.fromisoformat(t["ended_at"]).astimezone(ZoneInfo(tz)).month == 10]


class TestGroupedTasksRateAsEachTask:
    @given(months(), st.sampled_from(["UTC", "America/New_York"]))
    def test_the_invoice_lines(self, month: Any, tz: str) -> None:
        plan_dicts, customers, tokens, tasks = month
        plans = book(*plan_dicts)
        each = task_frame(*in_october(tasks, tz))
        one_by_one = rate(plans, customers, token_frame(*tokens), each, tz=tz)
        as_groups = rate(plans, customers, token_frame(*tokens), grouped(each, plans, tz), tz=tz)
        assert lines_of(as_groups) == lines_of(one_by_one)
        assert as_groups.totals() == one_by_one.totals()

    @given(months(), st.sampled_from(["UTC", "America/New_York"]))
    def test_the_comparison(self, month: Any, tz: str) -> None:
        plan_dicts, customers, tokens, tasks = month
        plans = book(*plan_dicts)
        lineup = [CustomerPlan(id=c, plan=p, compare_with=("p2" if p == "p1" else "p1",)) for c, p in customers.items()]
        each = task_frame(*in_october(tasks, tz))

        def compared(frame: pd.DataFrame) -> Any:
            return compare_plans(month=OCTOBER, customers=lineup, plans=plans, token_usage=token_frame(*tokens), tasks=frame,
                                 currency="USD", tz=tz)  # fmt: skip

        one_by_one, as_groups = compared(each), compared(grouped(each, plans, tz))
        for name in ("by_customer", "by_task_type", "by_model", "tenant"):
            pd.testing.assert_frame_equal(getattr(as_groups, name), getattr(one_by_one, name), check_exact=True)
        for plan_id, rated in one_by_one.rated.items():
            assert lines_of(as_groups.rated[plan_id]) == lines_of(rated)


class TestRefused:
    def test_an_allowance_of_the_first_tasks_needs_each_task(self) -> None:
        plans = book({"id": "jobs", "type": "per_job", "prices": {"default": "1.00"}, "included": 2})
        tasks = task_frame(task_row(task="g"), task_row(task="h", ended_at="2026-10-11T00:00:00Z"))
        with pytest.raises(ValueError, match="first completed tasks free"):
            rate(plans, {"acme": "jobs"}, tasks=tasks.assign(**{TASK_COUNT: [3, 1]}))
        ones = rate(plans, {"acme": "jobs"}, tasks=tasks.assign(**{TASK_COUNT: [1, 1]}))
        assert lines_of(ones) == lines_of(rate(plans, {"acme": "jobs"}, tasks=tasks))

    def test_with_tiers_the_allowance_comes_off_the_count(self) -> None:
        plans = book({"id": "jobs", "type": "per_job", "included": 2,
                      "tiers": {"mode": "graduated", "steps": [{"up_to": 3, "price": "1.00"}, {"up_to": None, "price": "0.50"}]}})  # fmt: skip
        each = task_frame(*[task_row(task=f"t{i}") for i in range(7)])
        group = task_frame(task_row(task="g")).assign(**{TASK_COUNT: [7]})
        assert lines_of(rate(plans, {"acme": "jobs"}, tasks=group)) == lines_of(rate(plans, {"acme": "jobs"}, tasks=each))

    @pytest.mark.parametrize("count", [0, -2])
    def test_a_group_of_no_tasks(self, count: int) -> None:
        plans = book({"id": "jobs", "type": "per_job", "prices": {"default": "1.00"}})
        with pytest.raises(ValueError, match="at least 1"):
            rate(plans, {"acme": "jobs"}, tasks=task_frame(task_row()).assign(**{TASK_COUNT: [count]}))

    def test_counts_are_exact_integers(self) -> None:
        plans = book({"id": "jobs", "type": "per_job", "prices": {"default": "1.00"}})
        with pytest.raises(TypeError, match="exact integers"):
            rate(plans, {"acme": "jobs"}, tasks=task_frame(task_row()).assign(**{TASK_COUNT: [2.0]}))

    def test_per_model_usage_of_completed_tasks_needs_each_task(self) -> None:
        plans = book({"id": "jobs", "type": "per_job", "prices": {"default": "1.00"}})
        group = task_frame(task_row(task="g")).assign(**{TASK_COUNT: [2]})
        usage = pd.DataFrame({"customer": ["acme"], "task": ["g"], "provider": ["openai"], "model": ["gpt-4o"], "input_tokens": [1],
                              "output_tokens": [1], "cache_read_tokens": [0], "cache_write_tokens": [0], "provider_cost_nanos": [5]})  # fmt: skip
        with pytest.raises(ValueError, match="one row per task"):
            compare_plans(month=OCTOBER, customers=[CustomerPlan(id="acme", plan="jobs")], plans=plans, token_usage=token_frame(),
                          tasks=group, currency="USD", task_model_usage=usage)  # fmt: skip


def month_long(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The versions with no unit price change inside October and no allowance of rates (which
    is consumed day by day): the month's days then do not matter to rating its tokens."""
    moved = {"2026-10-10": "2026-09-15", "2026-10-31": "2026-11-15"}
    out = []
    for version in versions:
        version = dict(version)
        if version.get("effective_from") in moved:
            version["effective_from"] = moved[version["effective_from"]]
        if version.get("rates") is not None:
            version["included"] = 0
        out.append(version)
    return out


@st.composite
def token_months(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, str], list[dict[str, Any]]]:
    plan_dicts = [v for pid in ("p1", "p2") for v in month_long(draw(plan_versions(pid)))]
    names = list(NAMES[: draw(st.integers(min_value=1, max_value=3))])
    customers = {name: draw(st.sampled_from(["p1", "p2"])) for name in names}
    model = st.sampled_from([("openai", "gpt-4o"), ("openai", "o3"), ("anthropic", "claude")])
    tokens = [
        token_row(customer=customer, day=f"2026-10-{day:02d}", provider=provider, model=name,
                  input_tokens=draw(st.integers(0, 3_000_000)), output_tokens=draw(st.integers(0, 500_000)),
                  cache_read_tokens=draw(st.integers(0, 100_000)), cache_write_tokens=draw(st.integers(0, 10_000)),
                  provider_cost_nanos=draw(st.integers(0, 10**11)), unpriced_events=draw(st.sampled_from([0, 0, 2])))
        for day, customer, (provider, name) in draw(st.sets(st.tuples(st.integers(1, 31), st.sampled_from(names), model), max_size=12))
    ]  # fmt: skip
    return plan_dicts, customers, tokens


def summed_over_days(tokens: pd.DataFrame) -> pd.DataFrame:
    """Each customer's usage of a model summed over the month, on its first day."""
    sums = [c for c in tokens.columns if c not in ("customer", "day", "provider", "model")]
    summed = tokens.groupby(["customer", "provider", "model"], as_index=False)[sums].sum()
    return summed.assign(day=pd.Timestamp("2026-10-01"))[list(tokens.columns)]


class TestTokensSummedOverTheMonth:
    @given(token_months())
    def test_rate_and_compare_as_their_days_when_these_do_not_matter(self, month: Any) -> None:
        plan_dicts, customers, tokens = month
        plans = book(*plan_dicts)
        assert not token_days_matter(plans, OCTOBER)
        daily = token_frame(*tokens)
        assert lines_of(rate(plans, customers, summed_over_days(daily))) == lines_of(rate(plans, customers, daily))
        lineup = [CustomerPlan(id=c, plan=p, compare_with=("p2" if p == "p1" else "p1",)) for c, p in customers.items()]

        def compared(frame: pd.DataFrame) -> Any:
            return compare_plans(month=OCTOBER, customers=lineup, plans=plans, token_usage=frame, tasks=task_frame(), currency="USD")

        by_days, by_month = compared(daily), compared(summed_over_days(daily))
        for name in ("by_customer", "by_model", "tenant"):
            pd.testing.assert_frame_equal(getattr(by_month, name), getattr(by_days, name), check_exact=True)

    @pytest.mark.parametrize(("plan", "matters"), [
        ({"id": "t", "type": "per_token", "markup": "0.4"}, False),
        ({"id": "t", "type": "per_token", "markup": "0.4", "effective_from": "2026-10-01"}, False),
        ({"id": "t", "type": "per_token", "markup": "0.4", "effective_from": "2026-10-02"}, True),
        ({"id": "t", "type": "per_token", "rates": {"input": "1", "output": "1", "cache_read": "1", "cache_write": "1"}, "included": 5}, True),
        ({"id": "t", "type": "per_token", "included": 5, "tiers": {"mode": "volume", "steps": [{"up_to": None, "price": "1"}]}}, False),
        ({"id": "j", "type": "per_job", "prices": {"default": "1"}, "effective_from": "2026-10-02"}, False),
    ])  # fmt: skip
    def test_when_the_days_matter(self, plan: dict[str, Any], matters: bool) -> None:
        earlier = {**plan, "effective_from": "2026-01-01"}
        plans = book(earlier, plan) if plan.get("effective_from") else book(plan)
        assert token_days_matter(plans, OCTOBER) is matters
