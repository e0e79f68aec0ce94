"""The follower of deferred spend counting in a server process: a daemon thread that runs
`metering.events.spend_follower.follow_tenants` every `TASKMETER_SPEND_FOLLOW_INTERVAL_SECONDS`
with this process's `TASKMETER_SPEND_COUNTING`.

Like the webhook sender (`api.webhooks`), a thread of its own rather than an APScheduler job,
whose job store would write the database several times a second. Its commits push the counter
totals into this process's authorization snapshot, as ingestion's do when it counts inline.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from sqlalchemy import Engine

from metering.core.db import is_unavailable
from metering.events.spend_follower import Followed, follow_tenants

log = logging.getLogger("taskmeter.spend")


class SpendFollower:
    """Runs the follower every `interval` seconds until stopped (each server and worker process
    runs one; the follower lock keeps two from counting one tenant at once)."""

    def __init__(self, engine: Engine, *, mode: str, interval: float) -> None:
        self.engine, self.mode, self.interval = engine, mode, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="taskmeter-spend-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def run_once(self, *, now: datetime) -> Followed:
        return follow_tenants(self.engine, mode=self.mode, now=now)

    def _run(self) -> None:
        first = True
        while first or not self._stop.wait(self.interval):
            first = False  # the first run at once: a switch of mode takes effect at start
            try:
                done = self.run_once(now=datetime.now(UTC))
                if done.started or done.stopped:
                    log.info("spend counting: followed %s, handed back to ingestion %s", done.started, done.stopped)
            except Exception as exc:  # noqa: BLE001 - logged; the next run retries
                if is_unavailable(exc):
                    log.warning("spend follower: database unavailable; the next run retries")
                else:
                    log.error("spend follower failed", exc_info=exc)
