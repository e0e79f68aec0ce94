"""`bring_up_to_date`, the one way a use case gets current usage, and its conflict policy: after
it returns, every event committed before the call is rolled up, whoever else was rolling up."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, select

from metering.core.db import unit_of_work
from metering.core.periods import parse_month
from metering.core.tables import task_usage
from metering.core.tenants import Tenant
from metering.events.ingest import ingest_events
from metering.rollup import pipeline
from metering.rollup.pipeline import RollupResult, bring_up_to_date, rollup_tenant
from pricing import invoices, service
from tests.factories import make_event

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def send(engine: Engine, tenant: Tenant, events: list[dict]) -> None:
    with unit_of_work(engine) as session:
        result = ingest_events(session, tenant.id, events, now=NOW)
    assert not result.rejected, result.rejected


def usage_events(engine: Engine, tenant: Tenant) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(select(task_usage.c.task, task_usage.c.usage_events).where(task_usage.c.tenant_id == tenant.id))
        return {row.task: row.usage_events for row in rows}


def test_a_rollup_that_commits_first_is_waited_for_and_what_it_missed_is_rolled_up(
    engine: Engine, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    send(engine, tenant, [make_event(id="e1", task="t1")])
    other_has_read, other_may_commit = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def other_rollup() -> None:  # reads up to e1, then waits before its compare-and-set
        def pause(_chunk: int) -> None:
            other_has_read.set()
            assert other_may_commit.wait(30)

        try:
            rollup_tenant(engine, tenant, now=NOW, after_chunk=pause)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    other = threading.Thread(target=other_rollup)
    other.start()
    assert other_has_read.wait(30)
    send(engine, tenant, [make_event(id="e2", task="t2")])  # committed before the call

    attempts: list[RollupResult | Exception] = []
    real = pipeline.rollup_tenant

    def observed(engine: Engine, tenant: Tenant, **kwargs: Any) -> RollupResult:
        if not attempts:  # the first attempt reads e1 and e2, then lets the other run commit
            def let_other_commit(_chunk: int) -> None:
                other_may_commit.set()
                other.join(30)

            kwargs["after_chunk"] = let_other_commit
        try:
            result = real(engine, tenant, **kwargs)
        except Exception as exc:
            attempts.append(exc)
            raise
        attempts.append(result)
        return result

    monkeypatch.setattr(pipeline, "rollup_tenant", observed)
    result = bring_up_to_date(engine, tenant, now=NOW)
    other.join(30)
    assert not failures
    assert [type(a).__name__ for a in attempts] == ["RollupConflict", "RollupResult"]
    assert (result.events_read, result.watermark) == (1, 2)  # the retry read only what the other run missed
    assert usage_events(engine, tenant) == {"t1": 1, "t2": 1}  # every event once


def test_two_concurrent_callers_both_return_with_every_earlier_event_rolled_up(engine: Engine, tenant: Tenant) -> None:
    def caller(start: threading.Barrier, results: list[RollupResult], failures: list[BaseException]) -> None:
        start.wait(30)
        try:
            results.append(bring_up_to_date(engine, tenant, now=NOW))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    for round_ in range(3):
        send(engine, tenant, [make_event(id=f"e{round_}-{n}", task=f"t{round_}-{n}") for n in range(20)])
        start = threading.Barrier(2)
        results: list[RollupResult] = []
        failures: list[BaseException] = []
        threads = [threading.Thread(target=caller, args=(start, results, failures)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures
        assert [r.watermark for r in results] == [20 * (round_ + 1)] * 2
        assert usage_events(engine, tenant) == {f"t{r}-{n}": 1 for r in range(round_ + 1) for n in range(20)}


def test_close_brings_usage_up_to_date_once(engine: Engine, tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"plans": [{"id": "tokens", "type": "per_token", "rates": {"input": "6.00", "output": "30.00", "cache_read": "0.60", "cache_write": "7.50"}}],
              "customers": [{"id": "acme", "plan": "tokens"}]}  # fmt: skip
    with unit_of_work(engine) as session:
        service.load_config(session, tenant, yaml.safe_dump(config), now=datetime(2026, 1, 1, tzinfo=UTC))
    send(engine, tenant, [make_event(id="e1", task="t1", time="2026-10-15T12:00:00Z")])
    calls: list[RollupResult] = []

    def counted(engine: Engine, tenant: Tenant, *, now: datetime) -> RollupResult:
        calls.append(result := bring_up_to_date(engine, tenant, now=now))
        return result

    monkeypatch.setattr(invoices, "bring_up_to_date", counted)
    with unit_of_work(engine) as session:
        summary = invoices.close_period(session, tenant, parse_month("2026-10", "UTC"), now=NOW)
    assert summary["closed"] is True
    assert [(c.events_read, c.watermark) for c in calls] == [(1, 1)]
    assert usage_events(engine, tenant) == {"t1": 1}


def test_close_refuses_a_session_that_has_begun(engine: Engine, tenant: Tenant) -> None:
    with unit_of_work(engine) as session:
        session.execute(select(task_usage.c.task).limit(1))
        with pytest.raises(RuntimeError, match="call it first in its unit of work"):
            invoices.close_period(session, tenant, parse_month("2026-10", "UTC"), now=NOW)
