"""The follower of deferred spend counting in a server process: a daemon thread that runs
`metering.events.spend_follower.follow_tenants` every `TASKMETER_SPEND_FOLLOW_INTERVAL_SECONDS`
with this process's `TASKMETER_SPEND_COUNTING`.

A `PeriodicThread`, like the webhook sender (`api.webhooks`). Its commits push the counter
totals into this process's authorization snapshot, as ingestion's do when it counts inline.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import Engine

from api.periodic import PeriodicThread
from metering.events.spend_follower import Followed, follow_tenants


class SpendFollower(PeriodicThread):
    """Runs the follower every `interval` seconds until stopped (each server and worker process
    runs one; the follower lock keeps two from counting one tenant at once). The first run is at
    once: a switch of mode takes effect at start."""

    name = "taskmeter-spend-follower"
    what = "spend follower"
    log = logging.getLogger("taskmeter.spend")
    run_at_start = True

    def __init__(self, engine: Engine, *, mode: str, interval: float) -> None:
        super().__init__(interval=interval)
        self.engine, self.mode = engine, mode

    def run_once(self, *, now: datetime) -> Followed:
        return follow_tenants(self.engine, mode=self.mode, now=now)

    def run_round(self, _: object) -> None:
        done = self.run_once(now=datetime.now(UTC))
        if done.started or done.stopped:
            self.log.info("spend counting: followed %s, handed back to ingestion %s", done.started, done.stopped)
