"""NATS JetStream for tests: a stream of the test's own (unique name and subjects, deleted after),
so parallel xdist workers never share one. Tests that need NATS skip, saying so, when none runs
at TASKMETER_TEST_NATS (default nats://127.0.0.1:4222); `.ci/run` starts one."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from metering.events.ingest_log import LogConfig, delete_stream

NATS_URL = os.environ.get("TASKMETER_TEST_NATS", "nats://127.0.0.1:4222")


def nats_running() -> bool:
    parsed = urlparse(NATS_URL)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout=1):
            return True
    except OSError:
        return False


def unique_stream() -> tuple[str, str]:
    """A stream name and subject prefix no other test uses."""
    token = uuid.uuid4().hex[:12]
    return f"TEST_{token}", f"test.{token}"


@pytest.fixture
def log_stream() -> Iterator[tuple[str, str]]:
    """(stream name, subject prefix) of a stream deleted when the test ends."""
    if not nats_running():
        pytest.skip(f"no NATS server at {NATS_URL} (.ci/run starts one)")
    stream, subject = unique_stream()
    yield stream, subject
    asyncio.run(delete_stream(LogConfig(url=NATS_URL, stream=stream, subject=subject)))
