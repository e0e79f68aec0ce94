"""The scheduler's jobs, called directly with `now` (or under freezegun through the entry points
that read the clock): rollup, period close in each tenant's time zone, reports, and safety when
two workers run them at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import Engine, select

from api import scheduler
from api.scheduler import Runtime, close_job, run_close, run_reports, run_rollup
from metering.core.db import unit_of_work
from metering.core.jobstate import get_bookmark, set_bookmark
from metering.core.tables import task_usage
from metering.core.tenants import Tenant
from tests.factories import make_event, make_task_events
from tests.scheduler.conftest import Recorder, send


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def with_settings(runtime: Runtime, **changes: object) -> Runtime:
    return Runtime(runtime.settings.model_copy(update=changes), runtime.engine)


class TestRollupJob:
    def test_rolls_up_every_tenant_once(
        self, runtime: Runtime, engine: Engine, tenant_at: Callable[..., Tenant]
    ) -> None:
        now = utc(2026, 10, 20)
        one, two = tenant_at("one", created=now), tenant_at("two", created=now)
        send(engine, one, make_task_events("t1"), now=now)
        send(engine, two, make_task_events("t2") + make_task_events("t3"), now=now)

        results = {r.tenant: r.events_read for r in run_rollup(runtime, now=now)}
        assert results == {"one": 3, "two": 6}
        assert {r.tenant: r.events_read for r in run_rollup(runtime, now=now)} == {"one": 0, "two": 0}
        with engine.connect() as connection:
            assert connection.execute(
                select(task_usage.c.task).order_by(task_usage.c.task)
            ).scalars().all() == ["t1", "t2", "t3"]

    def test_one_tenant_failing_does_not_stop_the_others(
        self,
        runtime: Runtime,
        engine: Engine,
        tenant_at: Callable[..., Tenant],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        now = utc(2026, 10, 20)
        bad, good = tenant_at("bad", created=now), tenant_at("good", created=now)
        send(engine, good, make_task_events("t1"), now=now)
        real = scheduler.bring_up_to_date

        def flaky(engine: Engine, tenant: Tenant, **kwargs: object):  # type: ignore[no-untyped-def]
            if tenant.name == "bad":
                raise RuntimeError("boom")
            return real(engine, tenant, **kwargs)

        monkeypatch.setattr(scheduler, "bring_up_to_date", flaky)
        assert [r.tenant for r in run_rollup(runtime, now=now)] == ["good"]
        assert bad.name == "bad"


class TestCloseJob:
    def test_closes_each_ended_month_once_in_order(
        self, runtime: Runtime, tenant_at: Callable[..., Tenant], fake_close: Recorder, engine: Engine
    ) -> None:
        tenant = tenant_at(created=utc(2026, 8, 15))
        after_october = utc(2026, 11, 1, 1)  # the default grace is one hour
        assert run_close(runtime, now=after_october) == [
            ("acme-ai", "2026-08"),
            ("acme-ai", "2026-09"),
            ("acme-ai", "2026-10"),
        ]
        assert run_close(runtime, now=after_october + timedelta(days=10)) == []
        assert run_close(runtime, now=utc(2026, 12, 1, 1)) == [("acme-ai", "2026-11")]
        assert fake_close.calls == [("acme-ai", m) for m in ("2026-08", "2026-09", "2026-10", "2026-11")]
        with unit_of_work(engine) as session:
            assert get_bookmark(session, "close", tenant.id) == "2026-11"

    def test_first_month_is_the_earliest_event_when_backfilled(
        self, runtime: Runtime, tenant_at: Callable[..., Tenant], fake_close: Recorder, engine: Engine
    ) -> None:
        tenant = tenant_at(created=utc(2026, 11, 10))
        send(engine, tenant, [make_event(time="2026-09-30T23:00:00Z")], now=utc(2026, 11, 10))
        # not rolled up yet: the close job rolls up first, then looks for the first month
        assert [m for _, m in run_close(runtime, now=utc(2026, 12, 1, 1))] == [
            "2026-09",
            "2026-10",
            "2026-11",
        ]

    def test_each_month_is_brought_up_to_date_once_by_its_close(
        self, runtime: Runtime, tenant_at: Callable[..., Tenant], engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from pricing import invoices

        tenant = tenant_at(created=utc(2026, 8, 15))
        calls: list[str] = []
        real = scheduler.bring_up_to_date

        def counted(where: str) -> Callable[..., object]:
            def call(engine: Engine, tenant: Tenant, **kwargs: object) -> object:
                calls.append(where)
                return real(engine, tenant, **kwargs)

            return call

        monkeypatch.setattr(scheduler, "bring_up_to_date", counted("scheduler"))
        monkeypatch.setattr(invoices, "bring_up_to_date", counted("close"))
        with unit_of_work(engine) as session:
            set_bookmark(session, "close", tenant.id, "2026-08", now=utc(2026, 9, 1, 1))
        assert [m for _, m in run_close(runtime, now=utc(2026, 11, 1, 1))] == ["2026-09", "2026-10"]
        assert calls == ["close", "close"]  # one per month, by the close itself

    @pytest.mark.parametrize(
        ("timezone", "grace", "last_open", "first_closed"),
        [
            ("UTC", 0, utc(2026, 10, 31, 23, 59, 59, 999999), utc(2026, 11, 1)),
            ("UTC", 3600, utc(2026, 11, 1, 0, 59, 59, 999999), utc(2026, 11, 1, 1)),
            ("America/New_York", 0, utc(2026, 11, 1, 3, 59, 59, 999999), utc(2026, 11, 1, 4)),  # EDT
            ("Asia/Kolkata", 0, utc(2026, 10, 31, 18, 29, 59, 999999), utc(2026, 10, 31, 18, 30)),
        ],
    )
    def test_october_closes_at_its_local_end_plus_grace_under_freezegun(
        self,
        runtime: Runtime,
        tenant_at: Callable[..., Tenant],
        fake_close: Recorder,
        monkeypatch: pytest.MonkeyPatch,
        timezone: str,
        grace: int,
        last_open: datetime,
        first_closed: datetime,
    ) -> None:
        tenant_at(created=utc(2026, 10, 10), timezone=timezone)
        monkeypatch.setattr(scheduler, "_runtime", with_settings(runtime, close_grace_seconds=grace))
        with freeze_time(last_open) as clock:
            close_job()  # the entry point APScheduler calls: it reads the (frozen) clock
            assert fake_close.calls == []
            clock.move_to(first_closed)
            close_job()
            assert fake_close.calls == [("acme-ai", "2026-10")]
            close_job()
            assert fake_close.calls == [("acme-ai", "2026-10")]

    @pytest.mark.parametrize(
        ("timezone", "created", "last_open", "first_closed", "month"),
        [
            # November in New York ends after the DST change: at 05:00 UTC, not 04:00
            (
                "America/New_York",
                utc(2026, 11, 10),
                utc(2026, 12, 1, 4, 59, 59, 999999),
                utc(2026, 12, 1, 5),
                "2026-11",
            ),
            # December to January
            ("UTC", utc(2026, 12, 5), utc(2026, 12, 31, 23, 59, 59, 999999), utc(2027, 1, 1), "2026-12"),
            (
                "Asia/Kolkata",
                utc(2026, 12, 5),
                utc(2026, 12, 31, 18, 29, 59, 999999),
                utc(2026, 12, 31, 18, 30),
                "2026-12",
            ),
            # a leap day: February 2028 ends after the 29th
            ("UTC", utc(2028, 2, 1), utc(2028, 2, 29, 23, 59, 59, 999999), utc(2028, 3, 1), "2028-02"),
        ],
    )
    def test_other_month_ends(
        self,
        runtime: Runtime,
        tenant_at: Callable[..., Tenant],
        fake_close: Recorder,
        timezone: str,
        created: datetime,
        last_open: datetime,
        first_closed: datetime,
        month: str,
    ) -> None:
        tenant_at(created=created, timezone=timezone)
        rt = with_settings(runtime, close_grace_seconds=0)
        assert run_close(rt, now=last_open) == []
        assert run_close(rt, now=first_closed) == [("acme-ai", month)]

    def test_a_failing_close_is_retried_by_the_next_run(
        self,
        runtime: Runtime,
        tenant_at: Callable[..., Tenant],
        fake_close: Recorder,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        tenant_at("flaky", created=utc(2026, 10, 10))
        tenant_at("fine", created=utc(2026, 10, 10))
        failures = [RuntimeError("database hiccup")]

        def close_period(session: object, tenant: Tenant, period: object, **kwargs: object) -> None:
            if tenant.name == "flaky" and failures:
                raise failures.pop()
            fake_close(session, tenant, period, **kwargs)

        monkeypatch.setattr(scheduler, "close_period", close_period)
        now = utc(2026, 11, 2)
        assert run_close(runtime, now=now) == [("fine", "2026-10")]
        assert run_close(runtime, now=now) == [("flaky", "2026-10")]
        assert run_close(runtime, now=now) == []

    def test_two_workers_racing_close_each_month_once(
        self, runtime: Runtime, tenant_at: Callable[..., Tenant], fake_close: Recorder
    ) -> None:
        for name in ("one", "two", "three"):
            tenant_at(name, created=utc(2026, 9, 10))
        fake_close.delay = 0.05
        start = threading.Barrier(4)
        closed: list[tuple[str, str]] = []

        def worker() -> None:
            start.wait()
            closed.extend(run_close(runtime, now=utc(2026, 11, 2)))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        expected = sorted((t, m) for t in ("one", "two", "three") for m in ("2026-09", "2026-10"))
        assert sorted(fake_close.calls) == expected
        assert sorted(closed) == expected


class TestReportsJob:
    def test_writes_each_closed_month_once_after_close(
        self, runtime: Runtime, tenant_at: Callable[..., Tenant], fake_close: Recorder, fake_reports: Recorder
    ) -> None:
        tenant_at(created=utc(2026, 9, 10))
        assert run_reports(runtime, now=utc(2026, 11, 2)) == []  # nothing closed yet
        run_close(runtime, now=utc(2026, 11, 2))
        assert run_reports(runtime, now=utc(2026, 11, 2)) == [("acme-ai", "2026-09"), ("acme-ai", "2026-10")]
        assert run_reports(runtime, now=utc(2026, 11, 3)) == []
        run_close(runtime, now=utc(2026, 12, 2))
        assert run_reports(runtime, now=utc(2026, 12, 2)) == [("acme-ai", "2026-11")]
        assert fake_reports.calls == [("acme-ai", m) for m in ("2026-09", "2026-10", "2026-11")]
