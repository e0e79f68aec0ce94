"""Job guards (one holder per job and tenant, across threads and connections) and bookmarks."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from metering.core.db import is_sqlite, unit_of_work
from metering.core.jobstate import get_bookmark, hold, set_bookmark
from metering.core.tenants import Tenant

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class TestGuard:
    def test_a_held_guard_is_refused_to_others_and_free_after(self, engine: Engine, tenant: Tenant) -> None:
        with hold(engine, "close", tenant.id) as first:
            assert first is not None
            with hold(engine, "close", tenant.id) as second:
                assert second is None
            # another job, or another tenant, is another guard
            with (
                hold(engine, "reports", tenant.id) as other_job,
                hold(engine, "close", tenant.id + 1) as other_tenant,
            ):
                assert other_job is not None and other_tenant is not None
        with hold(engine, "close", tenant.id) as again:
            assert again is not None

    def test_released_when_the_work_raises(self, engine: Engine, tenant: Tenant) -> None:
        with pytest.raises(RuntimeError), hold(engine, "close", tenant.id):
            raise RuntimeError("job failed")
        with hold(engine, "close", tenant.id) as again:
            assert again is not None

    def test_threads_racing_get_one_holder(self, engine: Engine, tenant: Tenant) -> None:
        start = threading.Barrier(8)
        held: list[int] = []

        def worker(n: int) -> None:
            start.wait()
            with hold(engine, "stripe_sync", tenant.id) as guard:
                if guard is not None:
                    held.append(n)
                    time.sleep(0.3)  # the others try while this one holds

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(held) == 1


class TestSqliteLease:
    @pytest.fixture(autouse=True)
    def _sqlite_only(self, engine: Engine) -> None:
        if not is_sqlite(engine):
            pytest.skip("leases are SQLite's guard; PostgreSQL uses advisory locks")

    def test_a_crashed_holders_lease_expires(self, engine: Engine, tenant: Tenant) -> None:
        clock = [1_000.0]
        crashed = hold(engine, "close", tenant.id, lease_seconds=60, clock=lambda: clock[0])
        assert crashed.__enter__() is not None  # never exited: the process died

        clock[0] += 59
        with hold(engine, "close", tenant.id, lease_seconds=60, clock=lambda: clock[0]) as early:
            assert early is None
        clock[0] += 1
        with hold(engine, "close", tenant.id, lease_seconds=60, clock=lambda: clock[0]) as late:
            assert late is not None

    def test_renew_extends_the_lease_and_reports_its_loss(self, engine: Engine, tenant: Tenant) -> None:
        clock = [1_000.0]
        with hold(engine, "close", tenant.id, lease_seconds=60, clock=lambda: clock[0]) as guard:
            assert guard is not None
            clock[0] += 50
            assert guard.renew()
            clock[0] += 50  # 100 s after taking it, 50 s after renewing: still ours
            with hold(engine, "close", tenant.id, lease_seconds=60, clock=lambda: clock[0]) as other:
                assert other is None
            clock[0] += 11
            with hold(engine, "close", tenant.id, lease_seconds=60, clock=lambda: clock[0]) as thief:
                assert thief is not None
                assert not guard.renew()


class TestBookmarks:
    def test_set_then_move(self, engine: Engine, tenant: Tenant) -> None:
        with unit_of_work(engine) as session:
            assert get_bookmark(session, "close", tenant.id) is None
            set_bookmark(session, "close", tenant.id, "2026-10", now=NOW)
        with unit_of_work(engine) as session:
            set_bookmark(session, "close", tenant.id, "2026-11", now=NOW)
            set_bookmark(session, "reports", tenant.id, "2026-09", now=NOW)
        with unit_of_work(engine) as session:
            assert get_bookmark(session, "close", tenant.id) == "2026-11"
            assert get_bookmark(session, "reports", tenant.id) == "2026-09"

    def test_rolled_back_with_the_work(self, engine: Engine, tenant: Tenant) -> None:
        with pytest.raises(RuntimeError), unit_of_work(engine) as session:
            set_bookmark(session, "close", tenant.id, "2026-10", now=NOW)
            raise RuntimeError("close failed")
        with unit_of_work(engine) as session:
            assert get_bookmark(session, "close", tenant.id) is None


class TestPostgresAdvisoryLock:
    def test_released_by_the_server_when_the_holders_connection_dies(
        self, engine: Engine, tenant: Tenant
    ) -> None:
        if is_sqlite(engine):
            pytest.skip("PostgreSQL's guard")
        from sqlalchemy import func, select

        from metering.core.jobstate import advisory_key

        connection = engine.connect()
        connection.begin()
        assert connection.execute(
            select(func.pg_try_advisory_xact_lock(*advisory_key("close", tenant.id)))
        ).scalar_one()
        with hold(engine, "close", tenant.id) as blocked:
            assert blocked is None
        connection.invalidate()  # the worker process died: its session ends, its lock with it
        connection.close()
        # The server ends the session once it notices the closed socket, a moment later on a busy machine.
        deadline = time.monotonic() + 10
        while True:
            with hold(engine, "close", tenant.id) as guard:
                if guard is not None:
                    break
            assert time.monotonic() < deadline, "the lock outlived its holder's connection by 10 s"
            time.sleep(0.05)

    def test_another_key_space_than_ingest(self, tenant: Tenant) -> None:
        from metering.core.db import ingest_lock_key
        from metering.core.jobstate import advisory_key

        # pg_locks tells the two forms apart (objsubid 1 for bigint keys, 2 for int4 pairs)
        assert isinstance(ingest_lock_key(tenant.id), int)
        assert len(advisory_key("rollup", tenant.id)) == 2
        assert all(-(2**31) <= part < 2**31 for part in advisory_key("rollup", tenant.id))
