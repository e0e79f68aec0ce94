"""The follower of deferred spend counting in a server process: a daemon thread that runs
`metering.events.spend_follower.follow_tenants` every `TASKMETER_SPEND_FOLLOW_INTERVAL_SECONDS`
with this process's `TASKMETER_SPEND_COUNTING`.

A `PeriodicThread`, like the webhook sender (`api.webhooks`). While it runs, ingestion in this
process stores each batch's counter moves as one row for it to fold (`metering.spend.counters.folding`),
every round, in both modes; stopping, it folds once more. Its commits add what it counted (deferred)
to this process's authorization snapshot, as ingestion's do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import Engine

from api.periodic import PeriodicThread
from metering.events.spend_follower import Followed, fold_pending, follow_tenants
from metering.spend.counters import folding


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

    @contextmanager
    def resources(self) -> Iterator[None]:
        try:
            with folding(self.engine):
                yield
        finally:
            try:
                fold_pending(self.engine, now=datetime.now(UTC))
            except Exception as exc:  # noqa: BLE001 - what is left is folded by the next folder
                self.log.warning("spend follower: the last fold failed (%s); the next folder folds it", exc)

    def run_once(self, *, now: datetime) -> Followed:
        return follow_tenants(self.engine, mode=self.mode, now=now)

    def run_round(self, _: object) -> None:
        done = self.run_once(now=datetime.now(UTC))
        if done.started or done.stopped:
            self.log.info("spend counting: followed %s, handed back to ingestion %s", done.started, done.stopped)
