"""Fixtures of the scheduler tests: tenants created at a chosen time, a recording stand-in for the
period close and the monthly reports, and settings for a scheduler that runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from api import scheduler
from api.scheduler import Runtime
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.tenants import Tenant, create_tenant
from metering.events.ingest import ingest_events


@pytest.fixture
def runtime(settings: Settings, engine: Engine) -> Runtime:
    return Runtime(settings, engine)


@pytest.fixture
def tenant_at(engine: Engine) -> Callable[..., Tenant]:
    """A tenant created at `created` (its first billable month)."""

    def make(name: str = "acme-ai", *, created: datetime, timezone: str = "UTC") -> Tenant:
        with unit_of_work(engine) as session:
            return create_tenant(session, name, timezone=timezone, now=created)

    return make


def send(engine: Engine, tenant: Tenant, events: list[dict[str, Any]], *, now: datetime) -> None:
    with unit_of_work(engine) as session:
        result = ingest_events(session, tenant.id, events, now=now)
    assert not result.rejected, result.rejected


@dataclass
class Recorder:
    """Stands in for `close_period` / `write_month`: records each call, optionally slowly, and
    notes how many ran at once (a double close would show as two calls for one month)."""

    delay: float = 0.0
    calls: list[tuple[str, str]] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, session: Any, tenant: Tenant, period: Any, **kwargs: Any) -> None:
        label = period if isinstance(period, str) else period.label
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.delay)
            with self.lock:
                self.calls.append((tenant.name, label))
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def fake_close(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """`pricing.invoices.close_period` replaced by a recorder, as the scheduler sees it."""
    return _install(monkeypatch, "close_period")


@pytest.fixture
def fake_reports(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    return _install(monkeypatch, "write_month")


def _install(monkeypatch: pytest.MonkeyPatch, attribute: str) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(scheduler, attribute, recorder)
    return recorder
