"""The rollup on a real database: exact costs, statuses, incremental = full, crash safety."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, inspect, select, update
from sqlalchemy.exc import OperationalError

from metering.core.db import unit_of_work
from metering.core.money import display_cost
from metering.core.tables import (
    metadata,
    rollup_state,
    task_usage,
    task_usage_detail,
    tenant_prices,
    usage_daily,
)
from metering.core.tenants import Tenant
from metering.costs.prices import settle_nanos
from metering.events.ingest import ingest_events
from metering.rollup.executors import DaskExecutor, ExecutorFailed
from metering.rollup.pipeline import RollupConflict, rollup_tenant
from metering.rollup.stores import RollupStore, store_for
from metering.rollup.stores.common import ROLLUP_TABLES, key_order
from metering.rollup.stores.postgresql import PostgresStore
from metering.rollup.stores.sqlite import SqliteStore
from tests.factories import make_event
from tests.support.dask_cluster import LocalCluster

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
_names = itertools.count()


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def send(engine: Engine, tenant: Tenant, events: list[dict]) -> None:
    with unit_of_work(engine) as session:
        result = ingest_events(session, tenant.id, events, now=NOW)
    assert not result.rejected, result.rejected


def rollup(engine: Engine, tenant: Tenant, **kwargs):  # type: ignore[no-untyped-def]
    return rollup_tenant(engine, tenant, now=NOW, **kwargs)


def table_rows(engine: Engine, table, tenant: Tenant) -> list:  # type: ignore[no-untyped-def]
    keys = [c for c in table.primary_key.columns]
    with engine.connect() as connection:
        rows = connection.execute(select(table).where(table.c.tenant_id == tenant.id).order_by(*keys)).all()
    return list(rows)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A `dask scheduler` and two `dask worker` processes on loopback, for the module."""
    with LocalCluster(tmp_path_factory.mktemp("dask"), workers=2) as running:
        yield running


def rollup_position(engine: Engine, tenant: Tenant) -> tuple[int, str]:
    """The tenant's watermark and price version."""
    with engine.connect() as connection:
        row = connection.execute(select(rollup_state).where(rollup_state.c.tenant_id == tenant.id)).one()
    return row.watermark_seq, row.price_version


class PausingStore:
    """The rollup's store of a database, whose event reading (on a Dask worker) first writes
    the worker's pid to `marker` and waits until the marker says "done" (a worker is killed)."""

    def __init__(self, inner: RollupStore, marker: str) -> None:
        self.inner, self.marker = inner, marker

    def read_events(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        marker = Path(self.marker)
        if not (marker.exists() and marker.read_text() == "done"):
            marker.write_text(str(os.getpid()))
            deadline = time.monotonic() + 30
            while marker.read_text() != "done" and time.monotonic() < deadline:
                time.sleep(0.05)  # the killer kills the process whose pid the marker holds
        return self.inner.read_events(*args, **kwargs)

    def transaction(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.transaction(*args, **kwargs)

    def merge(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.merge(*args, **kwargs)

    def replace_tenant(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.replace_tenant(*args, **kwargs)

    def refresh_statistics(self, engine: Engine) -> None:
        self.inner.refresh_statistics(engine)


def kill_the_first_reader(marker: Path, pids: set[int]) -> None:
    """SIGKILL the worker that first writes its pid to `marker` (one of `pids`), then let the
    others read."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = marker.read_text() if marker.exists() else ""
        if text.isdigit() and int(text) in pids:
            os.kill(int(text), signal.SIGKILL)
            marker.write_text("done")
            return
        time.sleep(0.02)


def snapshot(engine: Engine, tenant: Tenant) -> dict[str, list[tuple]]:
    """The tenant's rollup tables without tenant ids and ingest sequence numbers (which differ
    between two tenants fed the same events), for comparing two tenants."""
    out = {}
    for table in (task_usage, task_usage_detail, usage_daily):
        keep = [c.name for c in table.columns if c.name != "tenant_id" and not c.name.endswith("seq")]
        out[table.name] = [tuple(getattr(r, name) for name in keep) for r in table_rows(engine, table, tenant)]
    return out


def task_row(engine: Engine, tenant: Tenant, task: str):  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        return connection.execute(
            select(task_usage).where(task_usage.c.tenant_id == tenant.id, task_usage.c.task == task)
        ).one()


def reference_cost(events: list[dict]) -> Decimal:
    """Exact provider cost by genai-prices itself, one call per event, summed."""
    total = Decimal(0)
    for e in events:
        if e.get("type", "usage") != "usage":
            continue
        usage = Usage(
            input_tokens=e["input_tokens"], output_tokens=e["output_tokens"],
            cache_read_tokens=e.get("cache_read_tokens", 0), cache_write_tokens=e.get("cache_write_tokens", 0),
        )  # fmt: skip
        at = datetime.fromisoformat(e["time"].replace("Z", "+00:00"))
        total += calc_price(usage, e["model"], provider_id=e["provider"], genai_request_timestamp=at).total_price
    return total


def stored_cost(row) -> Decimal:  # type: ignore[no-untyped-def]
    return Decimal(row.cost_nanos).scaleb(-9) + Decimal(row.cost_rem).scaleb(-15)


class TestCostPerTask:
    def test_openai_style_usage_with_cache_inside_input(self, engine: Engine, tenant: Tenant) -> None:
        events = [
            make_event(id="a1", task="t", model="gpt-4o", input_tokens=10_000, cache_read_tokens=6_000, output_tokens=500),
            make_event(id="a2", task="t", model="gpt-4o", input_tokens=3_333, cache_read_tokens=1_111, output_tokens=77, reasoning_tokens=7),
        ]  # fmt: skip
        send(engine, tenant, events)
        rollup(engine, tenant)
        row = task_row(engine, tenant, "t")
        # gpt-4o: input 2.50, cached input 1.25, output 10.00 per million
        expected = (Decimal(10_000 - 6_000 + 3_333 - 1_111) * Decimal("2.5") + Decimal(7_111) * Decimal("1.25")
                    + Decimal(577) * Decimal(10)) / 10**6  # fmt: skip
        assert stored_cost(row) == expected == reference_cost(events)
        assert (row.input_tokens, row.cache_read_tokens, row.output_tokens, row.reasoning_tokens) == (13_333, 7_111, 577, 7)

    def test_anthropic_style_usage_normalized_cache_writes(self, engine: Engine, tenant: Tenant) -> None:
        # Anthropic reports input without cache; the client adds it back: input = 100 + 2000 + 500.
        events = [make_event(id="b1", task="t", provider="anthropic", model="claude-sonnet-4-20250514",
                             input_tokens=2_600, cache_read_tokens=2_000, cache_write_tokens=500, output_tokens=321)]  # fmt: skip
        send(engine, tenant, events)
        rollup(engine, tenant)
        # sonnet 4: input 3.00, cache read 0.30, cache write 3.75, output 15.00 per million
        expected = (Decimal(100) * 3 + Decimal(2_000) * Decimal("0.3") + Decimal(500) * Decimal("3.75") + Decimal(321) * 15) / 10**6
        assert stored_cost(task_row(engine, tenant, "t")) == expected == reference_cost(events)

    def test_tier_boundary_of_a_long_context_model(self, engine: Engine, tenant: Tenant) -> None:
        at_boundary = make_event(id="c1", task="t1", provider="google", model="gemini-2.5-pro", input_tokens=200_000, output_tokens=1_000)
        past_it = make_event(id="c2", task="t2", provider="google", model="gemini-2.5-pro", input_tokens=200_001, output_tokens=1_000)
        send(engine, tenant, [at_boundary, past_it])
        rollup(engine, tenant)
        # <= 200k: 1.25 in / 10 out; above: 2.50 in / 15 out, on all tokens of the request
        assert stored_cost(task_row(engine, tenant, "t1")) == (Decimal(200_000) * Decimal("1.25") + 10_000) / 10**6
        assert stored_cost(task_row(engine, tenant, "t2")) == (Decimal(200_001) * Decimal("2.5") + 15_000) / 10**6
        assert stored_cost(task_row(engine, tenant, "t2")) == reference_cost([past_it])

    def test_historical_price_by_event_time(self, engine: Engine, tenant: Tenant) -> None:
        before = make_event(id="d1", task="old", model="o3", time="2025-06-09T23:59:59Z", input_tokens=1_000_000, output_tokens=0)
        after = make_event(id="d2", task="new", model="o3", time="2025-06-10T00:00:00Z", input_tokens=1_000_000, output_tokens=0)
        send(engine, tenant, [before, after])
        rollup(engine, tenant)
        assert stored_cost(task_row(engine, tenant, "old")) == Decimal(10) == reference_cost([before])
        assert stored_cost(task_row(engine, tenant, "new")) == Decimal(2) == reference_cost([after])

    @settings(max_examples=25, deadline=None)
    @given(data=st.data())
    def test_randomized_events_equal_the_decimal_reference(self, data: st.DataObject, engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
        tenant = make_tenant(fresh_name("t"))
        models = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-20250514"), ("google", "gemini-2.5-pro")]
        events = []
        for i in range(data.draw(st.integers(1, 12))):
            provider, model = data.draw(st.sampled_from(models))
            input_tokens = data.draw(st.integers(0, 400_000))
            cache_read = data.draw(st.integers(0, input_tokens))
            cache_write = data.draw(st.integers(0, input_tokens - cache_read)) if provider == "anthropic" else 0
            output = data.draw(st.integers(0, 50_000))
            events.append(make_event(
                id=f"r{i}", task=f"task{data.draw(st.integers(0, 2))}", provider=provider, model=model,
                input_tokens=input_tokens, cache_read_tokens=cache_read, cache_write_tokens=cache_write,
                output_tokens=output, reasoning_tokens=data.draw(st.integers(0, output)),
                time=f"2026-10-{data.draw(st.integers(1, 30)):02d}T12:00:00Z",
            ))  # fmt: skip
        send(engine, tenant, events)
        rollup(engine, tenant)
        for task in {e["task"] for e in events}:
            row = task_row(engine, tenant, task)
            exact = reference_cost([e for e in events if e["task"] == task])
            assert stored_cost(row) == exact
            assert settle_nanos(row.cost_nanos, row.cost_rem) == int((exact * 10**9).quantize(Decimal(1), ROUND_HALF_UP))
            assert display_cost(row.cost_nanos, row.cost_rem) == exact.quantize(Decimal("0.000001"), ROUND_HALF_UP)


class TestTaskState:
    def test_status_customer_type_and_times(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, [
            make_event(id="s", type="task.started", task="t", task_type="support_ticket", time="2026-10-01T10:00:00Z"),
            make_event(id="u", task="t", time="2026-10-01T10:01:00Z"),
            make_event(id="x", type="task.completed", task="t", task_type="code_review", time="2026-10-01T10:02:00Z"),
        ])  # fmt: skip
        rollup(engine, tenant)
        row = task_row(engine, tenant, "t")
        assert (row.customer, row.task_type, row.status, row.events, row.usage_events) == ("acme", "code_review", "completed", 3, 1)
        ten = int(datetime(2026, 10, 1, 10, tzinfo=UTC).timestamp()) * 10**6
        assert (row.started_us, row.ended_us, row.first_event_us, row.last_event_us) == (ten, ten + 120 * 10**6, ten, ten + 120 * 10**6)

    def test_open_until_a_terminal_event(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, [make_event(id="u", task="t")])
        rollup(engine, tenant)
        assert task_row(engine, tenant, "t").status == "open"

    def test_late_terminal_event_after_rollup_corrects_the_task(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, [make_event(id="u", task="t"), make_event(id="c", type="task.completed", task="t", time="2026-10-15T13:00:00Z")])
        rollup(engine, tenant)
        # The agent later reports a failure with a later time: the task turns failed.
        send(engine, tenant, [make_event(id="f", type="task.failed", task="t", time="2026-10-15T14:00:00Z")])
        rollup(engine, tenant)
        assert task_row(engine, tenant, "t").status == "failed"
        # An out-of-order terminal event that happened earlier does not override the latest one.
        send(engine, tenant, [make_event(id="k", type="task.cancelled", task="t", time="2026-10-15T12:30:00Z")])
        rollup(engine, tenant)
        row = task_row(engine, tenant, "t")
        assert (row.status, row.events) == ("failed", 4)

    def test_late_usage_event_adds_to_its_day(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, [make_event(id="u1", task="t", time="2026-10-15T12:00:00Z")])
        rollup(engine, tenant)
        send(engine, tenant, [make_event(id="u2", task="t", time="2026-10-02T12:00:00Z", input_tokens=10, output_tokens=1)])
        rollup(engine, tenant)
        days = [(str(row.day), row.input_tokens) for row in table_rows(engine, task_usage_detail, tenant)]
        assert days == [("2026-10-02", 10), ("2026-10-15", 1200)]

    def test_days_are_tenant_local(self, engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
        kolkata = make_tenant("kolkata", timezone="Asia/Kolkata")
        send(engine, kolkata, [make_event(id="u", time="2026-10-31T19:00:00Z")])  # 00:30 on Nov 1 in Kolkata
        rollup(engine, kolkata)
        [row] = table_rows(engine, usage_daily, kolkata)
        assert str(row.day) == "2026-11-01"


class TestIncremental:
    def test_rolling_up_twice_changes_nothing(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, [make_event(id=f"e{i}", task=f"t{i % 3}") for i in range(10)])
        first = rollup(engine, tenant)
        before = snapshot(engine, tenant)
        second = rollup(engine, tenant)
        assert (first.events_read, second.events_read, second.tasks_updated) == (10, 0, 0)
        assert snapshot(engine, tenant) == before

    @settings(max_examples=20, deadline=None)
    @given(seed=st.integers(0, 10**6), splits=st.lists(st.integers(1, 30), min_size=1, max_size=5))
    def test_incremental_runs_equal_one_full_run(self, seed: int, splits: list[int], engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
        rng = random.Random(seed)
        events = random_events(rng, 40)
        stepwise, whole = make_tenant(fresh_name("s")), make_tenant(fresh_name("w"))
        start = 0
        for size in splits:
            send(engine, stepwise, events[start : start + size])
            rollup(engine, stepwise)
            start += size
        send(engine, stepwise, events[start:])
        rollup(engine, stepwise)
        send(engine, whole, events)
        rollup(engine, whole)
        assert snapshot(engine, stepwise) == snapshot(engine, whole)

    def test_chunked_run_equals_one_chunk(self, engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
        events = random_events(random.Random(3), 60)
        small, big = make_tenant("small-chunks"), make_tenant("one-chunk")
        send(engine, small, events)
        send(engine, big, events)
        rollup(engine, small, chunk_size=7)
        rollup(engine, big)
        assert snapshot(engine, small) == snapshot(engine, big)

    def test_a_local_dask_cluster_equals_one_process(self, engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
        # TASKMETER_DASK_SCHEDULER=local:2: a `distributed.LocalCluster` of two worker processes,
        # started for the run and stopped after.
        events = random_events(random.Random(9), 80)
        split, single = make_tenant(fresh_name("split")), make_tenant(fresh_name("single"))
        send(engine, split, events)
        send(engine, single, events)
        rollup(engine, single)
        with DaskExecutor("local:2") as executor:
            assert executor.workers == 2 and executor.cluster is None  # nothing started yet
            result = rollup(engine, split, chunk_size=15, executor=executor)
            assert executor.cluster is not None and len(executor.cluster.workers) == 2
        assert executor.cluster is None  # stopped
        assert result.events_read == 80
        assert snapshot(engine, split) == snapshot(engine, single)

    def test_a_dask_cluster_equals_one_process(self, engine: Engine, make_tenant, dask_cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
        # A real `dask scheduler` and two `dask worker` processes on loopback: each range of seqs
        # is read, priced and summarized on a worker, and the rollup tables come out the same.
        events = random_events(random.Random(12), 80)
        clustered, single = make_tenant(fresh_name("clustered")), make_tenant(fresh_name("in-process"))
        send(engine, clustered, events)
        send(engine, single, events)
        rollup(engine, single)
        with DaskExecutor(dask_cluster.address) as executor:
            assert executor.workers == 2
            result = rollup(engine, clustered, chunk_size=15, executor=executor)
        assert result.events_read == 80
        assert snapshot(engine, clustered) == snapshot(engine, single)

    @pytest.mark.parametrize("outcome", ["retried", "failed"])
    def test_a_worker_killed_mid_run_retries_or_writes_nothing(self, outcome: str, engine: Engine, make_tenant, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        # kill -9 of a `dask worker` while it reads its range. "retried": Dask runs the range
        # again on the other worker and the run completes; "failed": the scheduler allows no
        # worker death per task (allowed-failures 0; a task's `retries` are for exceptions it
        # raises, not for its worker's death), so the run fails with ExecutorFailed, the rollup
        # tables and watermark are those of before the run, and the next run completes.
        events = random_events(random.Random(31), 80)
        killed_run, single = make_tenant(fresh_name("killed")), make_tenant(fresh_name("single"))
        send(engine, killed_run, events[:30])
        rollup(engine, killed_run)  # a watermark and rows of its own before the killed run
        send(engine, killed_run, events[30:])
        send(engine, single, events)
        rollup(engine, single)
        before = snapshot(engine, killed_run), rollup_position(engine, killed_run)
        marker = tmp_path / "reading"
        store = PausingStore(store_for(engine), str(marker))
        allowed = {"failed": 0, "retried": 3}[outcome]
        with LocalCluster(tmp_path / "dask", workers=2, allowed_failures=allowed) as cluster:
            pids = set(cluster.worker_pids().values())
            killer = threading.Thread(target=kill_the_first_reader, args=(marker, pids))
            killer.start()
            try:
                with DaskExecutor(cluster.address) as executor:
                    if outcome == "failed":
                        with pytest.raises(ExecutorFailed, match="KilledWorker.*nothing was returned"):
                            rollup(engine, killed_run, store=store, executor=executor)
                        assert (snapshot(engine, killed_run), rollup_position(engine, killed_run)) == before
                        marker.write_text("done")  # the next run is left alone
                    result = rollup(engine, killed_run, store=store, executor=executor)
            finally:
                killer.join()
            assert len(cluster.worker_pids()) == 1  # one worker was killed
        assert result.events_read == 50
        assert snapshot(engine, killed_run) == snapshot(engine, single)
        assert rollup_position(engine, killed_run)[0] > before[1][0]

    @pytest.mark.parametrize("parallel", [False, True], ids=["one-process", "dask-workers"])
    def test_reading_along_the_table_keeps_to_the_tenant(self, parallel: bool, engine: Engine, make_tenant, request: pytest.FixtureRequest) -> None:  # type: ignore[no-untyped-def]
        # A tenant alone in the events table is read along seq (no index); here that path is
        # forced with another tenant's events interleaved between its own, which it must skip.
        events = random_events(random.Random(21), 90)
        scanned, indexed = make_tenant(fresh_name("scanned")), make_tenant(fresh_name("indexed"))
        for start in range(0, len(events), 10):
            send(engine, scanned, events[start : start + 10])
            send(engine, indexed, events[start : start + 10])
        rollup(engine, indexed)
        store = SqliteStore(along_table=True) if engine.dialect.name == "sqlite" else store_for(engine)
        with DaskExecutor(request.getfixturevalue("dask_cluster").address) if parallel else nullcontext() as executor:
            assert rollup(engine, scanned, chunk_size=13, store=store, executor=executor).events_read == 90
        assert snapshot(engine, scanned) == snapshot(engine, indexed)

    def test_a_tenant_alone_in_the_events_is_read_along_the_table(self, engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
        if engine.dialect.name != "sqlite":
            pytest.skip("SQLite's way of reading (PostgreSQL plans its reads itself)")
        store = SqliteStore()
        first = make_tenant(fresh_name("first"))
        send(engine, first, random_events(random.Random(22), 5))
        assert store.alone_in_events(engine, first.id)
        second = make_tenant(fresh_name("second"))  # a tenant without events changes nothing
        assert store.alone_in_events(engine, first.id)
        send(engine, second, random_events(random.Random(23), 5))
        assert not store.alone_in_events(engine, first.id)
        assert not store.alone_in_events(engine, second.id)

    def test_crash_between_chunks_then_rerun_equals_a_clean_run(self, engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
        events = random_events(random.Random(5), 50)
        crashed, clean = make_tenant("crashed"), make_tenant("clean")
        send(engine, crashed, events)
        send(engine, clean, events)

        def crash(chunk: int) -> None:
            if chunk == 2:
                raise RuntimeError("killed")

        with pytest.raises(RuntimeError, match="killed"):
            rollup(engine, crashed, chunk_size=10, after_chunk=crash)
        assert snapshot(engine, crashed) == {"task_usage": [], "task_usage_detail": [], "usage_daily": []}
        rollup(engine, crashed, chunk_size=10)
        rollup(engine, clean)
        assert snapshot(engine, crashed) == snapshot(engine, clean)

    def test_concurrent_run_loses_and_writes_nothing(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, [make_event(id="e1")])

        def other_rollup_meanwhile(chunk: int) -> None:
            rollup(engine, tenant)  # finishes first and moves the watermark

        with pytest.raises(RollupConflict):
            rollup(engine, tenant, after_chunk=other_rollup_meanwhile)
        [row] = table_rows(engine, task_usage, tenant)
        assert row.usage_events == 1  # counted once


class TestRebuild:
    """A rebuild (first run, new prices) of a tenant alone in the rollup tables sets SQLite's
    secondary indexes aside and creates them again in the same transaction."""

    @staticmethod
    def indexes(engine: Engine) -> dict[str, list[str]]:
        found = inspect(engine)
        return {table.name: sorted(str(index["name"]) for index in found.get_indexes(table.name)) for table in ROLLUP_TABLES}

    @staticmethod
    def force_rebuild(engine: Engine) -> None:
        with unit_of_work(engine) as session:
            session.execute(update(rollup_state).values(price_version="stale", price_buckets=None))

    def test_every_index_is_in_place_after_a_rebuild(self, engine: Engine, tenant: Tenant) -> None:
        before = self.indexes(engine)
        assert any(before.values())
        send(engine, tenant, random_events(random.Random(11), 40))
        first = rollup(engine, tenant)
        rows = snapshot(engine, tenant)
        self.force_rebuild(engine)
        assert rollup(engine, tenant).rebuilt and first.rebuilt
        assert self.indexes(engine) == before
        assert snapshot(engine, tenant) == rows
        # The tables are still the declared ones (PostgreSQL swaps in new tables on a rebuild).
        names = {table.name for table in ROLLUP_TABLES}
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={
                "compare_type": True,
                "include_object": lambda obj, name, type_, reflected, other: getattr(obj, "table", obj).name in names,
            })  # fmt: skip
            assert compare_metadata(context, metadata) == []
        found = inspect(engine)
        assert {table.name: found.get_pk_constraint(table.name)["name"] for table in ROLLUP_TABLES} == {
            name: f"pk_{name}" for name in names
        }
        assert set(found.get_table_names()) >= names and not [n for n in found.get_table_names() if n.endswith("__rebuild")]

    def test_a_rebuild_beside_another_tenant_leaves_its_rows_alone(self, engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
        # Alone in the tables, a tenant's rebuild clears them whole (SQLite) or swaps them
        # (PostgreSQL); beside another tenant it must touch only its own rows.
        rebuilt, other = make_tenant(fresh_name("rebuilt")), make_tenant(fresh_name("other"))
        send(engine, rebuilt, random_events(random.Random(13), 40))
        send(engine, other, random_events(random.Random(14), 40))
        rollup(engine, rebuilt)
        rollup(engine, other)
        before = {tenant.name: snapshot(engine, tenant) for tenant in (rebuilt, other)}
        assert all(before[tenant.name]["task_usage"] for tenant in (rebuilt, other))
        with unit_of_work(engine) as session:
            session.execute(update(rollup_state).where(rollup_state.c.tenant_id == rebuilt.id).values(price_version="stale", price_buckets=None))
        assert rollup(engine, rebuilt).rebuilt
        assert {tenant.name: snapshot(engine, tenant) for tenant in (rebuilt, other)} == before
        assert self.indexes(engine) == {table.name: sorted(str(index.name) for index in table.indexes) for table in ROLLUP_TABLES}

    @staticmethod
    def staging_files(engine: Engine) -> list[str]:
        folder = Path(engine.url.database or ".").parent if engine.dialect.name == "sqlite" else None
        return sorted(p.name for p in folder.glob(".taskmeter-rebuild-*")) if folder else []

    def test_a_staged_rebuild_writes_what_direct_inserts_write(self, engine: Engine, make_tenant) -> None:  # type: ignore[no-untyped-def]
        # A large SQLite rebuild stages its rows in a file (ADBC) and copies them in one
        # INSERT ... SELECT per table; the rows must be the ones direct inserts write: NULL task
        # types, open tasks, unpriced models, days, non-ASCII names.
        events = random_events(random.Random(15), 150)
        events += [make_event(id="nonascii", task="tâche-東京-🚀", customer="müller", input_tokens=7, output_tokens=3)]
        staged, direct = make_tenant(fresh_name("staged")), make_tenant(fresh_name("direct"))
        for tenant in (staged, direct):
            send(engine, tenant, events)
        copies: list[int] = []

        class CountedCopies(SqliteStore):
            def copy_staged(self, connection, tenant_id):  # type: ignore[no-untyped-def]
                copies.append(tenant_id)
                super().copy_staged(connection, tenant_id)

        staging = CountedCopies(stage_min_tasks=1) if engine.dialect.name == "sqlite" else store_for(engine)
        unstaged = SqliteStore(stage_min_tasks=10**9) if engine.dialect.name == "sqlite" else store_for(engine)
        assert rollup(engine, staged, store=staging).rebuilt
        rollup(engine, direct, store=unstaged)
        assert copies == ([staged.id] if engine.dialect.name == "sqlite" else [])
        assert snapshot(engine, staged) == snapshot(engine, direct)
        assert self.staging_files(engine) == []
        # Rebuilt again beside the other tenant, staged, and then incremental runs go on.
        self.force_rebuild(engine)
        rollup(engine, staged, store=staging)
        rollup(engine, direct, store=staging)
        assert snapshot(engine, staged) == snapshot(engine, direct)
        more = [make_event(id="late", task="tâche-東京-🚀", customer="müller", input_tokens=1, output_tokens=1)]
        for tenant in (staged, direct):
            send(engine, tenant, more)
            assert not rollup(engine, tenant, store=staging).rebuilt
        assert snapshot(engine, staged) == snapshot(engine, direct)
        assert self.staging_files(engine) == []

    def test_a_failed_staged_rebuild_keeps_the_rows_and_leaves_no_file(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, random_events(random.Random(16), 60))
        rollup(engine, tenant)
        rows, before = snapshot(engine, tenant), self.indexes(engine)
        self.force_rebuild(engine)
        # SQLite fails once the staged rows are copied; PostgreSQL once the new tables are written.
        if engine.dialect.name == "sqlite":
            failing = failing_store(SqliteStore, "copy_staged", stage_min_tasks=1)
        else:
            failing = failing_store(PostgresStore, "write")
        with pytest.raises(RuntimeError, match="disk full"):
            rollup(engine, tenant, store=failing)
        assert snapshot(engine, tenant) == rows and self.indexes(engine) == before
        assert self.staging_files(engine) == []
        staging = SqliteStore(stage_min_tasks=1) if engine.dialect.name == "sqlite" else store_for(engine)
        assert rollup(engine, tenant, store=staging).rebuilt  # the staging database was detached: it attaches again
        assert snapshot(engine, tenant) == rows

    def test_an_attach_that_fails_midway_detaches_the_others(self, engine: Engine, tenant: Tenant) -> None:
        if engine.dialect.name != "sqlite":
            pytest.skip("staging files are SQLite's (a PostgreSQL rebuild swaps in new tables)")
        send(engine, tenant, random_events(random.Random(18), 40))
        rollup(engine, tenant)
        rows = snapshot(engine, tenant)

        class Clashing(SqliteStore):
            def staging_schema(self, table: str) -> str:
                return "main" if table == "usage_daily" else super().staging_schema(table)  # "main" is taken

        self.force_rebuild(engine)
        with pytest.raises(OperationalError, match="already in use"):
            rollup(engine, tenant, store=Clashing(stage_min_tasks=1))
        assert snapshot(engine, tenant) == rows and self.staging_files(engine) == []
        assert rollup(engine, tenant, store=SqliteStore(stage_min_tasks=1)).rebuilt  # the two attached before were detached
        assert snapshot(engine, tenant) == rows

    def test_a_killed_rollups_staging_file_is_removed_by_the_next_staged_rebuild(self, engine: Engine, tenant: Tenant) -> None:
        if engine.dialect.name != "sqlite":
            pytest.skip("staging files are SQLite's (a PostgreSQL rebuild swaps in new tables)")
        folder = Path(str(engine.url.database)).parent
        finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
        dead = folder / f".taskmeter-rebuild-{int(finished.stdout)}-x1.db"  # a process that has ended
        running = folder / f".taskmeter-rebuild-{os.getppid()}-x2.db"  # a process still running
        dead.write_bytes(b"left by kill -9")
        running.write_bytes(b"in use")
        send(engine, tenant, random_events(random.Random(17), 30))
        assert rollup(engine, tenant, store=SqliteStore(stage_min_tasks=1)).rebuilt
        assert self.staging_files(engine) == [running.name]

    def test_a_failed_rebuild_keeps_the_indexes_and_the_rows(self, engine: Engine, tenant: Tenant) -> None:
        before = self.indexes(engine)
        send(engine, tenant, random_events(random.Random(12), 40))
        rollup(engine, tenant)
        rows = snapshot(engine, tenant)
        self.force_rebuild(engine)
        with pytest.raises(RuntimeError, match="disk full"):
            rollup(engine, tenant, store=failing_store(type(store_for(engine)), "write", before=True))
        assert self.indexes(engine) == before
        assert snapshot(engine, tenant) == rows


def failing_store(kind: type[SqliteStore] | type[PostgresStore], method: str, *, before: bool = False, **options: int) -> RollupStore:
    """A store of `kind` whose `method` raises "disk full", after doing its work (or `before`)."""

    def fail(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not before:
            getattr(super(failing, self), method)(*args, **kwargs)
        raise RuntimeError("disk full")

    failing = type(f"Failing{kind.__name__}", (kind,), {method: fail})
    return failing(**options)  # type: ignore[no-any-return]


class TestUnpricedModels:
    def test_unknown_model_is_unpriced_then_priced_once_a_price_is_added(self, engine: Engine, tenant: Tenant) -> None:
        send(engine, tenant, [make_event(id="u", task="t", provider="acme-ai", model="acme-large", input_tokens=1_000_000, output_tokens=100_000)])
        result = rollup(engine, tenant)
        assert result.unpriced_models == [{"provider": "acme-ai", "model": "acme-large", "events": 1}]
        row = task_row(engine, tenant, "t")
        assert (row.unpriced_events, row.cost_nanos) == (1, 0)
        with unit_of_work(engine) as session:
            session.execute(insert(tenant_prices).values(
                tenant_id=tenant.id, provider="acme-ai", model="acme-large", input="3.00", output="15.00",
                cache_read=None, cache_write=None, updated_at=NOW,
            ))  # fmt: skip
        result = rollup(engine, tenant)
        # Re-priced from the rollup's rows (`metering.rollup.reprice`): no event read again.
        assert not result.rebuilt and result.repriced is not None and result.events_read == 0
        assert result.unpriced_models == [] and result.repriced.unpriced == {}
        row = task_row(engine, tenant, "t")
        assert (row.unpriced_events, stored_cost(row)) == (0, Decimal("4.5"))
        with engine.connect() as connection:
            assert connection.execute(select(rollup_state.c.price_version)).scalar_one().startswith("genai-prices@")


def random_events(rng: random.Random, n: int) -> list[dict]:
    base = datetime(2026, 10, 1, tzinfo=UTC)
    kinds = ["usage"] * 6 + ["task.started", "task.completed", "task.failed", "task.cancelled"]
    out = []
    for i in range(n):
        kind = rng.choice(kinds)
        event = make_event(
            id=f"ev{i}", type=kind, task=f"task{rng.randrange(6)}", customer=rng.choice(["acme", "globex"]),
            time=(base + timedelta(minutes=rng.randrange(60 * 24 * 40))).isoformat().replace("+00:00", "Z"),
            task_type=rng.choice([None, "support_ticket", "code_review"]),
        )  # fmt: skip
        if kind == "usage":
            event.update(model=rng.choice(["gpt-4o", "gpt-4o-mini", "mystery-model"]), input_tokens=rng.randrange(5000),
                         output_tokens=rng.randrange(900))  # fmt: skip
        out.append(event)
    return out


@given(st.lists(st.tuples(st.text(max_size=4), st.integers(0, 3), st.text(max_size=3)), max_size=60, unique=True))
def test_rebuild_rows_go_in_code_point_order_of_their_keys(keys: list[tuple[str, int, str]]) -> None:
    # Rebuild rows are written in primary-key order (SQLite BINARY, PostgreSQL C collation):
    # the order of Python's string comparison, by code point.
    frame = pd.DataFrame(keys, columns=["task", "day", "model"]).astype({"task": object, "model": object})
    frame["day"] = pd.to_datetime(frame["day"], unit="D")
    ordered = key_order(frame, ("task", "day", "model"), True)
    assert list(ordered.itertuples(index=False, name=None)) == sorted(frame.itertuples(index=False, name=None))
