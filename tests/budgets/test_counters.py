"""Counters at ingestion equal the rollup's figures exactly (random batches, replays, late
events); periods in the tenant's time zone (UTC+05:30, a DST change); config validation paths."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select

from metering.core.db import make_engine, unit_of_work, upgrade_schema
from metering.core.errors import InvalidInput
from metering.core.periods import Period, period_of
from metering.core.tables import task_usage, usage_daily
from metering.core.tenants import Tenant, create_tenant
from metering.events import spend_follower
from metering.events.ingest import ingest_events
from metering.rollup.pipeline import rollup_tenant
from metering.spend import budget_repository
from metering.spend import counters as spend
from metering.spend.budget_tables import budget_counters
from metering.spend.budgets import Budget, parse_budgets, reached
from pricing.service import load_config
from tests.factories import make_event

NOW = datetime(2026, 11, 18, 10, 30, tzinfo=UTC)


def budget(**fields: Any) -> Budget:
    entry = {"id": "b", "measure": "provider_cost", "limit": "100", "period": "month", **fields}
    return Budget.model_validate(entry)


def put(engine: Engine, tenant: Tenant, *entries: Budget) -> None:
    with unit_of_work(engine) as session:
        budget_repository.replace_all(session, tenant.id, list(entries), now=NOW)


def ingest(engine: Engine, tenant: Tenant, events: list[dict[str, Any]]) -> Any:
    with unit_of_work(engine) as session:
        return ingest_events(session, tenant.id, events, now=NOW)


def standing(engine: Engine, tenant: Tenant, budget_id: str, at: datetime) -> spend.Standing:
    with engine.connect() as connection:
        chosen = budget_repository.get(connection, tenant.id, budget_id)
        (found,) = spend.standings(connection, tenant.id, [chosen], tenant.timezone, now=at)
    return found


class TestConfigValidation:
    def test_every_problem_is_named_by_its_path(self) -> None:
        entries = [
            {"id": "ok", "measure": "tokens", "limit": 10, "period": "day"},
            {"id": "bad", "measure": "jobs", "limit": "1.5", "period": "day"},
            {
                "id": "ok",
                "measure": "cost",
                "limit": "-1",
                "period": "year",
                "alerts": [0],
                "scope": {"team": "x"},
            },
        ]
        _, problems = parse_budgets(entries)
        paths = {path for path, _ in problems}
        assert "budgets[1].limit" in paths
        assert {
            "budgets[2].measure",
            "budgets[2].limit",
            "budgets[2].period",
            "budgets[2].alerts[0]",
            "budgets[2].scope.team",
        } <= paths

    def test_a_float_limit_is_refused(self) -> None:
        _, problems = parse_budgets([{"id": "x", "measure": "provider_cost", "limit": 1.5, "period": "day"}])
        assert [p for p, _ in problems] == ["budgets[0].limit"]

    def test_the_config_file_is_all_or_nothing(self, engine: Engine, tenant: Tenant) -> None:
        text = """
plans:
  - {id: jobs, type: per_job, prices: {default: "0.50"}}
budgets:
  - {id: a, measure: tokens, limit: 100, period: day}
  - {id: b, measure: provider_cost, limit: "-5", period: month}
"""
        with pytest.raises(InvalidInput) as error, unit_of_work(engine) as session:
            load_config(session, tenant, text, now=NOW)
        assert [d["field"] for d in error.value.detail] == ["budgets[1].limit"]
        with unit_of_work(engine) as session:
            assert budget_repository.stored(session, tenant.id) == {}
        with unit_of_work(engine) as session:
            summary = load_config(session, tenant, text.replace('"-5"', '"5.00"'), now=NOW)
        assert summary["budgets"] == {"added": 2, "changed": 0, "removed": 0, "unchanged": 0}


class TestPeriods:
    def test_india_day_and_month_start_at_local_midnight(self) -> None:
        # 2026-11-30T18:29:59Z is 23:59:59 on the 30th in Kolkata; a second later it is December.
        before = period_of(datetime(2026, 11, 30, 18, 29, 59, tzinfo=UTC), "Asia/Kolkata", "month")
        after = period_of(datetime(2026, 11, 30, 18, 30, tzinfo=UTC), "Asia/Kolkata", "month")
        assert before.first_day == date(2026, 11, 1) and after.first_day == date(2026, 12, 1)
        assert after.start == datetime(2026, 11, 30, 18, 30, tzinfo=UTC)
        day = period_of(datetime(2026, 11, 30, 18, 30, tzinfo=UTC), "Asia/Kolkata", "day")
        assert (day.start, day.end) == (
            datetime(2026, 11, 30, 18, 30, tzinfo=UTC),
            datetime(2026, 12, 1, 18, 30, tzinfo=UTC),
        )

    def test_a_day_across_the_dst_change_has_25_hours(self) -> None:
        day = period_of(datetime(2026, 10, 25, 12, tzinfo=UTC), "Europe/Berlin", "day")
        assert day.end - day.start == timedelta(hours=25)
        week = period_of(datetime(2026, 10, 25, 12, tzinfo=UTC), "Europe/Berlin", "week")
        assert week.first_day == date(2026, 10, 19) and week.end - week.start == timedelta(days=7, hours=1)

    def test_counters_split_at_local_midnight_in_india(
        self, engine: Engine, make_tenant: Callable[..., Tenant]
    ) -> None:
        tenant = make_tenant("kolkata", timezone="Asia/Kolkata")
        put(engine, tenant, budget(id="daily", measure="tokens", limit="1000000", period="day"))
        ingest(engine, tenant, [
            make_event(id="e1", time="2026-11-17T18:29:59Z", input_tokens=10, output_tokens=1),  # 23:59:59 on the 17th
            make_event(id="e2", time="2026-11-17T18:30:00Z", input_tokens=20, output_tokens=2),  # 00:00 on the 18th
        ])  # fmt: skip
        assert standing(engine, tenant, "daily", datetime(2026, 11, 17, 12, tzinfo=UTC)).used == 11
        assert standing(engine, tenant, "daily", datetime(2026, 11, 18, 12, tzinfo=UTC)).used == 22

    def test_counters_across_a_dst_change(self, engine: Engine, make_tenant: Callable[..., Tenant]) -> None:
        tenant = make_tenant("berlin", timezone="Europe/Berlin")
        put(engine, tenant, budget(id="daily", measure="tokens", limit="1000000", period="day"))
        ingest(engine, tenant, [
            make_event(id="e1", time="2026-10-24T22:30:00Z", input_tokens=1, output_tokens=0),  # 00:30 CEST on the 25th
            make_event(id="e2", time="2026-10-25T22:30:00Z", input_tokens=2, output_tokens=0),  # 23:30 CET on the 25th
            make_event(id="e3", time="2026-10-25T23:00:00Z", input_tokens=4, output_tokens=0),  # 00:00 CET on the 26th
        ])  # fmt: skip
        assert standing(engine, tenant, "daily", datetime(2026, 10, 25, 12, tzinfo=UTC)).used == 3
        assert standing(engine, tenant, "daily", datetime(2026, 10, 26, 12, tzinfo=UTC)).used == 4


def _random_events(rng: random.Random, count: int, start: int) -> list[dict[str, Any]]:
    models = [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-3-5-sonnet-latest"),
        ("nobody", "unknown-model"),
    ]
    out = []
    for n in range(start, start + count):
        task = f"t{rng.randrange(40)}"
        customer = f"c{int(task[1:]) % 3}"  # a task's events share its customer
        moment = datetime(2026, 10, 20, tzinfo=UTC) + timedelta(seconds=rng.randrange(40 * 86_400))
        time = moment.isoformat().replace("+00:00", "Z")
        kind = rng.choice(["usage"] * 6 + ["task.completed", "task.completed", "task.failed", "task.started"])
        if kind == "usage":
            provider, model = rng.choice(models)
            inputs = rng.randrange(0, 200_000)
            cache = rng.randrange(0, inputs + 1)
            out.append(make_event(id=f"e{n}", task=task, customer=customer, time=time, provider=provider, model=model,
                                  input_tokens=inputs, cache_read_tokens=cache, output_tokens=rng.randrange(0, 5000)))  # fmt: skip
        else:
            out.append(make_event(id=f"e{n}", type=kind, task=task, customer=customer, time=time))
    return out


class TestCountersEqualTheRollup:
    @pytest.mark.parametrize("counting", ["inline", "deferred"])
    @pytest.mark.parametrize(
        ("seed", "timezone"), [(1, "UTC"), (2, "UTC"), (3, "Asia/Kolkata"), (4, "Europe/Berlin")]
    )  # Berlin: the events span the change to winter time on 2026-10-25
    def test_random_batches_replays_and_late_events(
        self, engine: Engine, make_tenant: Callable[..., Tenant], seed: int, timezone: str, counting: str
    ) -> None:
        """Inline: each batch counted as it is stored. Deferred: batches only stored, the
        follower run after some of them (at random) and once at the end."""
        tenant = make_tenant(f"random-{seed}", timezone=timezone)
        rng = random.Random(seed)
        follower_runs = random.Random(seed + 100)  # apart: both modes store the same events
        if counting == "deferred":
            spend_follower.start(engine, tenant.id, now=NOW)
        put(engine, tenant,
            budget(id="cost-all", period="month"), budget(id="cost-c1", scope={"customer": "c1"}, period="week"),
            budget(id="tokens-c2", measure="tokens", limit="1000000000", scope={"customer": "c2"}, period="day"),
            budget(id="jobs-all", measure="jobs", limit="1000", period="month"),
            budget(id="jobs-c0", measure="jobs", limit="1000", scope={"customer": "c0"}, period="day"))  # fmt: skip
        sent: list[dict[str, Any]] = []
        for batch in range(8):
            events = _random_events(rng, rng.randrange(1, 60), start=batch * 100)
            replay = rng.sample(sent, min(len(sent), 10))  # replays of stored events change nothing
            ingest(engine, tenant, events + replay)
            sent += events
            if counting == "deferred" and follower_runs.random() < 0.4:
                spend_follower.catch_up(engine, tenant.id, now=NOW)
        if counting == "deferred":
            spend_follower.catch_up(engine, tenant.id, now=NOW)
        rollup_tenant(engine, tenant, now=NOW)
        with engine.connect() as connection:
            history = {b: dict((p, (u, r)) for p, u, r, _ in spend.counter_history(connection, tenant.id, b)) for b in
                       ("cost-all", "cost-c1", "tokens-c2", "jobs-all", "jobs-c0")}  # fmt: skip
            daily = connection.execute(select(usage_daily)).all()
            tasks = connection.execute(select(task_usage).where(task_usage.c.status == "completed")).all()
        assert history["cost-all"] and history["jobs-all"]

        def start_us(kind: str, day: date) -> int:
            return int(Period.holding(day, timezone, kind).start.timestamp()) * 1_000_000

        def exact(pairs: dict[int, tuple[int, int]]) -> dict[int, int]:
            return {p: u * 10**6 + r for p, (u, r) in pairs.items() if u or r}

        cost_all: dict[int, int] = {}
        cost_c1: dict[int, int] = {}
        tokens_c2: dict[int, int] = {}
        for row in daily:
            femtos = row.cost_nanos * 10**6 + row.cost_rem
            cost_all[start_us("month", row.day)] = cost_all.get(start_us("month", row.day), 0) + femtos
            if row.customer == "c1":
                cost_c1[start_us("week", row.day)] = cost_c1.get(start_us("week", row.day), 0) + femtos
            if row.customer == "c2":
                key = start_us("day", row.day)
                tokens_c2[key] = tokens_c2.get(key, 0) + row.input_tokens + row.output_tokens
        assert exact(history["cost-all"]) == {k: v for k, v in cost_all.items() if v}
        assert exact(history["cost-c1"]) == {k: v for k, v in cost_c1.items() if v}
        assert {p: u for p, (u, _) in history["tokens-c2"].items() if u} == {
            k: v for k, v in tokens_c2.items() if v
        }

        jobs_all: dict[int, int] = {}
        jobs_c0: dict[int, int] = {}
        for row in tasks:
            day = datetime.fromtimestamp(row.ended_us // 10**6, ZoneInfo(timezone)).date()
            jobs_all[start_us("month", day)] = jobs_all.get(start_us("month", day), 0) + 1
            if row.customer == "c0":
                jobs_c0[start_us("day", day)] = jobs_c0.get(start_us("day", day), 0) + 1
        assert {p: u for p, (u, _) in history["jobs-all"].items() if u} == jobs_all
        assert {p: u for p, (u, _) in history["jobs-c0"].items() if u} == jobs_c0

    def test_unpriced_usage_counts_zero_and_is_reported(self, engine: Engine, tenant: Tenant) -> None:
        put(engine, tenant, budget(id="cost"))
        ingest(
            engine,
            tenant,
            [make_event(id="u", time="2026-11-10T00:00:00Z", provider="nobody", model="nothing")],
        )
        found = standing(engine, tenant, "cost", NOW)
        assert (found.used, found.rem, found.unpriced_events) == (0, 0, 1)

    def test_exact_cost_in_decimal(self, engine: Engine, tenant: Tenant) -> None:
        put(engine, tenant, budget(id="cost"))
        # gpt-4o: 6000 x 2.50 + 4000 x 1.25 + 1000 x 10 per million = 0.030000
        ingest(engine, tenant, [make_event(id="u", time="2026-11-10T00:00:00Z", model="gpt-4o", input_tokens=10_000,
                                           cache_read_tokens=4_000, output_tokens=1_000)])  # fmt: skip
        found = standing(engine, tenant, "cost", NOW)
        assert spend.describe(found, now=NOW)["used"] == "0.03"
        assert Decimal(found.used).scaleb(-9) == Decimal("0.030000000")

    def test_a_task_completed_twice_counts_once_in_the_later_period(
        self, engine: Engine, tenant: Tenant
    ) -> None:
        put(engine, tenant, budget(id="jobs", measure="jobs", limit="10", period="day"))
        ingest(
            engine,
            tenant,
            [make_event(id="c1", type="task.completed", task="t", time="2026-11-10T10:00:00Z")],
        )
        ingest(
            engine,
            tenant,
            [make_event(id="c2", type="task.completed", task="t", time="2026-11-11T10:00:00Z")],
        )
        ingest(
            engine, tenant, [make_event(id="f0", type="task.failed", task="t", time="2026-11-09T10:00:00Z")]
        )  # late, earlier
        assert standing(engine, tenant, "jobs", datetime(2026, 11, 10, 12, tzinfo=UTC)).used == 0
        assert standing(engine, tenant, "jobs", datetime(2026, 11, 11, 12, tzinfo=UTC)).used == 1
        ingest(
            engine, tenant, [make_event(id="f1", type="task.failed", task="t", time="2026-11-12T10:00:00Z")]
        )
        assert standing(engine, tenant, "jobs", datetime(2026, 11, 11, 12, tzinfo=UTC)).used == 0

    def test_no_counter_moves_without_budgets(self, engine: Engine, tenant: Tenant) -> None:
        ingest(engine, tenant, [make_event(id="u")])
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(budget_counters)).scalar() == 0


class TestBilled:
    CONFIG = """
plans:
  - {id: jobs, type: per_job, prices: {default: "0.50", support_ticket: "1.20"}, failed: "0.10"}
  - {id: tokens, type: per_token, rates: {input: "6.00", output: "30.00", cache_read: "0.60", cache_write: "7.50"}}
  - {id: plus, type: per_token, markup: "0.40"}
customers:
  - {id: acme, plan: jobs}
  - {id: globex, plan: tokens}
  - {id: initech, plan: plus}
budgets:
  - {id: acme, scope: {customer: acme}, measure: billed, limit: "100", period: month}
  - {id: globex, scope: {customer: globex}, measure: billed, limit: "100", period: month}
  - {id: initech, scope: {customer: initech}, measure: billed, limit: "100", period: month}
"""

    def used(self, engine: Engine, tenant: Tenant, budget_id: str) -> Decimal:
        found = standing(engine, tenant, budget_id, NOW)
        return Decimal(found.used * 10**6 + found.rem).scaleb(-15)

    def test_each_plan_kind_against_an_exact_reference(self, engine: Engine, tenant: Tenant) -> None:
        with unit_of_work(engine) as session:
            load_config(session, tenant, self.CONFIG, now=NOW)
        at = "2026-11-10T00:00:00Z"
        ingest(engine, tenant, [
            make_event(id="j1", type="task.completed", customer="acme", task="a1", task_type="support_ticket", time=at),
            make_event(id="j2", type="task.completed", customer="acme", task="a2", time=at),
            make_event(id="j3", type="task.failed", customer="acme", task="a3", time=at),
            make_event(id="u1", customer="globex", task="g1", model="gpt-4o", input_tokens=10_000, cache_read_tokens=4_000,
                       output_tokens=1_000, time=at),
            make_event(id="u2", customer="initech", task="i1", model="gpt-4o", input_tokens=10_000, cache_read_tokens=4_000,
                       output_tokens=1_000, time=at),
        ])  # fmt: skip
        assert self.used(engine, tenant, "acme") == Decimal("1.20") + Decimal("0.50") + Decimal("0.10")
        # 6,000 input x 6.00 + 4,000 cache reads x 0.60 + 1,000 output x 30.00, per million
        assert self.used(engine, tenant, "globex") == Decimal("0.036") + Decimal("0.0024") + Decimal("0.030")
        assert self.used(engine, tenant, "initech") == Decimal("0.030000") * Decimal("1.40")
        # a2 fails later: its job price leaves, the failed price comes in
        ingest(
            engine,
            tenant,
            [
                make_event(
                    id="j4", type="task.failed", customer="acme", task="a2", time="2026-11-11T00:00:00Z"
                )
            ],
        )
        assert self.used(engine, tenant, "acme") == Decimal("1.20") + Decimal("0.10") + Decimal("0.10")


class TestAlertMarks:
    """`spend.Marks` decides which counters `alerts.check` looks at: it must agree with
    `budgets.reached` exactly at every threshold, for money (femto-units) and counts."""

    @pytest.mark.parametrize(
        ("measure", "limit", "alerts"),
        [("provider_cost", "0.3", ["0.333", "1"]), ("provider_cost", "123.456789012", ["0.5", "0.8", "1", "1.5"]),
         ("tokens", "1000", ["0.3333", "1"]), ("jobs", "7", ["0.5", "1"])],
    )  # fmt: skip
    def test_a_mark_is_passed_exactly_when_the_fraction_is_reached(
        self, measure: str, limit: str, alerts: list[str]
    ) -> None:
        chosen = budget(measure=measure, limit=limit, alerts=alerts)
        marks = spend.Marks.of(chosen)
        scale = 10**6 if chosen.money else 1
        for fraction, mark in zip(chosen.alerts, marks.thresholds, strict=True):
            for exact in (mark - 1, mark, mark + 1):
                used, rem = divmod(exact, scale) if chosen.money else (exact, 0)
                assert reached(chosen, used, rem, fraction) == (exact >= mark)
            assert marks.may_fire(mark - 1, mark) and not marks.may_fire(mark, mark + 1)
            assert not marks.may_fire(mark - 3, mark - 1)


class TestAuthorizeSnapshot:
    def test_counts_of_this_process_show_at_once_and_others_within_the_snapshot_age(
        self, engine: Engine, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        put(engine, tenant, budget(id="tokens", measure="tokens", limit="1000", period="month", enforce=True))
        with engine.connect() as connection:
            found = spend.read_snapshot(connection, tenant.id, now=NOW)
        assert spend.authorize_from(found, {"customer": "acme"}, now=NOW)["budgets"][0]["used"] == "0"
        ingest(
            engine,
            tenant,
            [make_event(id="u1", time="2026-11-10T00:00:00Z", input_tokens=600, output_tokens=0)],
        )
        # counted in this process: pushed into the snapshot when the batch committed
        answer = spend.authorize_from(spend.snapshot(engine, tenant.id) or found, {"customer": "acme"}, now=NOW)
        assert (answer["allowed"], answer["budgets"][0]["used"]) == (True, "600")
        # counted by another process (written here without counting): seen once the snapshot is read again
        with engine.begin() as connection:
            connection.execute(
                budget_counters.update()
                .where(budget_counters.c.budget_id == "tokens")
                .values(used=budget_counters.c.used + 400)
            )
        assert (
            spend.authorize_from(spend.snapshot(engine, tenant.id) or found, {"customer": "acme"}, now=NOW)["allowed"]
            is True
        )
        with engine.connect() as connection:
            fresh = spend.read_snapshot(connection, tenant.id, now=NOW)
        answer = spend.authorize_from(fresh, {"customer": "acme"}, now=NOW)
        assert (answer["allowed"], answer["denied_by"], answer["budgets"][0]["used"]) == (
            False,
            "tokens",
            "1000",
        )
        with engine.connect() as connection:
            assert spend.authorize(connection, tenant.id, {"customer": "acme"}, now=NOW) == answer

    def test_a_rolled_back_batch_pushes_nothing(self, engine: Engine, tenant: Tenant) -> None:
        put(engine, tenant, budget(id="tokens", measure="tokens", limit="1000", period="month"))
        with engine.connect() as connection:
            found = spend.read_snapshot(connection, tenant.id, now=NOW)
        with pytest.raises(RuntimeError), unit_of_work(engine) as session:
            ingest_events(
                session,
                tenant.id,
                [make_event(id="u1", time="2026-11-10T00:00:00Z", input_tokens=5)],
                now=NOW,
            )
            raise RuntimeError("the request failed after counting")
        assert spend.authorize_from(found, {"customer": "acme"}, now=NOW)["budgets"][0]["used"] == "0"


class TestTwoDatabasesInOneProcess:
    def test_each_keeps_its_own_budgets_and_snapshot(self, engine: Engine, tenant: Tenant, tmp_path: Any) -> None:
        # A second database (SQLite, whatever the first) whose tenant has the same id and a budget
        # of the same generation: what the process keeps of one must not answer for the other.
        other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
        try:
            upgrade_schema(other)
            with unit_of_work(other) as session:
                twin = create_tenant(session, "twin", now=NOW)
            assert twin.id == tenant.id
            put(engine, tenant, budget(id="tokens", measure="tokens", limit="1000", enforce=True))
            put(other, twin, budget(id="jobs", measure="jobs", limit="5"))
            with engine.connect() as connection:
                spend.read_snapshot(connection, tenant.id, now=NOW)
            assert spend.snapshot(other, twin.id) is None
            ingest(engine, tenant, [make_event(id="u1", time="2026-11-10T00:00:00Z", input_tokens=1000, output_tokens=0)])
            ingest(other, twin, [make_event(id="u1", time="2026-11-10T00:00:00Z", input_tokens=7, output_tokens=0)])
            with other.connect() as connection:
                answer = spend.authorize(connection, twin.id, {"customer": "acme"}, now=NOW)
            assert (answer["allowed"], [b["id"] for b in answer["budgets"]]) == (True, ["jobs"])
            mine = spend.snapshot(engine, tenant.id)
            assert mine is not None
            answer = spend.authorize_from(mine, {"customer": "acme"}, now=NOW)
            assert (answer["denied_by"], answer["budgets"][0]["used"]) == ("tokens", "1000")
        finally:
            other.dispose()


class TestBudgetGenerations:
    def test_a_rolled_back_change_leaves_no_cache_that_a_later_change_reuses(
        self, engine: Engine, tenant: Tenant, database_url: str
    ) -> None:
        # Two server processes on one database (two engines: each keeps its own cache). The first
        # changes the budgets, loads them in its own transaction and rolls back; the second then
        # makes another change. The first must serve the second's budgets, not its rolled-back ones.
        other = make_engine(database_url)
        try:
            put(engine, tenant, budget(id="kept", measure="tokens", limit="1000"))
            with pytest.raises(RuntimeError), unit_of_work(engine) as session:
                budget_repository.replace_all(session, tenant.id, [budget(id="rolled-back", measure="tokens", limit="5")], now=NOW)
                loaded = spend.tenant_budgets(session.connection(), tenant.id)
                assert [b.id for b in loaded.index.budgets] == ["rolled-back"]
                raise RuntimeError("the change failed after loading the budgets")
            put(other, tenant, budget(id="later", measure="tokens", limit="7"))
            with engine.connect() as connection:
                assert [b.id for b in spend.tenant_budgets(connection, tenant.id).index.budgets] == ["later"]
                answer = spend.authorize(connection, tenant.id, {"customer": "acme"}, now=NOW)
            assert [b["id"] for b in answer["budgets"]] == ["later"]
        finally:
            other.dispose()


class TestScopesOfABatch:
    def test_a_batch_without_actors_counts_as_one_with_them(self, engine: Engine, make_tenant: Callable[..., Tenant]) -> None:
        """Counting numbers a batch's scopes by customer alone when no event has an actor, agent
        or task type, by (customer, actor, agent, task_type) otherwise: the same events give the
        same counters either way."""
        entries = (
            budget(id="cost-all"), budget(id="cost-c1", scope={"customer": "c1"}, period="day"),
            budget(id="tokens-c2", measure="tokens", limit="1000000000", scope={"customer": "c2"}, period="week"),
            budget(id="cost-alice", scope={"actor": "alice"}),
            budget(id="tokens-review", measure="tokens", limit="1000000000", scope={"task_type": "review"}),
        )  # fmt: skip
        plain = _random_events(random.Random(5), 80, start=0)
        marked = [
            make_event(id="m1", task="t1", customer="c1", actor="alice", time="2026-11-02T10:00:00Z", input_tokens=1000, output_tokens=7),
            make_event(id="m2", task="t2", customer="c2", task_type="review", time="2026-11-03T10:00:00Z", input_tokens=99, output_tokens=1),
        ]  # fmt: skip
        apart, together = make_tenant("apart"), make_tenant("together")
        put(engine, apart, *entries)
        put(engine, together, *entries)
        ingest(engine, apart, plain)  # customers alone
        ingest(engine, apart, marked)
        ingest(engine, together, marked + plain)  # every row by its (customer, actor, agent, task_type)
        with engine.connect() as connection:
            for entry in entries:
                counted = spend.counter_history(connection, apart.id, entry.id)
                assert counted == spend.counter_history(connection, together.id, entry.id)
                assert any(used for _, used, _, _ in counted), entry.id
