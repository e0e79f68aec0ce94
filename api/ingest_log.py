"""The API's side of the ingest log (metering.events.ingest_log): its configuration from the settings,
the app's connection, and the keys that keep authenticating ingestion while the database is away."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import JetStreamContext

from api.settings import Settings
from metering.core.tenants import Principal
from metering.events.ingest_log import LogConfig, connect


def log_config(settings: Settings) -> LogConfig:
    if settings.ingest_log is None:
        raise ValueError("TASKMETER_INGEST_LOG is not set")
    return LogConfig(
        url=settings.ingest_log,
        stream=settings.ingest_log_stream,
        subject=settings.ingest_log_subject,
        duplicate_window=settings.ingest_log_duplicate_window_seconds,
        publish_timeout=settings.ingest_log_publish_timeout_seconds,
        max_deliver=settings.ingest_log_max_deliver,
        ack_wait=settings.ingest_log_ack_wait_seconds,
    )


@dataclass
class LogLink:
    """The app's connection to the log (opened at startup, on the server's event loop)."""

    config: LogConfig
    client: Client
    stream: JetStreamContext

    @classmethod
    async def open(cls, settings: Settings) -> LogLink:
        config = log_config(settings)
        client, stream = await connect(config)
        return cls(config, client, stream)

    async def close(self) -> None:
        await self.client.close()


class KnownKeys:
    """Principals of keys that authenticated recently, by the keyed hash of the key.

    Used only when the database cannot be asked: a key that worked within `grace_seconds` keeps
    its last known scopes until the database is back (a key revoked during an outage works until
    then, at most `grace_seconds` after it was last checked)."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace = grace_seconds
        self._seen: dict[bytes, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def remember(self, key_hash: bytes, principal: Principal) -> None:
        with self._lock:
            self._seen[key_hash] = (principal, time.monotonic())

    def recall(self, key_hash: bytes) -> Principal | None:
        with self._lock:
            found = self._seen.get(key_hash)
        if found is None or time.monotonic() - found[1] > self.grace:
            return None
        return found[0]
