"""Webhook delivery: posts the outbox's due alerts (`metering.spend.alerts`), signed.

`Taskmeter-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the webhook's
secret>`; secrets are stored sealed (`metering.core.secret_box`) and opened only to sign. A 2xx answer acknowledges; anything else (or no answer within the timeout) is retried
with backoff (`metering.spend.alerts.backoff`). Rows are claimed one by one with a conditional update,
so two server processes never send one attempt twice; a receiver deduplicates by the body's
stable `id` should an acknowledgement be lost.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, datetime

import httpx
from sqlalchemy import Engine

from api.periodic import PeriodicThread
from api.settings import get_settings
from metering.core.db import unit_of_work
from metering.core.secret_box import SecretBox
from metering.spend import alerts

log = logging.getLogger("taskmeter.webhooks")
TIMEOUT_SECONDS = 5.0
SIGNATURE_HEADER = "Taskmeter-Signature"


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def deliver_due(
    engine: Engine, *, now: datetime, box: SecretBox | None = None, client: httpx.Client | None = None
) -> dict[str, int]:
    """Send every due delivery once; returns how many were delivered and how many failed.
    `box` opens the stored secrets (default: the settings', `Settings.secret_box`)."""
    box = box or get_settings().secret_box()
    with unit_of_work(engine) as session:
        claimed = alerts.claim_due(session.connection(), now=now)
    counts = {"delivered": 0, "failed": 0}
    if not claimed:
        return counts
    own = client is None
    http = client or httpx.Client(timeout=TIMEOUT_SECONDS)
    try:
        for item in claimed:
            error = _post(http, item, box.open(item.secret), now)
            counts["delivered" if error is None else "failed"] += 1
            with unit_of_work(engine) as session:
                alerts.record_attempt(session.connection(), item.delivery, item.attempts, error, now=now)
    finally:
        if own:
            http.close()
    return counts


def _post(http: httpx.Client, item: alerts.Claimed, secret: str, now: datetime) -> str | None:
    headers = {
        "content-type": "application/json",
        SIGNATURE_HEADER: signature(secret, item.body, int(now.timestamp())),
    }
    try:
        response = http.post(item.url, content=item.body, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("webhook delivery %s to %s failed: %s", item.delivery, item.url, type(exc).__name__)
        return f"{type(exc).__name__}: {exc}"[:300]
    if 200 <= response.status_code < 300:
        return None
    log.warning("webhook delivery %s to %s answered %s", item.delivery, item.url, response.status_code)
    return f"HTTP {response.status_code}"


class WebhookSender(PeriodicThread):
    """Polls the outbox every `interval` seconds in a daemon thread and sends what is due (each
    server and worker process runs one; claims keep them from sending one attempt twice)."""

    name = "taskmeter-webhooks"
    what = "webhook delivery"
    log = log

    def __init__(self, engine: Engine, *, interval: float, box: SecretBox) -> None:
        super().__init__(interval=interval, join_timeout=TIMEOUT_SECONDS * 2)
        self.engine, self.box = engine, box

    def resources(self) -> httpx.Client:
        return httpx.Client(timeout=TIMEOUT_SECONDS)

    def run_round(self, client: httpx.Client) -> None:
        while deliver_due(self.engine, now=datetime.now(UTC), box=self.box, client=client)["delivered"] and not self.stopping:
            pass  # a full claim was sent: look again at once
