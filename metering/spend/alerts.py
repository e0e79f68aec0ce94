"""Budget alerts and their webhook outbox.

An alert is one row per (budget, period, threshold, kind), ever: the table's unique key makes a
second insert of the same alert a no-op, whichever process or replay tries it. It is raised in
the transaction that stores the events that crossed the threshold (`metering.spend.counters`), and in the
same transaction one delivery row per webhook of the tenant joins the outbox; a sender (the
server's scheduler, `api.webhooks`) claims due rows one at a time, posts them and records the
outcome, retrying with backoff while the receiver fails. The payload (and so its `id`) is derived
from the alert row only: every attempt sends the same body.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.orm import Session

from metering.core.db import upsert
from metering.core.errors import InvalidInput, NotFound
from metering.core.periods import Period
from metering.core.secret_box import SecretBox
from metering.core.times import rfc3339
from metering.spend.budget_tables import budget_alerts, webhook_deliveries, webhooks
from metering.spend.budgets import (
    Budget,
    BudgetIndex,
    forecast_units,
    reached,
    text,
    used_decimal,
)

_US = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_ATTEMPTS = 20
"""Deliveries past this many failed attempts are marked `failed` and no longer retried."""
CLAIM_SECONDS = 30


def backoff(attempts: int) -> timedelta:
    """Wait before attempt n+1: 1 s, 2 s, 4 s ... capped at 10 minutes."""
    return timedelta(seconds=min(2 ** max(attempts - 1, 0), 600))


def alert_id(tenant_id: int, budget_id: str, period_start_us: int, kind: str, threshold: str) -> str:
    digest = hashlib.sha256(
        f"{tenant_id}\x00{budget_id}\x00{period_start_us}\x00{kind}\x00{threshold}".encode()
    )
    return "alrt_" + digest.hexdigest()[:32]


def _us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _instant(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def check(
    connection: Connection,
    tenant_id: int,
    index: BudgetIndex,
    timezone: str,
    deltas: Mapping[tuple[str, int], list[int]],
    totals: Mapping[tuple[str, int], tuple[int, int]],
    *,
    now: datetime,
) -> int:
    """Raise the alerts that the counters' move from (total - delta) to total crosses; returns
    how many new alerts were recorded."""
    by_id = index.by_id()
    raised = 0
    zone = ZoneInfo(timezone)
    today = now.astimezone(zone).date()
    periods: dict[tuple[str, int], Period] = {}
    for key, (used, rem) in totals.items():
        budget = by_id.get(key[0])
        if budget is None or (not budget.alerts and not budget.forecast):
            continue
        delta = deltas[key]
        if delta[0] <= 0 and delta[1] <= 0:
            continue  # nothing rose (a job moved out of this period)
        before = (used - delta[0], rem - delta[1])
        for fraction in budget.alerts:
            if reached(budget, used, rem, fraction) and not reached(budget, *before, fraction):
                raised += _raise(
                    connection, tenant_id, budget, key[1], "threshold", fraction, used, rem, now=now
                )
        if budget.forecast:
            period_key = (budget.period, key[1])
            period = periods.get(period_key)
            if period is None:
                period = periods[period_key] = Period.holding(
                    _instant(key[1]).astimezone(zone).date(), timezone, budget.period
                )
            scale = _US if budget.money else 1
            limit = budget.limit_units() * scale
            after = forecast_units(used * scale + (rem if budget.money else 0), period, now, today=today)
            before_forecast = forecast_units(
                before[0] * scale + (before[1] if budget.money else 0), period, now, today=today
            )
            if after >= limit > before_forecast:
                raised += _raise(
                    connection, tenant_id, budget, key[1], "forecast", Decimal(1), used, rem, now=now
                )
    return raised


def _raise(
    connection: Connection, tenant_id: int, budget: Budget, period_start_us: int, kind: str, fraction: Decimal,
    used: int, rem: int, *, now: datetime,
) -> int:  # fmt: skip
    threshold = text(fraction)
    values = {
        "tenant_id": tenant_id, "alert_id": alert_id(tenant_id, budget.id, period_start_us, kind, threshold),
        "budget_id": budget.id, "period_start_us": period_start_us, "kind": kind, "threshold": threshold,
        "used": text(used_decimal(budget, used, rem)), "limit": text(budget.limit), "at": now,
    }  # fmt: skip
    key = ("tenant_id", "budget_id", "period_start_us", "threshold", "kind")
    new = upsert(connection, budget_alerts, values, key=key, returning=[budget_alerts.c.id]).scalar()
    if new is None:
        return 0  # raised before: by another process, or before a restart
    hooks = connection.execute(select(webhooks.c.id).where(webhooks.c.tenant_id == tenant_id)).scalars().all()
    if hooks:
        connection.execute(
            insert(webhook_deliveries),
            [
                {"tenant_id": tenant_id, "alert": new, "webhook": hook, "status": "pending", "attempts": 0,
                 "next_attempt_us": _us(now), "claimed_until_us": 0}
                for hook in hooks
            ],
        )  # fmt: skip
    return 1


def payload(row: Any) -> bytes:
    """The webhook body of an alert row: the same bytes on every attempt."""
    body = {
        "id": row.alert_id, "type": f"budget.{row.kind}", "budget": row.budget_id, "threshold": row.threshold,
        "used": row.used, "limit": row.limit, "period_start": rfc3339(_instant(row.period_start_us)),
        "at": rfc3339(row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)),
    }  # fmt: skip
    return orjson.dumps(body)


# --- webhooks -------------------------------------------------------------------------------------


def add_webhook(session: Session, tenant_id: int, url: str, *, box: SecretBox, now: datetime) -> tuple[int, str]:
    """Register a webhook; returns its id and its signing secret (shown once by the caller),
    stored sealed by `box` (`metering.core.secret_box`)."""
    if not url.startswith(("http://", "https://")) or len(url) > 2048:
        raise InvalidInput(
            "invalid webhook",
            detail=[
                {"field": "url", "message": "must be an http:// or https:// URL of at most 2048 characters"}
            ],
        )
    secret = "whsec_" + secrets.token_urlsafe(32)
    hook = session.execute(
        insert(webhooks)
        .values(tenant_id=tenant_id, url=url, secret=box.seal(secret), created_at=now)
        .returning(webhooks.c.id)
    ).scalar_one()
    return int(hook), secret


def reseal_webhooks(connection: Connection, box: SecretBox) -> int:
    """Seal every stored webhook secret with the box's newest key (after a key rotation); a
    secret still stored in clear (from before encryption) is sealed too. Returns how many."""
    rows = connection.execute(select(webhooks.c.id, webhooks.c.secret).order_by(webhooks.c.id)).all()
    for row in rows:
        sealed = box.reseal(row.secret) if box.is_sealed(row.secret) else box.seal(row.secret)
        connection.execute(update(webhooks).where(webhooks.c.id == row.id).values(secret=sealed))
    return len(rows)


def list_webhooks(session: Session, tenant_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(webhooks.c.id, webhooks.c.url, webhooks.c.created_at)
        .where(webhooks.c.tenant_id == tenant_id)
        .order_by(webhooks.c.id)
    )
    return [{"id": r.id, "url": r.url, "created_at": r.created_at} for r in rows]


def remove_webhook(session: Session, tenant_id: int, hook: int) -> None:
    session.execute(
        delete(webhook_deliveries).where(
            webhook_deliveries.c.tenant_id == tenant_id, webhook_deliveries.c.webhook == hook
        )
    )
    gone = session.execute(
        delete(webhooks).where(webhooks.c.tenant_id == tenant_id, webhooks.c.id == hook)
    ).rowcount  # type: ignore[attr-defined]
    if not gone:
        raise NotFound(f"no webhook {hook}")


@dataclass(frozen=True)
class Claimed:
    delivery: int
    attempts: int
    url: str
    secret: str  # sealed (`metering.core.secret_box`): the sender opens it to sign
    body: bytes


def claim_due(connection: Connection, *, now: datetime, limit: int = 50) -> list[Claimed]:
    """Claim up to `limit` due deliveries for this sender. A row is claimed by a conditional
    UPDATE (its claim must still be the one read), so two senders never post one attempt."""
    now_us = _us(now)
    d = webhook_deliveries
    due = connection.execute(
        select(d.c.id, d.c.claimed_until_us)
        .where(d.c.status == "pending", d.c.next_attempt_us <= now_us, d.c.claimed_until_us <= now_us)
        .order_by(d.c.next_attempt_us, d.c.id)
        .limit(limit)
    ).all()
    claimed_ids = []
    for row in due:
        won = connection.execute(
            update(d)
            .where(d.c.id == row.id, d.c.status == "pending", d.c.claimed_until_us == row.claimed_until_us)
            .values(claimed_until_us=now_us + CLAIM_SECONDS * _US)
            .execution_options(preserve_rowcount=True)
        ).rowcount
        if won == 1:
            claimed_ids.append(row.id)
    if not claimed_ids:
        return []
    a, w = budget_alerts, webhooks
    rows = connection.execute(
        select(d.c.id, d.c.attempts, w.c.url, w.c.secret, a)
        .join(a, a.c.id == d.c.alert)
        .join(w, w.c.id == d.c.webhook)
        .where(d.c.id.in_(claimed_ids))
        .order_by(d.c.id)
    ).all()
    return [Claimed(r[0], r[1], r.url, r.secret, payload(r)) for r in rows]


def record_attempt(
    connection: Connection, delivery: int, attempts: int, error: str | None, *, now: datetime
) -> None:
    """The outcome of one attempt: delivered, or the error and the next attempt's time."""
    d = webhook_deliveries
    done = attempts + 1
    if error is None:
        values: dict[str, Any] = {
            "status": "delivered",
            "attempts": done,
            "delivered_at": now,
            "last_error": None,
        }
    else:
        status = "failed" if done >= MAX_ATTEMPTS else "pending"
        values = {
            "status": status,
            "attempts": done,
            "last_error": error[:300],
            "next_attempt_us": _us(now + backoff(done)),
        }
    connection.execute(update(d).where(d.c.id == delivery).values(claimed_until_us=0, **values))


def list_alerts(
    connection: Connection | Session, tenant_id: int, *, limit: int = 200
) -> list[dict[str, Any]]:
    """The tenant's alerts, newest first, each with its deliveries."""
    a, d, w = budget_alerts, webhook_deliveries, webhooks
    rows = connection.execute(
        select(a).where(a.c.tenant_id == tenant_id).order_by(a.c.id.desc()).limit(limit)
    ).all()
    ids = [r.id for r in rows]
    deliveries: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        query = (
            select(d, w.c.url)
            .join(w, w.c.id == d.c.webhook)
            .where(d.c.tenant_id == tenant_id, d.c.alert.in_(ids))
            .order_by(d.c.id)
        )
        for r in connection.execute(query):
            state = r.status if r.status != "pending" or r.attempts == 0 else "failing"
            deliveries[r.alert].append({
                "webhook": r.webhook, "url": r.url, "status": state, "attempts": r.attempts, "last_error": r.last_error,
                "next_attempt_at": _instant(r.next_attempt_us) if r.status == "pending" else None,
                "delivered_at": r.delivered_at,
            })  # fmt: skip
    return [{**orjson.loads(payload(r)), "deliveries": deliveries[r.id]} for r in rows]


def pending_count(connection: Connection) -> int:
    d = webhook_deliveries
    return len(connection.execute(select(d.c.id).where(d.c.status == "pending").limit(1000)).all())
