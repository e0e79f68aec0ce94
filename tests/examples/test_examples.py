"""The scripts in examples/ run against a live server and their events arrive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from metering.core.tables import events
from metering.core.tenants import Tenant
from tests.conftest import LiveServer

ROOT = Path(__file__).parents[2]


def run_example(name: str, url: str, key: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--url", url, *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "TASKMETER_API_KEY": key},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def stored(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(events)))


@pytest.fixture
def key(tenant: Tenant, make_key: Callable[..., str]) -> str:
    return make_key(tenant, "ingest")


def test_agent_loop(live_server: LiveServer, key: str, engine: Engine, tmp_path: Path) -> None:
    summary = run_example("agent_loop.py", live_server.url, key, "--spool-dir", str(tmp_path / "spool"))
    assert summary == {"tasks": 5, "completed": 4, "failed": 1, "delivered": True, "accepted": 24, "spooled": 0}
    rows = stored(engine)
    assert Counter(r.type for r in rows) == {"task.started": 5, "usage": 14, "task.completed": 4, "task.failed": 1}
    assert {r.task for r in rows if r.type == "task.failed"} == {"ticket-4"}
    assert {r.provider for r in rows if r.type == "usage"} == {"anthropic", "openai"}
    assert all(r.cache_read_tokens <= r.input_tokens for r in rows)


def test_otel_export(live_server: LiveServer, key: str, engine: Engine) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk (test extras)")
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="needs opentelemetry-exporter-otlp-proto-http")
    summary = run_example("otel_export.py", live_server.url, key)
    assert summary == {"tasks": 3, "spans": 9, "flushed": True}
    rows = stored(engine)
    assert Counter(r.type for r in rows) == {"usage": 6, "task.completed": 2, "task.failed": 1}
    assert {(r.customer, r.task, r.task_type) for r in rows} == {
        ("acme", "ticket-101", "support_ticket"), ("acme", "ticket-102", "support_ticket"),
        ("globex", "ticket-201", "support_ticket"),
    }  # fmt: skip
    assert {r.model for r in rows if r.type == "usage"} == {"claude-sonnet-4-5", "gpt-4o-mini"}
    assert all(r.event_id.startswith("otel:") for r in rows)
