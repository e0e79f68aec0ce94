"""The month page's outcomes panel (`pricing.analysis.month_outcomes`), computed in the background
and kept per process: a large tenant's month takes seconds to settle and rate, and the month page
must open in well under one. A page waits a moment for its figures, else shows the panel as being
computed; the next load shows them. The figures are kept under what they depend on (the rollup's
watermark, the snapshot fingerprint of prices, plans and closed months, the disputes, and, in a
month still open, the minute: settlement advances with time), so a change computes them again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as Late
from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from metering.core.errors import InvalidInput
from metering.core.periods import Period
from metering.core.tenants import Tenant
from pricing import analysis
from pricing.outcome_counts import TaskTypeOutcomes
from pricing.tables import disputes
from reports import repository, snapshots

log = logging.getLogger("taskmeter.dashboard")
KEPT = 64
Outcomes = tuple[TaskTypeOutcomes, ...] | None  # None: the month cannot be rated (a plan not in force)


class OutcomesCache:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="taskmeter-outcomes")
        self._kept: OrderedDict[tuple[object, ...], Future[Outcomes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, tenant: Tenant, period: Period, customer: str | None, *, closed: set[str], now: datetime, wait: float
    ) -> tuple[bool, Outcomes]:
        """(ready, outcomes): the month's outcomes per task type, waiting up to `wait` seconds."""
        key = self._key(tenant, period, customer, closed, now)
        with self._lock:
            future = self._kept.get(key)
            if future is None:
                future = self._pool.submit(self._compute, tenant, period, customer, now)
                self._kept[key] = future
                while len(self._kept) > KEPT:
                    self._kept.popitem(last=False)
            self._kept.move_to_end(key)
        try:
            return True, future.result(timeout=wait)
        except Late:
            return False, None
        except Exception:  # logged by _compute; the page shows the panel as unavailable
            with self._lock:
                self._kept.pop(key, None)
            return True, None

    def _key(
        self, tenant: Tenant, period: Period, customer: str | None, closed: set[str], now: datetime
    ) -> tuple[object, ...]:
        with Session(self.engine) as session:
            seen = session.execute(
                select(func.count(), func.max(disputes.c.id), func.count(disputes.c.resolved_at)).where(
                    disputes.c.tenant_id == tenant.id
                )
            ).one()
            mark = repository.watermark(session, tenant.id)
            depends = snapshots.fingerprint(session, tenant, period, closed)
        minute = None if period.label in closed or now >= period.end else now.replace(second=0, microsecond=0)
        return (tenant.id, period.label, customer, mark, depends, tuple(seen), minute)

    def _compute(self, tenant: Tenant, period: Period, customer: str | None, now: datetime) -> Outcomes:
        try:
            with Session(self.engine) as session:
                return tuple(analysis.month_outcomes(session, tenant, period, customer=customer, now=now))
        except InvalidInput:
            return None
        except Exception:
            log.exception("outcomes of %s %s failed", tenant.name, period.label)
            raise

    def shutdown(self) -> None:
        """Drop the computations not started; wait for the one under way."""
        self._pool.shutdown(wait=True, cancel_futures=True)
