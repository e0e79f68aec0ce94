"""The scheduler: rollup, period close, monthly reports and Stripe sync, on a clock; the
sender of budget-alert webhooks (`api.webhooks.WebhookSender`), a thread polling the outbox; and
the follower of deferred spend counting (`api.follower.SpendFollower`), a thread likewise.

APScheduler 3 (`BackgroundScheduler`) keeps its jobs in the project's database
(`apscheduler_jobs`, created by the migrations), so they survive a restart: a run missed while no
worker was up fires once when one starts again (coalesced, within the misfire grace).

Jobs are thin: per tenant, each takes a guard, opens a unit of work and calls a service. APScheduler
3 does not coordinate schedulers that share a job store, so `serve` and any number of
`taskmeter worker`s may run the same job at the same moment; the guards
(`metering.core.jobstate.hold`: an advisory lock on PostgreSQL, a leased row on SQLite) and the
bookmarks make that harmless: the work is done once.

The `*_job()` functions are what APScheduler calls (by reference, so they pickle); the `run_*`
functions do the work for a given `now`, and tests call them directly.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from api.cluster import cluster_executor
from api.follower import SpendFollower
from api.settings import Settings
from api.webhooks import WebhookSender, deliver_due
from metering.core.db import is_unavailable, make_engine, unit_of_work
from metering.core.jobstate import Guard, get_bookmark, hold, scheduler_jobs, set_bookmark
from metering.core.periods import parse_month
from metering.core.tenants import Tenant, list_tenants
from metering.events.archive import ArchivedHistory
from metering.events.spend_follower import Followed, follow_tenants
from metering.rollup.archive_guard import check_rebuild
from metering.rollup.executors import Executor
from metering.rollup.pipeline import RollupConflict, RollupResult, bring_up_to_date
from pricing import budget_settlement
from pricing.close_schedule import closable_through, first_month, months_to_close
from pricing.invoices import close_period
from reports.monthly import write_month

log = logging.getLogger("taskmeter.scheduler")

JOB_ROLLUP = "taskmeter.rollup"
JOB_CLOSE = "taskmeter.close"
JOB_REPORTS = "taskmeter.reports"
JOB_STRIPE = "taskmeter.stripe_sync"

# Guard and bookmark names.
ROLLUP, CLOSE, REPORTS = "rollup", "close", "reports"


@dataclass(frozen=True)
class Runtime:
    """What the jobs of this process work with. APScheduler stores jobs by function reference
    only; the database and settings are this process's own."""

    settings: Settings
    engine: Engine


_runtime: Runtime | None = None


def set_runtime(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def current_runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the scheduler's runtime is not set: start a TaskmeterScheduler first")
    return _runtime


def _now() -> datetime:
    return datetime.now(UTC)


# --- what APScheduler calls ---------------------------------------------------------------------


def rollup_job() -> None:
    _run_job("rollup", run_rollup)


def close_job() -> None:
    _run_job("period close", run_close)


def reports_job() -> None:
    _run_job("monthly reports", run_reports)


def stripe_sync_job() -> None:
    _run_job("Stripe sync", run_stripe_sync)


def _run_job(name: str, job: Callable[..., Any]) -> None:
    try:
        job(current_runtime(), now=_now())
    except Exception as exc:  # logged here, once; the next run retries
        _log_failure(f"the {name} job failed", exc)


def _log_failure(what: str, exc: Exception) -> None:
    """One line while the database is away (a restart, an outage: passing), the traceback otherwise."""
    if is_unavailable(exc):
        cause = getattr(exc, "orig", None) or exc
        log.warning("%s: database unavailable (%s); the next run retries", what, type(cause).__name__)
    else:
        log.error("%s", what, exc_info=exc)


# --- the jobs ---------------------------------------------------------------------------------


def run_rollup(rt: Runtime, *, now: datetime) -> list[RollupResult]:
    """Roll up every tenant's new events (their partitions on the Dask cluster when one is set)."""
    results = []
    with cluster_executor(rt.settings) as executor:
        for tenant in _tenants(rt):
            result = _roll_up(rt, tenant, now=now, executor=executor)
            if result is not None:
                results.append(result)
                _settle_budgets(rt, tenant, now=now)
    return results


def _roll_up(rt: Runtime, tenant: Tenant, *, now: datetime, executor: Executor | None) -> RollupResult | None:
    with hold(rt.engine, ROLLUP, tenant.id, lease_seconds=rt.settings.job_lease_seconds) as guard:
        if guard is None:
            return None
        try:
            check_rebuild(rt.engine, tenant)
            result = bring_up_to_date(rt.engine, tenant, now=now, executor=executor)
        except ArchivedHistory as exc:
            log.warning("rollup of %s refused: %s", tenant.name, exc.message)
            return None
        except RollupConflict:
            log.info("rollup of %s: other runs kept moving the watermark first; the next run retries", tenant.name)
            return None
        except Exception as exc:
            _log_failure(f"rollup of {tenant.name} failed", exc)
            return None
    if result.events_read:
        log.info("rollup of %s: %d event(s), %d task(s)", tenant.name, result.events_read, result.tasks_updated)
    if result.quarantined:
        log.warning(
            "rollup of %s: %d event(s) could not be rolled up and were moved to the quarantine "
            "(taskmeter quarantine list --tenant %s)", tenant.name, result.quarantined, tenant.name,
        )  # fmt: skip
    return result


def _settle_budgets(rt: Runtime, tenant: Tenant, *, now: datetime) -> None:
    """Jobs that settled since the last run join their budgets (a tenant with outcome rules)."""
    try:
        with unit_of_work(rt.engine) as session:
            budget_settlement.settle_counters(session, tenant, now=now)
    except Exception as exc:
        _log_failure(f"budget settlement of {tenant.name} failed", exc)


def run_close(rt: Runtime, *, now: datetime) -> list[tuple[str, str]]:
    """Close every month that has ended (tenant-local) more than the grace period ago, oldest
    first, resuming after the tenant's `close` bookmark. Returns (tenant, month) closed."""
    grace = timedelta(seconds=rt.settings.close_grace_seconds)
    closed = []
    for tenant in _tenants(rt):
        with hold(rt.engine, CLOSE, tenant.id, lease_seconds=rt.settings.job_lease_seconds) as guard:
            if guard is None:
                continue
            try:
                with unit_of_work(rt.engine) as session:
                    last_closed = get_bookmark(session, CLOSE, tenant.id)
                if last_closed is None:
                    # The first month may be that of a backfilled event, which only rolled-up usage
                    # shows. Afterwards the bookmark decides and each close brings usage up to date.
                    bring_up_to_date(rt.engine, tenant, now=now)
                with unit_of_work(rt.engine) as session:
                    due = months_to_close(
                        last_closed, first_month(session, tenant), closable_through(now, tenant.timezone, grace)
                    )
                for period in due:
                    with unit_of_work(rt.engine) as session:
                        close_period(session, tenant, period, now=now)
                        set_bookmark(session, CLOSE, tenant.id, period.label, now=now)
                    log.info("closed %s of %s", period.label, tenant.name)
                    closed.append((tenant.name, period.label))
                    guard.renew()
            except Exception as exc:
                _log_failure(f"closing {tenant.name} failed", exc)
    return closed


def run_reports(
    rt: Runtime, *, now: datetime, closed_here: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """Write the monthly CSVs of each closed month not yet written (`reports` bookmark).

    A tenant in `closed_here` (months this process has just closed) waits for a reports guard
    another worker holds, then writes what that worker left: the other may have read the close
    bookmark before this process moved it, and without the wait nobody would write those months
    until the next run."""
    written = []
    for tenant in _tenants(rt):
        deadline = time.monotonic() + rt.settings.job_lease_seconds
        while True:
            with hold(rt.engine, REPORTS, tenant.id, lease_seconds=rt.settings.job_lease_seconds) as guard:
                if guard is not None:
                    written += _write_reports(rt, tenant, guard, now=now)
                    break
            if tenant.name not in closed_here or time.monotonic() >= deadline:
                break
            time.sleep(_GUARD_POLL_SECONDS)
    return written


_GUARD_POLL_SECONDS = 0.1


def _write_reports(rt: Runtime, tenant: Tenant, guard: Guard, *, now: datetime) -> list[tuple[str, str]]:
    written: list[tuple[str, str]] = []
    with unit_of_work(rt.engine) as session:
        last_closed = get_bookmark(session, CLOSE, tenant.id)
        if last_closed is None:
            return written
        due = months_to_close(
            get_bookmark(session, REPORTS, tenant.id), first_month(session, tenant),
            parse_month(last_closed, tenant.timezone),
        )  # fmt: skip
    try:
        for period in due:
            with unit_of_work(rt.engine) as session:
                write_month(session, tenant, period.label, out_dir=rt.settings.reports_dir / tenant.name, now=now)
                set_bookmark(session, REPORTS, tenant.id, period.label, now=now)
            written.append((tenant.name, period.label))
            guard.renew()
    except Exception as exc:
        _log_failure(f"reports of {tenant.name} failed", exc)
    return written


def run_stripe_sync(rt: Runtime, *, now: datetime) -> list[Any]:
    """Push finalized invoices to Stripe (off without an API key). The service guards each
    tenant itself, so `taskmeter stripe sync` and the scheduler never push the same invoice."""
    if rt.settings.stripe_api_key is None:
        return []
    from pricing.stripe_sync import StripeGateway, sync_tenant

    gateway = StripeGateway.from_settings(rt.settings)
    reports = []
    for tenant in _tenants(rt):
        try:
            reports.append(
                sync_tenant(rt.engine, tenant, gateway, now=now, lease_seconds=rt.settings.job_lease_seconds)
            )
        except Exception as exc:
            _log_failure(f"Stripe sync of {tenant.name} failed", exc)
    return reports


def run_webhooks(rt: Runtime, *, now: datetime) -> dict[str, int]:
    """Send the budget alerts' due webhook deliveries (claimed row by row: any number of
    processes may run this at once)."""
    return deliver_due(rt.engine, now=now, box=rt.settings.secret_box())


def run_spend_follower(rt: Runtime, *, now: datetime) -> Followed:
    """One run of the follower of deferred spend counting (`api.follower` runs it on a short
    interval): with `deferred`, count what every followed tenant stored; with `inline`, hand
    followed tenants back to ingestion."""
    return follow_tenants(rt.engine, mode=rt.settings.spend_counting, now=now)


def _tenants(rt: Runtime) -> list[Tenant]:
    with unit_of_work(rt.engine) as session:
        return list_tenants(session)


# --- the scheduler ------------------------------------------------------------------------------


class _BackgroundScheduler(BackgroundScheduler):
    """APScheduler's, minus a shutdown race: its loop, woken by `shutdown()`, still processes due
    jobs, fails to submit them to the stopped executor and moves their next run time on, so a
    run that was due is lost instead of firing after the restart. Job stores are only touched
    while running, under the lock `shutdown()` also takes."""

    def _process_jobs(self) -> float | None:
        with self._jobstores_lock:
            if self.state != STATE_RUNNING:
                return None
            return super()._process_jobs()  # type: ignore[no-any-return]


class _OverrunRollupIsRoutine(logging.Filter):
    """The rollup runs every second; when one run outlasts the interval, APScheduler skips the
    next and warns. That is the design (one run at a time, the next one takes up the backlog),
    so the warning is demoted to a debug line for the rollup job only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if JOB_ROLLUP in record.getMessage() and "maximum number of running instances" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("apscheduler.scheduler").addFilter(_OverrunRollupIsRoutine())


class TaskmeterScheduler:
    """APScheduler with taskmeter's jobs and job store. `start()` adds the jobs that are missing or
    whose interval changed, keeps the others (and their next run time), and removes the Stripe job
    when Stripe is off."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        # Budget-alert webhooks: a thread of its own polling the outbox, not an APScheduler job
        # (whose job store would write the database every fraction of a second).
        self.webhooks = WebhookSender(engine, interval=settings.webhook_interval_seconds, box=settings.secret_box())
        # Deferred spend counting's follower (api.follower), likewise a thread of its own.
        self.follower = SpendFollower(engine, mode=settings.spend_counting, interval=settings.spend_follow_interval_seconds)
        # A small engine of its own: the job store disposes it on shutdown.
        store = SQLAlchemyJobStore(
            engine=make_engine(settings.database_url, small_pool=True), tablename=scheduler_jobs.name
        )
        self.scheduler = _BackgroundScheduler(
            jobstores={"default": store},
            executors={"default": ThreadPoolExecutor(max_workers=4)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": settings.scheduler_misfire_grace_seconds,
            },
            timezone="UTC",
        )

    def desired_jobs(self) -> dict[str, tuple[Callable[[], None], IntervalTrigger]]:
        s = self.settings
        jobs: dict[str, tuple[Callable[[], None], IntervalTrigger]] = {
            JOB_ROLLUP: (rollup_job, IntervalTrigger(seconds=s.rollup_interval_seconds, timezone="UTC")),
            JOB_CLOSE: (close_job, IntervalTrigger(seconds=s.close_check_seconds, timezone="UTC")),
            JOB_REPORTS: (reports_job, IntervalTrigger(seconds=s.close_check_seconds, timezone="UTC")),
        }
        if s.stripe_api_key is not None:
            jobs[JOB_STRIPE] = (
                stripe_sync_job,
                IntervalTrigger(seconds=s.stripe_sync_interval_seconds, timezone="UTC"),
            )
        return jobs

    def start(self, *, paused: bool = False, add_jobs: bool = True) -> TaskmeterScheduler:
        set_runtime(Runtime(self.settings, self.engine))
        self.scheduler.start(paused=paused)
        if add_jobs:
            self.ensure_jobs()
        if not paused:
            self.webhooks.start()
            self.follower.start()
        return self

    def ensure_jobs(self) -> None:
        desired = self.desired_jobs()
        for job_id, (func, trigger) in desired.items():
            existing = self.scheduler.get_job(job_id)
            reference = f"{func.__module__}:{func.__qualname__}"
            if (
                existing is not None
                and existing.func_ref == reference
                and str(existing.trigger) == str(trigger)
            ):
                continue
            # The rollup starts one interval from now; the others look for due work right away.
            first = None if job_id == JOB_ROLLUP else _now()
            extra = {"next_run_time": first} if first is not None else {}
            self.scheduler.add_job(reference, trigger, id=job_id, name=job_id, replace_existing=True, **extra)
        for job in self.scheduler.get_jobs():
            if job.id.startswith("taskmeter.") and job.id not in desired:
                job.remove()

    def jobs(self) -> list[Job]:
        return self.scheduler.get_jobs()

    def shutdown(self, *, wait: bool = True) -> None:
        self.webhooks.stop()
        self.follower.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)


def start_scheduler(settings: Settings, engine: Engine) -> TaskmeterScheduler:
    scheduler = TaskmeterScheduler(settings, engine).start()
    log.info("scheduler started: %s", ", ".join(sorted(job.id for job in scheduler.jobs())))
    return scheduler


def run_once(settings: Settings, engine: Engine, *, now: datetime) -> dict[str, Any]:
    """Every job once, in order, in this thread (`taskmeter worker --once`, cron, tests)."""
    rt = Runtime(settings, engine)
    spend = run_spend_follower(rt, now=now)
    rolled_up = [r.tenant for r in run_rollup(rt, now=now) if r.events_read]
    closed = run_close(rt, now=now)
    reports = run_reports(rt, now=now, closed_here=frozenset(t for t, _ in closed))
    return {
        "spend_counted": spend.events,
        "rolled_up": rolled_up,
        "closed": [{"tenant": t, "month": m} for t, m in closed],
        "reports": [{"tenant": t, "month": m} for t, m in reports],
        "stripe": [r.summary() for r in run_stripe_sync(rt, now=now)],
        "webhooks": run_webhooks(rt, now=now),
    }


def run_worker(settings: Settings, engine: Engine, *, stop: threading.Event | None = None) -> None:
    """Run the scheduler in this process until SIGINT/SIGTERM (or `stop` is set)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    scheduler = start_scheduler(settings, engine)
    try:
        stop.wait()
    finally:
        log.info("worker stopping: waiting for running jobs")
        scheduler.shutdown(wait=True)
