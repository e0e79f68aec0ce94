"""`taskmeter demo`: a tenant whose plans tell a story (a different plan earns most for different
customers), closed months with finalized invoices, late usage billed as an adjustment, and
nothing doubled by a second run. The demo is anchored on `now`: the clock is frozen at a month's
first second and at its last."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pyarrow.dataset  # noqa: F401 - before freezegun swaps datetime.date: its C extension checks the type at import
import pytest
from freezegun import freeze_time
from sqlalchemy import Engine, func, select

from api import cli
from api.demo import PROFILES, demo_events, late_events
from api.scheduler import run_once
from api.settings import Settings, get_settings
from metering.core.db import unit_of_work
from metering.core.periods import period_of
from metering.core.tables import events, task_usage, usage_daily
from metering.core.tenants import get_tenant
from pricing import invoices as invoice_service
from pricing.tables import billing_periods, customer_plans, invoice_lines, invoices, plan_versions
from tests.conftest import TEST_SECRET

FIRST_SECOND = "2027-01-01T00:00:00Z"  # the current month has nothing yet; last month is December 2026
LAST_SECOND = "2026-03-31T23:59:59Z"
PLANS = {"tokens", "cost-plus", "jobs"}
# What the data is built to show: the plan that earns most differs by customer (README, the demo).
WINNERS = {"acme": "jobs", "globex": "jobs", "initech": "tokens", "umbrella": "cost-plus"}


@pytest.fixture
def run(database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    monkeypatch.setenv("TASKMETER_DATABASE_URL", database_url)
    monkeypatch.setenv("TASKMETER_SECRET_KEY", TEST_SECRET)
    get_settings.cache_clear()

    def invoke(*argv: str, at: str) -> tuple[int, str, str]:
        with freeze_time(at):
            code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield invoke
    get_settings.cache_clear()


@pytest.fixture(params=[FIRST_SECOND, LAST_SECOND], ids=["first-second", "last-second"])
def moment(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def months(moment: str) -> tuple[str, str, str]:
    """The month before last, last month and the current month of `moment`."""
    current = period_of(at(moment), "UTC")
    return current.previous().previous().label, current.previous().label, current.label


def demo(run: Any, moment: str) -> dict[str, Any]:
    code, out, err = run("demo", at=moment)
    assert code == 0, err
    return dict(json.loads(out))


def counts(engine: Engine) -> dict[str, int]:
    tables = (events, task_usage, plan_versions, customer_plans, billing_periods, invoices, invoice_lines)
    with engine.connect() as connection:
        return {t.name: connection.execute(select(func.count()).select_from(t)).scalar_one() for t in tables}


class TestTheStory:
    def test_each_customer_on_a_plan_and_a_different_plan_earns_most_for_different_customers(self, run: Any, moment: str) -> None:
        summary = demo(run, moment)
        assert set(summary["plans"]) == PLANS
        assert {c["id"] for c in summary["customers"]} == {p.customer for p in PROFILES} == set(WINNERS)
        for customer in summary["customers"]:
            assert customer["plan"] in PLANS and set(customer["compare_with"]) == PLANS - {customer["plan"]}
        _, last, _ = months(moment)
        code, out, err = run("compare", "--tenant", "demo", "--month", last, "--format", "json", at=moment)
        assert code == 0, err
        revenue: dict[str, dict[str, Decimal]] = {}
        rows = json.loads(out)["customers"]
        for row in rows:
            revenue.setdefault(row["customer"], {})[row["plan"]] = Decimal(row["revenue"])
        assert {c: set(by_plan) for c, by_plan in revenue.items()} == {c: PLANS for c in WINNERS}
        for by_plan in revenue.values():
            assert sorted(by_plan.values())[-1] > sorted(by_plan.values())[-2]  # one winner, no tie
        winners = {c: max(by_plan, key=lambda p: by_plan[p]) for c, by_plan in revenue.items()}
        assert winners == WINNERS and len(set(winners.values())) >= 2
        # globex is billed per token at flat rates for a pricey model: it costs more than it earns.
        globex = next(r for r in rows if r["customer"] == "globex" and r["billed"])
        assert globex["plan"] == "tokens" and Decimal(globex["margin"]) < 0
        # failed and cancelled tasks, most of all umbrella's
        umbrella = next(r for r in rows if r["customer"] == "umbrella" and r["billed"])
        assert umbrella["tasks_failed"] > 0 and umbrella["tasks_cancelled"] > 0
        assert umbrella["tasks_failed"] + umbrella["tasks_cancelled"] > umbrella["tasks_completed"] / 2

    def test_agents_act_under_a_persons_account(self, run: Any, engine: Engine) -> None:
        demo(run, LAST_SECOND)
        with engine.connect() as connection:
            rows = connection.execute(select(events.c.actor, events.c.agent).where(events.c.customer == "globex")).all()
        assert all(actor == "ben@globex.example" for actor, _ in rows)
        agents = {agent for _, agent in rows}
        assert {"ben/codex-1", "ben/codex-2", "ben/codex-3"} <= agents and None in agents  # and ben himself
        with engine.connect() as connection:  # the rollup keeps them apart
            rolled = connection.execute(select(usage_daily.c.actor, usage_daily.c.agent).where(usage_daily.c.customer == "globex").distinct()).all()
        assert {agent for _, agent in rolled} >= {"", "ben/codex-1", "ben/codex-2", "ben/codex-3"}

    def test_the_current_month_is_open_with_what_has_happened_by_now(self, run: Any, engine: Engine, moment: str) -> None:
        summary = demo(run, moment)
        *_, current = months(moment)
        assert summary["open_month"] == current
        with engine.connect() as connection:
            latest = connection.execute(select(func.max(events.c.time_us))).scalar_one()
        assert latest <= int(at(moment).timestamp()) * 1_000_000  # nothing from the future
        code, out, err = run("compare", "--tenant", "demo", "--month", current, "--format", "json", at=moment)
        assert code == 0, err
        compared = {row["customer"] for row in json.loads(out)["customers"]}
        assert compared == (set() if moment == FIRST_SECOND else set(WINNERS))


class TestClosedMonthsAndLateUsage:
    def test_last_month_is_closed_with_an_adjustment_for_the_month_before(self, run: Any, engine: Engine, moment: str) -> None:
        before, last, current = months(moment)
        summary = demo(run, moment)
        assert [(c["month"], c["newly_closed"], c["invoices"]) for c in summary["closed"]] == [(before, True, 4), (last, True, 4)]
        code, out, err = run("close", "--tenant", "demo", "--month", last, at=moment)
        assert code == 0, err
        closed = json.loads(out)
        assert closed["closed"] is False and len(closed["invoices"]) == 4  # closed by the demo; nothing changes
        code, out, _ = run("invoices", "--tenant", "demo", "--month", last, at=moment)
        listed = json.loads(out)
        assert {(i["customer"], i["status"], i["adjustment_lines"]) for i in listed} == {
            ("acme", "finalized", 0), ("globex", "finalized", 1), ("initech", "finalized", 0), ("umbrella", "finalized", 0),
        }  # fmt: skip
        globex = next(i for i in listed if i["customer"] == "globex")
        code, out, _ = run("invoices", "show", str(globex["id"]), "--tenant", "demo", at=moment)
        shown = json.loads(out)
        adjustments = [line for line in shown["lines"] if line["adjusts_period"] is not None]
        assert code == 0 and [(a["adjusts_period"], a["kind"]) for a in adjustments] == [(before, "tokens")]
        assert adjustments[0]["description"].startswith(f"Adjustment for {before}, usage reported after the month closed")
        assert Decimal(adjustments[0]["amount"]) > 0
        # ... and last month's late task is on this month's draft
        with unit_of_work(engine) as session:
            draft = invoice_service.upcoming_invoice(session, get_tenant(session, "demo"), "globex", now=at(moment))
        assert draft["period"] == current
        assert [line["adjusts_period"] for line in draft["lines"] if line["adjusts_period"]] == [last]


class TestRunningAgain:
    def test_a_second_run_changes_nothing(self, run: Any, engine: Engine, moment: str) -> None:
        first = demo(run, moment)
        before = counts(engine)
        second = demo(run, moment)
        assert counts(engine) == before
        assert (second["accepted"], second["duplicates"]) == (0, first["events"])
        assert [c["newly_closed"] for c in second["closed"]] == [False, False]
        assert second["key"] != first["key"]  # a fresh key each run, the only new row

    def test_a_run_a_month_later_adds_only_that_month(self, run: Any, engine: Engine) -> None:
        demo(run, LAST_SECOND)
        demo(run, "2026-04-01T00:00:00Z")
        march, april = at(LAST_SECOND), at("2026-04-01T00:00:00Z")
        expected = {e["id"] for e in demo_events(march) + demo_events(april)}
        expected |= {e["id"] for label in ("2026-01", "2026-02", "2026-03") for e in late_events(period_of(at(f"{label}-15T00:00:00Z"), "UTC"))}
        with engine.connect() as connection:
            stored = set(connection.execute(select(events.c.event_id)).scalars())
            closed = connection.execute(select(billing_periods.c.period).order_by(billing_periods.c.period)).scalars().all()
        assert stored == expected
        assert closed == ["2026-01", "2026-02", "2026-03"]

    def test_the_same_events_for_the_same_moment(self) -> None:
        assert demo_events(at(LAST_SECOND)) == demo_events(at(LAST_SECOND))
        assert len({e["id"] for e in demo_events(at(LAST_SECOND))}) == len(demo_events(at(LAST_SECOND)))


def test_the_scheduler_finds_nothing_wrong(run: Any, settings: Settings, engine: Engine, moment: str, caplog: pytest.LogCaptureFixture) -> None:
    """What `taskmeter serve` runs on its clock after `make run`: rollup, close, reports."""
    demo(run, moment)
    with caplog.at_level(logging.INFO, logger="taskmeter"):
        with freeze_time(moment):
            done = run_once(settings, engine, now=at(moment))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    before, _, _ = months(moment)  # last month, too, once the close grace period has passed
    assert {"tenant": "demo", "month": before} in done["reports"]
    assert (settings.reports_dir / "demo" / f"invoice-lines-{before}.csv").is_file()
