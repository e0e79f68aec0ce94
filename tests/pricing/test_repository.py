"""The rollup read as rating frames, and rating from the database against events directly."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.core.db import unit_of_work
from metering.core.money import round_money
from metering.core.periods import parse_month
from pricing import repository
from pricing.usage import TASK_COLUMNS, TOKEN_USAGE_COLUMNS
from tests.pricing.conftest import JOBS, RATES, TOKENS, Billing, at, ended, job, usage

OCTOBER = "2026-10"
NOV_1 = at("2026-11-01T00:00:00Z")


def frames(billing: Billing, month: str = OCTOBER) -> tuple[pd.DataFrame, pd.DataFrame]:
    billing.rollup(now=NOV_1)
    period = parse_month(month, billing.tenant.timezone)
    with unit_of_work(billing.engine) as session:
        return repository.token_usage(session, billing.tenant.id, period), repository.ended_tasks(session, billing.tenant.id, period)


class TestFrames:
    def test_token_rows_carry_billable_input_and_settled_cost(self, billing: Billing) -> None:
        billing.send(
            usage("t1", "2026-10-05T10:00:00Z", input_tokens=1_000_000, cache_read_tokens=400_000, output_tokens=1),
            usage("t1", "2026-10-05T11:00:00Z", input_tokens=1, customer="globex"),
        )
        tokens, _ = frames(billing)
        assert list(tokens.columns) == list(TOKEN_USAGE_COLUMNS)
        rows = tokens.sort_values("customer").to_dict("records")
        assert (rows[0]["customer"], rows[0]["input_tokens"], rows[0]["cache_read_tokens"]) == ("acme", 600_000, 400_000)
        # 600,000 × 3 + 400,000 × 0.30 + 1 × 15 per million = 1.920015 → 1,920,015,000 nanos
        assert rows[0]["provider_cost_nanos"] == 1_920_015_000
        # 1 token at 3.00 per million = 3 µ-units = 3,000 nanos
        assert (rows[1]["customer"], rows[1]["provider_cost_nanos"]) == ("globex", 3_000)
        assert rows[0]["day"] == pd.Timestamp("2026-10-05")

    def test_tasks_that_ended_in_the_month_open_ones_excluded(self, billing: Billing) -> None:
        billing.send(
            job("done", "2026-10-10T00:00:00Z", task_type="support_ticket"),
            job("failed", "2026-10-11T00:00:00Z", outcome="failed"),
            usage("open", "2026-10-12T00:00:00Z"),
            job("next-month", "2026-11-01T00:00:00Z"),
        )
        _, tasks = frames(billing)
        assert list(tasks.columns) == list(TASK_COLUMNS)
        got = tasks.sort_values("task")[["task", "task_type", "status"]].to_dict("records")
        assert [(r["task"], None if pd.isna(r["task_type"]) else r["task_type"], r["status"]) for r in got] == [
            ("done", "support_ticket", "completed"), ("failed", None, "failed"),
        ]  # fmt: skip
        assert str(tasks["ended_at"].dtype) == "datetime64[ns, UTC]"
        assert tasks.loc[tasks["task"] == "done", "provider_cost_nanos"].item() == 3_000_000_000

    def test_an_empty_month(self, billing: Billing) -> None:
        tokens, tasks = frames(billing)
        assert (len(tokens), len(tasks)) == (0, 0)


class TestRatingFromTheDatabase:
    def test_a_plan_version_changing_mid_month(self, make_billing: Any) -> None:
        v2 = JOBS | {"prices": {"default": "0.80", "support_ticket": "1.50"}, "failed": "0.10", "effective_from": "2026-10-16"}
        billing = make_billing(plans=[JOBS, v2], customers=[{"id": "acme", "plan": "jobs"}])
        billing.send(
            job("a", "2026-10-15T23:59:59.999Z"), job("b", "2026-10-16T00:00:00Z"),
            job("c", "2026-10-20T00:00:00Z", task_type="support_ticket"), job("d", "2026-10-21T00:00:00Z", outcome="failed"),
        )  # fmt: skip
        billing.close(OCTOBER, now=NOV_1)
        invoice = billing.invoice(OCTOBER)
        assert [(line["description"], line["quantity"], line["amount"], line["plan_version"]) for line in invoice["lines"]] == [
            ("Completed tasks (default price) [prices until 2026-10-15]", Decimal(1), Decimal("0.50"), 1),
            ("Completed tasks (default price) [prices from 2026-10-16]", Decimal(1), Decimal("0.80"), 2),
            ("Completed support_ticket tasks [prices from 2026-10-16]", Decimal(1), Decimal("1.50"), 2),
            ("Failed or cancelled tasks [prices from 2026-10-16]", Decimal(1), Decimal("0.10"), 2),
        ]
        assert invoice["plan_versions"] == {"jobs": [1, 2]}

    def test_markup_and_class_rates_on_the_same_usage(self, make_billing: Any) -> None:
        markup = {"id": "markup", "type": "per_token", "markup": "0.40"}
        billing = make_billing(plans=[TOKENS, markup],
                               customers=[{"id": "acme", "plan": "tokens"}, {"id": "globex", "plan": "markup"}])  # fmt: skip
        for customer in ("acme", "globex"):
            billing.send(usage(f"{customer}-t", "2026-10-05T00:00:00Z", customer=customer, input_tokens=1_500_000,
                               cache_read_tokens=500_000, output_tokens=200_000))  # fmt: skip
        billing.close(OCTOBER, now=NOV_1)
        # rates: 1,000,000 × 6 + 200,000 × 30 + 500,000 × 0.60 per million = 6.00 + 6.00 + 0.30
        assert billing.invoice(OCTOBER, "acme")["total"] == Decimal("12.30")
        # cost: 1,000,000 × 3 + 200,000 × 15 + 500,000 × 0.30 per million = 6.15; × 1.40 = 8.61
        globex = billing.invoice(OCTOBER, "globex")
        assert [(line["quantity"], line["unit_price"], line["amount"]) for line in globex["lines"]] == [
            (Decimal("6.150000000"), Decimal("1.40"), Decimal("8.61"))
        ]


_names = itertools.count()


@st.composite
def month_of_events(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Tasks of three customers around October: usage events, maybe a terminal event (which may
    fall outside the month, or be followed by a later one)."""
    events = []
    start = datetime(2026, 9, 30, 20, tzinfo=UTC)
    for index in range(draw(st.integers(0, 10))):
        task, customer = f"t{index}", draw(st.sampled_from(["acme", "globex", "initech"]))
        for _ in range(draw(st.integers(0, 3))):
            time = start + timedelta(minutes=draw(st.integers(0, 32 * 24 * 60)))
            inputs = draw(st.integers(0, 3_000_000))
            events.append(usage(task, time.isoformat(), customer=customer, input_tokens=inputs,
                                output_tokens=draw(st.integers(0, 400_000)), cache_read_tokens=draw(st.integers(0, inputs))))  # fmt: skip
        for _ in range(draw(st.integers(0, 2))):
            time = start + timedelta(minutes=draw(st.integers(0, 32 * 24 * 60)))
            outcome = draw(st.sampled_from(["completed", "completed", "failed", "cancelled"]))
            events.append(ended(task, time.isoformat(), outcome, customer=customer,
                                task_type=draw(st.sampled_from([None, "support_ticket"]))))  # fmt: skip
    return events


def reference_totals(events: list[dict[str, Any]], plans: dict[str, str]) -> dict[str, Decimal]:
    """October's invoice totals straight from the events, slowly, with Decimal."""
    first, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    lines: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    status: dict[str, tuple[datetime, str, str, str | None]] = {}
    task_type: dict[str, tuple[datetime, str]] = {}
    for event in events:
        time = at(event["time"])
        if event["type"] == "usage":
            if first <= time < end and plans[event["customer"]] == "tokens":
                billable = event["input_tokens"] - event["cache_read_tokens"]
                for name, count in (("input", billable), ("output", event["output_tokens"]), ("cache_read", event["cache_read_tokens"])):
                    lines[(event["customer"], name)] += Decimal(count) * Decimal(RATES[name]) / 1_000_000
        else:
            if event["task"] not in status or time >= status[event["task"]][0]:  # the latest terminal event wins
                status[event["task"]] = (time, event["type"].removeprefix("task."), event["customer"], None)
        if event.get("task_type") and (event["task"] not in task_type or time >= task_type[event["task"]][0]):
            task_type[event["task"]] = (time, event["task_type"])
    for task, (time, outcome, customer, _) in status.items():
        if first <= time < end and plans[customer] == "jobs":
            kind = task_type.get(task, (None, None))[1] if outcome == "completed" else "failed"
            price = {"support_ticket": "1.20", "failed": "0.05"}.get(kind or "", "0.50")
            lines[(customer, kind or "default")] += Decimal(price)
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for (customer, _), amount in lines.items():
        totals[customer] += round_money(amount, "USD")
    return {c: t for c, t in totals.items()}


class TestAgainstTheEvents:
    @settings(max_examples=25, deadline=None)
    @given(month_of_events())
    def test_invoice_totals_are_the_sum_of_their_lines_and_match_the_events(self, make_billing: Any, events: list[dict[str, Any]]) -> None:
        plans = {"acme": "jobs", "globex": "tokens", "initech": "jobs"}
        billing = make_billing(name=f"t-{next(_names)}", customers=[{"id": c, "plan": p} for c, p in plans.items()])
        # Same-instant terminal events are ordered by ingest: send them in time order, one batch.
        billing.send(sorted(events, key=lambda e: at(e["time"])))
        summary = billing.close(OCTOBER, now=NOV_1)
        got = {}
        for entry in summary["invoices"]:
            invoice = billing.invoice(OCTOBER, entry["customer"])
            assert invoice["total_minor"] == sum(int(line["amount"] * 100) for line in invoice["lines"])
            got[entry["customer"]] = invoice["total"]
        expected = reference_totals(events, plans)
        assert got == {c: t for c, t in expected.items() if c in got}
        assert all(t == 0 for c, t in expected.items() if c not in got)
