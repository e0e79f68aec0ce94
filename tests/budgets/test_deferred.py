"""Deferred spend counting (`metering.spend.deferred`, `metering.events.spend_follower`): ingestion
stores only, a follower counts committed events once each (across two followers, a follower killed
before its commit, switches of mode in both directions and budget changes meanwhile), raises the
alerts once, and `POST /v1/authorize` shows what it counted. The counters' equality with the
rollup in this mode is `test_counters.py::TestCountersEqualTheRollup` (parametrized)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, func, select, text

from api.follower import SpendFollower
from api.scheduler import Runtime, run_spend_follower
from api.settings import Settings
from metering.core.db import is_postgresql, make_engine, unit_of_work
from metering.core.tables import events, task_usage
from metering.core.tenants import Tenant
from metering.events import spend_follower
from metering.events.ingest import committed_through, ingest_events
from metering.rollup.pipeline import rollup_tenant
from metering.spend import budget_repository, deferred
from metering.spend import counters as spend
from metering.spend.alerts import list_alerts
from metering.spend.budget_tables import budget_counters, budget_tasks
from metering.spend.budgets import Budget
from tests.conftest import LiveServer
from tests.factories import make_event

NOW = datetime(2026, 11, 18, 10, 30, tzinfo=UTC)
AT = "2026-11-10T00:00:00Z"


def tokens_budget(budget_id: str = "tokens", **fields: Any) -> Budget:
    return Budget.model_validate({"id": budget_id, "measure": "tokens", "limit": "1000000", "period": "month", **fields})


def put(engine: Engine, tenant: Tenant, *entries: Budget) -> None:
    with unit_of_work(engine) as session:
        budget_repository.replace_all(session, tenant.id, list(entries), now=NOW)


def ingest(engine: Engine, tenant: Tenant, events_: list[dict[str, Any]]) -> None:
    with unit_of_work(engine) as session:
        ingest_events(session, tenant.id, events_, now=NOW)


def usage(event_id: str, tokens: int, **fields: Any) -> dict[str, Any]:
    return make_event(id=event_id, time=AT, input_tokens=tokens, output_tokens=0, **fields)


def used(engine: Engine, tenant: Tenant, budget_id: str = "tokens") -> int:
    with engine.connect() as connection:
        chosen = budget_repository.get(connection, tenant.id, budget_id)
        (found,) = spend.standings(connection, tenant.id, [chosen], tenant.timezone, now=NOW)
    return found.used


def watermark(engine: Engine, tenant: Tenant) -> int | None:
    with engine.connect() as connection:
        return deferred.counted_through(connection, tenant.id)


def newest_seq(engine: Engine, tenant: Tenant) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.max(events.c.seq)).where(events.c.tenant_id == tenant.id)).scalar() or 0)


@pytest.fixture
def followed(engine: Engine, tenant: Tenant) -> Tenant:
    """The default tenant with a tokens budget, counted by a follower."""
    put(engine, tenant, tokens_budget())
    assert spend_follower.start(engine, tenant.id, now=NOW)
    return tenant


class TestIngestionStoresOnly:
    def test_batches_are_counted_by_the_follower_once(self, engine: Engine, followed: Tenant) -> None:
        ingest(engine, followed, [usage("a", 10), usage("b", 20)])
        assert used(engine, followed) == 0 and watermark(engine, followed) == 0  # stored, not counted
        done = spend_follower.catch_up(engine, followed.id, now=NOW)
        assert (done.events, used(engine, followed), watermark(engine, followed)) == (2, 30, newest_seq(engine, followed))
        assert spend_follower.catch_up(engine, followed.id, now=NOW).events == 0  # nothing twice
        ingest(engine, followed, [usage("a", 10), usage("c", 5)])  # a replay and one new event
        spend_follower.catch_up(engine, followed.id, now=NOW)
        assert used(engine, followed) == 35

    def test_pages_each_commit_their_own_watermark(
        self, engine: Engine, followed: Tenant, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        original = deferred.write_page
        pages: list[int | None] = []

        def recorded(*args: Any, **kwargs: Any) -> deferred.Counted | None:
            counted = original(*args, **kwargs)
            pages.append(None if counted is None else counted.through)
            return counted

        monkeypatch.setattr(deferred, "write_page", recorded)
        ingest(engine, followed, [usage(f"u{i}", 1) for i in range(5)])
        first = newest_seq(engine, followed) - 4
        spend_follower.catch_up(engine, followed.id, now=NOW, page=2)
        assert pages == [first + 1, first + 3, first + 4] and used(engine, followed) == 5

    def test_a_tenant_without_budgets_moves_its_watermark_without_reading(self, engine: Engine, tenant: Tenant) -> None:
        assert spend_follower.start(engine, tenant.id, now=NOW)
        ingest(engine, tenant, [usage("a", 10)])
        assert spend_follower.catch_up(engine, tenant.id, now=NOW).events == 0
        assert watermark(engine, tenant) == newest_seq(engine, tenant)
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(budget_counters)).scalar() == 0


class TestExactlyOnce:
    def test_two_followers_at_once_count_each_event_once(
        self, engine: Engine, followed: Tenant, database_url: str
    ) -> None:
        """Two followers (each with its own engine, as two server processes) run side by side
        while batches are stored; every event is counted once."""
        engines = [make_engine(database_url) for _ in range(2)]
        stored = threading.Event()
        errors: list[BaseException] = []

        def follow(own: Engine) -> None:
            try:
                while not stored.is_set():
                    spend_follower.catch_up(own, followed.id, now=NOW)
                spend_follower.catch_up(own, followed.id, now=NOW)
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                errors.append(exc)

        threads = [threading.Thread(target=follow, args=(own,)) for own in engines]
        for thread in threads:
            thread.start()
        try:
            for batch in range(20):
                ingest(engine, followed, [usage(f"b{batch}-{i}", 1 + i) for i in range(10)])
        finally:
            stored.set()
            for thread in threads:
                thread.join(60)
            for own in engines:
                own.dispose()
        assert errors == []
        spend_follower.catch_up(engine, followed.id, now=NOW)
        assert used(engine, followed) == 20 * sum(range(1, 11))
        assert watermark(engine, followed) == newest_seq(engine, followed)

    def test_a_follower_killed_before_its_commit_leaves_nothing(
        self, engine: Engine, followed: Tenant, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        put(engine, followed, tokens_budget(alerts=["0.5"], limit="40"),
            Budget.model_validate({"id": "jobs", "measure": "jobs", "limit": "10", "period": "month"}))  # fmt: skip
        ingest(engine, followed, [usage("a", 30), make_event(id="done", type="task.completed", task="t", time=AT)])
        with engine.connect() as connection:
            snapshot = spend.read_snapshot(connection, followed.id, now=NOW)
        advance = deferred._advance

        def crash_after_counting(*args: Any) -> None:
            advance(*args)  # counters, the task's outcome, the alert and the watermark written
            raise RuntimeError("killed before the commit")

        monkeypatch.setattr(deferred, "_advance", crash_after_counting)
        with pytest.raises(RuntimeError, match="killed"):
            spend_follower.catch_up(engine, followed.id, now=NOW)
        with engine.connect() as connection:
            assert connection.execute(select(func.sum(budget_counters.c.used))).scalar() == 0  # the recount's zeros
            assert connection.execute(select(func.count()).select_from(budget_tasks)).scalar() == 0
            assert list_alerts(connection, followed.id) == []
        assert watermark(engine, followed) == 0
        assert spend.authorize_from(snapshot, {"customer": "acme"}, now=NOW)["budgets"][1]["used"] == "0"
        monkeypatch.setattr(deferred, "_advance", advance)
        spend_follower.catch_up(engine, followed.id, now=NOW)
        spend_follower.catch_up(engine, followed.id, now=NOW)
        assert (used(engine, followed), used(engine, followed, "jobs")) == (30, 1)
        with engine.connect() as connection:
            assert [(a["budget"], a["threshold"]) for a in list_alerts(connection, followed.id)] == [("tokens", "0.5")]

    def test_a_page_overtaken_while_it_was_read_is_read_again_and_counted_once(
        self, engine: Engine, followed: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A page is read and counted without the follower lock; another follower (its own
        engine, as another process) counts the same events before the first one writes: the
        first one's page is discarded, and every event counts once."""
        ingest(engine, followed, [usage(f"u{i}", 1 + i) for i in range(5)])
        original = deferred.read_page
        other = make_engine(database_url)
        overtaken: list[int] = []

        def overtaken_once(*args: Any, **kwargs: Any) -> deferred.Page | None:
            page = original(*args, **kwargs)
            if not overtaken:
                monkeypatch.setattr(deferred, "read_page", original)  # the other follower reads plainly
                overtaken.append(spend_follower.catch_up(other, followed.id, now=NOW).events)
                monkeypatch.setattr(deferred, "read_page", overtaken_once)
            return page

        monkeypatch.setattr(deferred, "read_page", overtaken_once)
        try:
            done = spend_follower.catch_up(engine, followed.id, now=NOW)
        finally:
            other.dispose()
        assert overtaken == [5] and (done.events, done.reread) == (0, 1)
        assert used(engine, followed) == sum(range(1, 6)) and watermark(engine, followed) == newest_seq(engine, followed)

    def test_a_page_read_before_a_budget_change_is_counted_with_the_new_budgets(
        self, engine: Engine, followed: Tenant, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ingest(engine, followed, [usage("a", 10), usage("b", 20)])
        original = deferred.read_page
        changed: list[bool] = []

        def budgets_change_meanwhile(*args: Any, **kwargs: Any) -> deferred.Page | None:
            page = original(*args, **kwargs)
            if not changed:
                put(engine, followed, tokens_budget(), tokens_budget("acme-only", scope={"customer": "acme"}))
                changed.append(True)
            return page

        monkeypatch.setattr(deferred, "read_page", budgets_change_meanwhile)
        done = spend_follower.catch_up(engine, followed.id, now=NOW)
        assert (done.events, done.reread) == (2, 1)
        assert (used(engine, followed), used(engine, followed, "acme-only")) == (30, 30)

    def test_ingestion_is_not_held_while_a_page_is_read_and_counted(
        self, engine: Engine, followed: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While the follower counts a page, a batch is stored through another engine in the
        same thread: it would wait for the follower (and fail on SQLite's busy timeout) if the
        follower held the write lock (SQLite) or the tenant's follower lock (PostgreSQL)."""
        ingest(engine, followed, [usage("a", 10)])
        original = spend.usage_deltas
        other = make_engine(database_url)
        during: list[int] = []

        def store_meanwhile(*args: Any, **kwargs: Any) -> spend.Deltas:
            if not during:
                ingest(other, followed, [usage("b", 20)])
                with other.begin() as connection:  # the follower lock is free too
                    deferred.lock(connection, followed.id)
                during.append(newest_seq(other, followed))
            return original(*args, **kwargs)

        monkeypatch.setattr(spend, "usage_deltas", store_meanwhile)
        try:
            assert spend_follower.catch_up(engine, followed.id, now=NOW).events == 1  # up to where it began
        finally:
            other.dispose()
        assert used(engine, followed) == 10 and watermark(engine, followed) == during[0] - 1
        assert spend_follower.catch_up(engine, followed.id, now=NOW).events == 1
        assert used(engine, followed) == 30

    def test_alerts_are_raised_by_the_follower_once_at_its_time(self, engine: Engine, followed: Tenant) -> None:
        put(engine, followed, tokens_budget(alerts=["0.5", "1"], limit="100"))
        ingest(engine, followed, [usage("a", 60)])
        with engine.connect() as connection:
            assert list_alerts(connection, followed.id) == []  # not counted yet: no alert
        later = datetime(2026, 11, 18, 10, 31, tzinfo=UTC)
        assert spend_follower.catch_up(engine, followed.id, now=later).alerts == 1
        ingest(engine, followed, [usage("a", 60), usage("b", 40)])
        spend_follower.catch_up(engine, followed.id, now=later)
        with engine.connect() as connection:
            listed = list_alerts(connection, followed.id)
        assert [(a["threshold"], a["used"], a["at"]) for a in listed] == [
            ("1", "100", "2026-11-18T10:31:00Z"), ("0.5", "60", "2026-11-18T10:31:00Z"),
        ]  # fmt: skip


class TestJobs:
    def test_terminal_events_are_decided_in_seq_order_as_the_rollup(self, engine: Engine, followed: Tenant) -> None:
        """Two terminal events of one task at the same instant, in separate batches: the one
        stored later decides (the rollup orders by time, then seq), whichever follower run
        counts them."""
        put(engine, followed, Budget.model_validate({"id": "jobs", "measure": "jobs", "limit": "10", "period": "month"}))
        ingest(engine, followed, [make_event(id="c", type="task.completed", task="t", time=AT)])
        ingest(engine, followed, [make_event(id="f", type="task.failed", task="t", time=AT)])
        ingest(engine, followed, [make_event(id="c2", type="task.completed", task="u", time=AT)])
        spend_follower.catch_up(engine, followed.id, now=NOW)
        ingest(engine, followed, [make_event(id="f2", type="task.failed", task="u", time=AT)])
        spend_follower.catch_up(engine, followed.id, now=NOW)
        rollup_tenant(engine, followed, now=NOW)
        with engine.connect() as connection:
            statuses = dict(connection.execute(select(task_usage.c.task, task_usage.c.status)).all())
        assert statuses == {"t": "failed", "u": "failed"} and used(engine, followed, "jobs") == 0


class TestSwitchingMode:
    def test_inline_then_deferred_counts_each_batch_once(self, engine: Engine, tenant: Tenant) -> None:
        put(engine, tenant, tokens_budget())
        ingest(engine, tenant, [usage("a", 10)])  # counted at ingestion
        assert used(engine, tenant) == 10
        assert spend_follower.start(engine, tenant.id, now=NOW)
        assert not spend_follower.start(engine, tenant.id, now=NOW)  # followed already
        assert watermark(engine, tenant) == newest_seq(engine, tenant)  # what ingestion counted
        ingest(engine, tenant, [usage("b", 20)])
        assert used(engine, tenant) == 10
        spend_follower.catch_up(engine, tenant.id, now=NOW)
        assert used(engine, tenant) == 30

    def test_deferred_then_inline_catches_up_first(self, engine: Engine, followed: Tenant) -> None:
        ingest(engine, followed, [usage("a", 10)])
        assert spend_follower.stop(engine, followed.id, now=NOW).events == 1
        assert watermark(engine, followed) is None and used(engine, followed) == 10
        ingest(engine, followed, [usage("b", 20)])  # counted at ingestion again
        assert used(engine, followed) == 30
        assert spend_follower.catch_up(engine, followed.id, now=NOW).events == 0

    def test_each_process_applies_its_setting(self, engine: Engine, tenant: Tenant, make_tenant: Callable[..., Tenant]) -> None:
        """A deferred process follows the tenants with budgets; an inline one hands them back;
        switching back and forth with events stored in between counts each once."""
        other = make_tenant("no-budgets")
        put(engine, tenant, tokens_budget())
        ingest(engine, tenant, [usage("a", 1)])
        done = spend_follower.follow_tenants(engine, mode="deferred", now=NOW)
        assert done.started == [tenant.id] and watermark(engine, other) is None
        ingest(engine, tenant, [usage("b", 2)])
        assert spend_follower.follow_tenants(engine, mode="deferred", now=NOW).events == 1
        ingest(engine, tenant, [usage("c", 4)])
        done = spend_follower.follow_tenants(engine, mode="inline", now=NOW)
        assert (done.stopped, done.events) == ([tenant.id], 1)
        ingest(engine, tenant, [usage("d", 8)])
        assert spend_follower.follow_tenants(engine, mode="inline", now=NOW).stopped == []
        spend_follower.follow_tenants(engine, mode="deferred", now=NOW)
        ingest(engine, tenant, [usage("e", 16)])
        spend_follower.follow_tenants(engine, mode="deferred", now=NOW)
        assert used(engine, tenant) == 31

    def test_following_starts_after_a_batch_in_flight_commits(self, engine: Engine, tenant: Tenant, database_url: str) -> None:
        """A batch stored (and counted at ingestion) but not committed when following starts:
        the start waits for it, so the follower does not count it again."""
        put(engine, tenant, tokens_budget())
        own = make_engine(database_url)
        started: list[bool] = []
        with own.connect() as connection:
            transaction = connection.begin()
            ingest_events(connection, tenant.id, [usage("in-flight", 7)], now=NOW)
            thread = threading.Thread(target=lambda: started.append(spend_follower.start(engine, tenant.id, now=NOW)))
            thread.start()
            if is_postgresql(engine):  # the start waits for the tenant's ingest lock
                _until_waiting(engine)
            transaction.commit()
        own.dispose()
        thread.join(60)
        assert started == [True] and watermark(engine, tenant) == newest_seq(engine, tenant)
        ingest(engine, tenant, [usage("after", 3)])
        spend_follower.catch_up(engine, tenant.id, now=NOW)
        assert used(engine, tenant) == 10

    def test_the_bound_waits_for_a_batch_in_flight_and_holds_back_none(
        self, engine: Engine, tenant: Tenant, database_url: str
    ) -> None:
        """`committed_through` (the follower's and the rollup's bound) does not pass a lower seq
        still in flight, and batches that start while it waits go on (PostgreSQL: batches
        commit out of seq order; SQLite has one writer, so a committed read is the bound)."""
        own = make_engine(database_url)
        ingest(engine, tenant, [usage("before", 1)])
        bound: list[int] = []
        with own.connect() as slow:
            transaction = slow.begin()
            ingest_events(slow, tenant.id, [usage("slow", 2)], now=NOW)  # a seq handed out, not committed
            if not is_postgresql(engine):  # the one writer: nothing else commits meanwhile
                assert committed_through(engine, tenant.id) == newest_seq(engine, tenant)
                transaction.rollback()
                own.dispose()
                return
            ingest(engine, tenant, [usage("fast", 3)])  # a higher seq, committed first
            fast = newest_seq(engine, tenant)
            waiting = threading.Thread(target=lambda: bound.append(committed_through(engine, tenant.id)))
            waiting.start()
            waiting.join(0.3)
            assert waiting.is_alive()  # the batch in flight holds a lower seq
            meanwhile = threading.Thread(target=ingest, args=(engine, tenant, [usage("meanwhile", 4)]))
            meanwhile.start()
            meanwhile.join(30)
            assert not meanwhile.is_alive() and waiting.is_alive()  # not queued behind the bound's wait
            transaction.commit()
        waiting.join(30)
        own.dispose()
        assert bound == [fast]

    def test_a_job_moves_across_switches_as_the_rollup_decides_it(self, engine: Engine, tenant: Tenant) -> None:
        """The tasks' stored outcomes carry over both ways: a job completed while counted inline,
        failed later while followed, completed again once inline again, counts as the rollup."""
        put(engine, tenant, Budget.model_validate({"id": "jobs", "measure": "jobs", "limit": "10", "period": "month"}))
        ingest(engine, tenant, [make_event(id="c1", type="task.completed", task="t", time="2026-11-10T00:00:00Z")])
        assert used(engine, tenant, "jobs") == 1
        spend_follower.start(engine, tenant.id, now=NOW)
        ingest(engine, tenant, [make_event(id="f", type="task.failed", task="t", time="2026-11-11T00:00:00Z")])
        ingest(engine, tenant, [make_event(id="c0", type="task.completed", task="t", time="2026-11-09T00:00:00Z")])  # late
        spend_follower.catch_up(engine, tenant.id, now=NOW)
        assert used(engine, tenant, "jobs") == 0
        ingest(engine, tenant, [make_event(id="c2", type="task.completed", task="t", time="2026-11-12T00:00:00Z")])
        spend_follower.stop(engine, tenant.id, now=NOW)
        assert used(engine, tenant, "jobs") == 1
        ingest(engine, tenant, [make_event(id="f2", type="task.failed", task="t", time="2026-11-13T00:00:00Z")])
        rollup_tenant(engine, tenant, now=NOW)
        with engine.connect() as connection:
            assert connection.execute(select(task_usage.c.status)).scalar() == "failed"
        assert used(engine, tenant, "jobs") == 0

    def test_a_budget_put_while_events_wait_counts_them_once(self, engine: Engine, followed: Tenant) -> None:
        """A recount (a new budget) counts only up to the follower's watermark: the follower
        counts the rest into the new budget next."""
        ingest(engine, followed, [usage("a", 10)])
        spend_follower.catch_up(engine, followed.id, now=NOW)
        ingest(engine, followed, [usage("b", 20)])  # waiting for the follower
        put(engine, followed, tokens_budget(), tokens_budget("fresh"))
        assert (used(engine, followed), used(engine, followed, "fresh")) == (10, 10)
        spend_follower.catch_up(engine, followed.id, now=NOW)
        assert (used(engine, followed), used(engine, followed, "fresh")) == (30, 30)


def _until_waiting(engine: Engine) -> None:
    """Until a session waits for an advisory lock (the other thread's start)."""
    query = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    for _ in range(6000):
        with engine.connect() as connection:
            if connection.execute(query).scalar():
                return
        threading.Event().wait(0.01)
    raise AssertionError("the start never waited for the ingest lock")


class TestServer:
    @pytest.fixture
    def deferred_server(self, settings: Settings, engine: Engine) -> Iterator[LiveServer]:
        with LiveServer(settings.model_copy(update={"spend_counting": "deferred"}), engine) as server:
            yield server

    def test_authorize_shows_the_events_once_the_follower_ran(
        self, deferred_server: LiveServer, engine: Engine, tenant: Tenant, make_key: Callable[..., str],
        settings: Settings, now: datetime,
    ) -> None:  # fmt: skip
        rt = Runtime(settings.model_copy(update={"spend_counting": "deferred"}), engine)
        with deferred_server.client(make_key(tenant)) as api:
            api.put("/v1/budgets/tokens", json={"measure": "tokens", "limit": "100", "period": "month", "enforce": True})
            assert run_spend_follower(rt, now=now).started == [tenant.id]
            assert api.post("/v1/authorize", json={"customer": "acme"}).json()["allowed"] is True
            stored = api.post("/v1/events", json=[make_event(id="u", time=now.isoformat(), input_tokens=100, output_tokens=0)])
            assert stored.json()["accepted"] == 1 and used(engine, tenant) == 0
            assert run_spend_follower(rt, now=now).events == 1  # pushes the totals at its commit
            answer = api.post("/v1/authorize", json={"customer": "acme"}).json()
        assert (answer["allowed"], answer["denied_by"], answer["budgets"][0]["used"]) == (False, "tokens", "100")

    def test_the_follower_thread_counts_on_its_interval(self, engine: Engine, followed: Tenant) -> None:
        follower = SpendFollower(engine, mode="deferred", interval=0.05)
        ingest(engine, followed, [usage("a", 10)])
        follower.start()
        try:
            for _ in range(3000):  # a deadline, not a measure: the thread runs every 0.05 s
                if used(engine, followed) == 10:
                    break
                threading.Event().wait(0.01)
        finally:
            follower.stop()
        assert used(engine, followed) == 10

    def test_the_setting_names_its_values(self) -> None:
        with pytest.raises(ValidationError, match="spend_counting"):
            Settings(spend_counting="later")  # type: ignore[arg-type]


def _file_of_twelve(engine: Engine, tenant: Tenant, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tokens budget, deferred counting, and a JSONL file of 12 usage events of 1..12 tokens."""
    put(engine, tenant, tokens_budget())
    path = folder / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(usage(f"u{i}", 1 + i)) for i in range(12)) + b"\n")
    monkeypatch.setenv("TASKMETER_SPEND_COUNTING", "deferred")
    return path


class TestCommandLine:
    def test_ingest_catches_up_at_the_end_of_the_file(
        self, engine: Engine, tenant: Tenant, run_cli: Callable[..., tuple[int, Any, str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        path = _file_of_twelve(engine, tenant, tmp_path, monkeypatch)
        code, summary, _ = run_cli("ingest", str(path), "--tenant", tenant.name, "--batch-size", "5")
        assert code == 0 and (summary["accepted"], summary["spend_counted"]) == (12, 12)
        assert used(engine, tenant) == sum(range(1, 13)) and watermark(engine, tenant) == newest_seq(engine, tenant)

    def test_ingest_leaves_counting_to_a_running_follower_when_asked(
        self, engine: Engine, tenant: Tenant, run_cli: Callable[..., tuple[int, Any, str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        path = _file_of_twelve(engine, tenant, tmp_path, monkeypatch)
        code, summary, _ = run_cli("ingest", str(path), "--tenant", tenant.name, "--batch-size", "5", "--leave-counting")
        assert code == 0 and (summary["accepted"], summary["spend_left"]) == (12, 12) and "spend_counted" not in summary
        assert used(engine, tenant) == 0 and watermark(engine, tenant) < newest_seq(engine, tenant)
        # what a server's or worker's follower then does
        assert spend_follower.catch_up(engine, tenant.id, now=NOW).events == 12
        assert used(engine, tenant) == sum(range(1, 13)) and spend_follower.uncounted(engine, tenant.id) == 0

    def test_leaving_counting_changes_nothing_when_ingestion_counts(
        self, engine: Engine, tenant: Tenant, run_cli: Callable[..., tuple[int, Any, str]], tmp_path: Path,
    ) -> None:  # fmt: skip
        put(engine, tenant, tokens_budget())
        path = tmp_path / "events.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps(usage(f"u{i}", 1 + i)) for i in range(3)) + b"\n")
        code, summary, _ = run_cli("ingest", str(path), "--tenant", tenant.name, "--leave-counting")
        assert code == 0 and "spend_left" not in summary and used(engine, tenant) == 6
