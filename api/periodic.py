"""A daemon thread that runs one piece of work every few seconds until stopped: the shell of the
webhook sender (`api.webhooks`) and the spend follower (`api.follower`).

A thread rather than an APScheduler job: the scheduler's job store would write the database
several times a second. A failed round is logged (one line when the database is away, a
traceback otherwise) and the next round retries.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from metering.core.db import is_unavailable


class PeriodicThread(ABC):
    """Calls `run_round` every `interval` seconds in a daemon thread named `name`, inside the
    context `resources()` opens once for the thread's life; the first round at once when
    `run_at_start`."""

    name: str
    what: str  # the work, as log lines name it
    log: logging.Logger
    run_at_start = False

    def __init__(self, *, interval: float, join_timeout: float = 30.0) -> None:
        self.interval, self.join_timeout = interval, join_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.join_timeout)
            self._thread = None

    def resources(self) -> AbstractContextManager[Any]:
        """What the rounds share (an HTTP client, say), opened when the thread starts."""
        return nullcontext()

    @abstractmethod
    def run_round(self, resources: Any) -> None:
        """One round of the work."""

    def _run(self) -> None:
        with self.resources() as resources:
            first = self.run_at_start
            while first or not self._stop.wait(self.interval):
                first = False
                try:
                    self.run_round(resources)
                except Exception as exc:  # noqa: BLE001 - logged; the next round retries
                    if is_unavailable(exc):
                        self.log.warning("%s: database unavailable; the next round retries", self.what)
                    else:
                        self.log.error("%s failed", self.what, exc_info=exc)
