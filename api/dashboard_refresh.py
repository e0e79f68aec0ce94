"""Background computation of the dashboard's month snapshots, one at a time per process.

A page that finds its month's snapshot missing or out of date asks for a new one and waits a
moment; a large month keeps computing here while the page shows a loading state (or the older
figures), so no request holds a worker for seconds and the same month is never computed twice
at once by this process.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

from sqlalchemy import Engine

from metering.core.periods import Period
from metering.core.tenants import Tenant
from reports import snapshots

log = logging.getLogger("taskmeter.dashboard")


class SnapshotRefresher:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="taskmeter-dashboard")
        self._pending: dict[tuple[int, str], Future[None]] = {}
        self._lock = threading.Lock()

    def request(self, tenant: Tenant, period: Period) -> Future[None]:
        """The computation of the month's snapshot: the one under way, or a new one."""
        key = (tenant.id, period.label)
        with self._lock:
            future = self._pending.get(key)
            if future is None or future.done():
                future = self._pool.submit(self._refresh, tenant, period)
                self._pending[key] = future
            return future

    def _refresh(self, tenant: Tenant, period: Period) -> None:
        try:
            snapshots.refresh(self.engine, tenant, period, now=datetime.now(UTC))
        except Exception:
            log.exception("dashboard figures of %s %s failed", tenant.name, period.label)
            raise
        finally:
            with self._lock:
                self._pending.pop((tenant.id, period.label), None)

    def shutdown(self) -> None:
        """Drop the computations not started; wait for the one under way."""
        self._pool.shutdown(wait=True, cancel_futures=True)
