"""The real APScheduler wiring: jobs in the database's job store, surviving a restart, coalescing
missed runs; `serve` rolling up new events within 2 s over HTTP; two schedulers at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from api import scheduler
from api.app import create_app
from api.scheduler import JOB_CLOSE, JOB_REPORTS, JOB_ROLLUP, JOB_STRIPE, TaskmeterScheduler
from api.settings import Settings
from metering.core.jobstate import scheduler_jobs
from metering.core.tenants import Tenant
from tests.factories import make_task_events
from tests.scheduler.conftest import Recorder
from tests.support.servers import ServerThread

EVERY_JOB = {JOB_ROLLUP, JOB_CLOSE, JOB_REPORTS}


@pytest.fixture
def started(settings: Settings, engine: Engine) -> Iterator[Callable[..., TaskmeterScheduler]]:
    """Start schedulers (shut down at the end of the test)."""
    running: list[TaskmeterScheduler] = []

    def start(*, paused: bool = False, add_jobs: bool = True, **changes: Any) -> TaskmeterScheduler:
        configured = settings.model_copy(update=changes)
        running.append(TaskmeterScheduler(configured, engine).start(paused=paused, add_jobs=add_jobs))
        return running[-1]

    yield start
    for sched in running:
        sched.shutdown()


@pytest.fixture
def rollup_runs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When the rollup job ran (monotonic), as APScheduler called it."""
    runs: list[float] = []
    real = scheduler.run_rollup

    def counted(rt: scheduler.Runtime, *, now: datetime) -> Any:
        runs.append(time.monotonic())
        return real(rt, now=now)

    monkeypatch.setattr(scheduler, "run_rollup", counted)
    return runs


def stored_job_ids(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(select(scheduler_jobs.c.id)).scalars())


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class TestJobStore:
    def test_jobs_live_in_the_projects_database(
        self, started: Callable[..., TaskmeterScheduler], engine: Engine
    ) -> None:
        sched = started(paused=True, rollup_interval_seconds=1.0, close_check_seconds=30)
        assert {job.id for job in sched.jobs()} == EVERY_JOB
        assert stored_job_ids(engine) == EVERY_JOB
        jobs = {job.id: job for job in sched.jobs()}
        assert jobs[JOB_ROLLUP].trigger.interval == timedelta(seconds=1)
        assert jobs[JOB_CLOSE].trigger.interval == timedelta(seconds=30)
        assert all(job.coalesce and job.max_instances == 1 for job in jobs.values())
        assert jobs[JOB_ROLLUP].misfire_grace_time == 300

    def test_jobs_survive_a_restart(self, started: Callable[..., TaskmeterScheduler]) -> None:
        first = started(paused=True, close_check_seconds=600)
        before = {job.id: job.next_run_time for job in first.jobs()}
        first.shutdown()

        # a new process: it adds nothing, and finds the jobs with their next run times
        second = started(paused=True, add_jobs=False)
        assert {job.id: job.next_run_time for job in second.jobs()} == before
        assert {job.id: job.func_ref for job in second.jobs()} == {
            JOB_ROLLUP: "api.scheduler:rollup_job",
            JOB_CLOSE: "api.scheduler:close_job",
            JOB_REPORTS: "api.scheduler:reports_job",
        }

    def test_runs_missed_while_down_fire_once_on_restart(
        self, started: Callable[..., TaskmeterScheduler], rollup_runs: list[float]
    ) -> None:
        first = started(paused=True, rollup_interval_seconds=5.0, close_check_seconds=600)
        # the worker went down 12 s ago, just before its rollup was due: two runs were missed
        first.scheduler.modify_job(JOB_ROLLUP, next_run_time=datetime.now(UTC) - timedelta(seconds=12))
        first.shutdown()

        restarted = time.monotonic()
        started(rollup_interval_seconds=5.0, close_check_seconds=600)  # same settings: jobs kept
        assert wait_for(lambda: len(rollup_runs) >= 1, timeout=3)
        time.sleep(1.0)
        assert len(rollup_runs) == 1  # coalesced: one run, not three
        assert rollup_runs[0] - restarted < 2

    def test_a_changed_interval_replaces_the_job(self, started: Callable[..., TaskmeterScheduler]) -> None:
        started(paused=True, rollup_interval_seconds=1.0).shutdown()
        sched = started(paused=True, rollup_interval_seconds=7.0)
        assert sched.scheduler.get_job(JOB_ROLLUP).trigger.interval == timedelta(seconds=7)

    def test_the_stripe_job_exists_only_with_an_api_key(
        self, started: Callable[..., TaskmeterScheduler], engine: Engine
    ) -> None:
        started(paused=True, stripe_api_key="sk_test_x", stripe_sync_interval_seconds=30).shutdown()
        assert stored_job_ids(engine) == EVERY_JOB | {JOB_STRIPE}
        started(paused=True, stripe_api_key=None)
        assert stored_job_ids(engine) == EVERY_JOB


class TestServe:
    def test_new_events_become_visible_over_http_by_the_scheduled_rollup(
        self,
        settings: Settings,
        engine: Engine,
        tenant: Tenant,
        make_key: Callable[..., str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        app = create_app(settings.model_copy(update={"scheduler_enabled": True}), engine)
        with caplog.at_level(logging.WARNING), ServerThread(app) as server:
            import httpx

            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {make_key(tenant)}"}
            ) as client:
                assert app.state.scheduler is not None
                # No rollup is asked for: the scheduler's (every second) makes each task visible.
                # How soon is a benchmark's question, not a test's (a loaded machine stretches it).
                for n in range(3):
                    response = client.post("/v1/events", json=make_task_events(f"task-{n}"))
                    assert response.status_code == 200, response.text
                    assert wait_for(
                        lambda n=n: client.get(f"/v1/tasks/task-{n}").status_code == 200, timeout=30
                    )
                task = client.get("/v1/tasks/task-2").json()
                assert task["status"] == "completed" and task["input_tokens"] == 1200
        assert not app.state.scheduler.scheduler.running  # stopped with the server
        assert not [
            r for r in caplog.records if r.name.startswith("taskmeter") and r.levelno >= logging.ERROR
        ]

    def test_off_when_disabled(self, settings: Settings, engine: Engine) -> None:
        app = create_app(settings, engine)
        with ServerThread(app):
            assert app.state.scheduler is None


class TestTwoSchedulers:
    def test_racing_schedulers_close_each_month_once(
        self,
        started: Callable[..., TaskmeterScheduler],
        tenant_at: Callable[..., Tenant],
        fake_close: Recorder,
        fake_reports: Recorder,
    ) -> None:
        for name in ("one", "two", "three"):
            tenant_at(name, created=datetime.now(UTC) - timedelta(days=70))
        fake_close.delay = 0.05
        options = {"rollup_interval_seconds": 0.2, "close_check_seconds": 0.2, "close_grace_seconds": 0}
        started(**options)
        started(**options)
        assert wait_for(
            lambda: len(fake_close.calls) >= 6 and len(fake_reports.calls) >= len(fake_close.calls),
            timeout=15,
        )
        time.sleep(1.0)  # both schedulers keep running their jobs
        months = sorted({m for _, m in fake_close.calls})
        assert len(months) >= 2
        expected = sorted((t, m) for t in ("one", "two", "three") for m in months)
        assert sorted(fake_close.calls) == expected
        assert sorted(fake_reports.calls) == expected


def test_an_overrun_rollup_is_a_debug_line_and_other_skips_stay_warnings(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("apscheduler.scheduler")
    with caplog.at_level(logging.INFO, logger="apscheduler.scheduler"):
        message = 'Execution of job "%s" skipped: maximum number of running instances reached (%d)'
        logger.warning(message, "taskmeter.rollup (trigger: interval[0:00:01])", 1)
        logger.warning(message, "taskmeter.close (trigger: interval[0:01:00])", 1)
    assert [(r.levelname, "taskmeter.close" in r.getMessage()) for r in caplog.records] == [("WARNING", True)]
