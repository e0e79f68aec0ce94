"""Stripe webhook events: verified, recorded once, and applied to our invoices' payment status.

Stripe delivers at least once and in no guaranteed order. Each event is stored under its id (a
replay finds it and changes nothing), and an invoice's `payment_status` only follows an event
newer than the last one applied (Stripe's `created`; on a tie, the more final status wins).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import stripe
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from metering.core.db import upsert
from metering.core.errors import TaskmeterError
from pricing.stripe_tables import stripe_events
from pricing.tables import invoices

# Invoice events and the payment status they leave our invoice in.
PAYMENT_STATUS = {
    "invoice.finalized": "open",
    "invoice.payment_action_required": "action_required",
    "invoice.payment_failed": "payment_failed",
    "invoice.overdue": "overdue",
    "invoice.paid": "paid",
    "invoice.payment_succeeded": "paid",
    "invoice.marked_uncollectible": "uncollectible",
    "invoice.voided": "void",
}
# On a tie in `created`, a status may only replace one of lower or equal rank.
_RANK = {
    "open": 0,
    "action_required": 1,
    "payment_failed": 1,
    "overdue": 1,
    "uncollectible": 2,
    "paid": 3,
    "void": 3,
}


class BadSignature(TaskmeterError):
    status_code = 400
    error = "bad_signature"


@dataclass(frozen=True)
class WebhookOutcome:
    event_id: str
    type: str
    outcome: str  # applied | stale | ignored | unknown_invoice | duplicate
    invoice: str | None = None  # our invoice number
    payment_status: str | None = None


def verify(payload: bytes, signature: str | None, secret: str) -> stripe.Event:
    """The event, if `signature` (the Stripe-Signature header) signs `payload` with `secret`
    within Stripe's default tolerance (5 minutes); else `BadSignature`."""
    if not signature:
        raise BadSignature("missing Stripe-Signature header")
    try:
        return stripe.Webhook.construct_event(payload, signature, secret)
    except stripe.SignatureVerificationError as exc:
        raise BadSignature(f"invalid Stripe signature: {exc.user_message or exc}") from None
    except ValueError:
        raise BadSignature("the payload is not a Stripe event") from None


def record_event(session: Session, event: stripe.Event, *, now: datetime) -> WebhookOutcome:
    """Store the event once and apply it. The caller's unit of work commits both together."""
    data = getattr(event, "data", None)
    obj = getattr(data, "object", None)
    stripe_invoice_id = getattr(obj, "id", None) if getattr(obj, "object", None) == "invoice" else None
    status = PAYMENT_STATUS.get(event.type) if stripe_invoice_id else None
    inserted = upsert(
        session,
        stripe_events,
        {
            "id": event.id,
            "type": event.type,
            "created": int(event.created),
            "stripe_invoice_id": stripe_invoice_id,
            "payment_status": status,
            "outcome": "ignored",
            "received_at": now,
        },
        key=["id"],
        returning=[stripe_events.c.id],
    ).scalar_one_or_none()
    if inserted is None:
        return WebhookOutcome(event.id, event.type, "duplicate")
    if status is None or stripe_invoice_id is None:  # (there is no status without an invoice id)
        return WebhookOutcome(event.id, event.type, "ignored")

    invoice = session.execute(
        select(invoices.c.id, invoices.c.number).where(invoices.c.stripe_invoice_id == stripe_invoice_id)
    ).one_or_none()
    if invoice is None:
        _set_outcome(session, event.id, "unknown_invoice")
        return WebhookOutcome(event.id, event.type, "unknown_invoice", payment_status=status)

    outcome = "applied" if _is_newest(session, event, stripe_invoice_id, status) else "stale"
    if outcome == "applied":
        session.execute(update(invoices).where(invoices.c.id == invoice.id).values(payment_status=status))
    _set_outcome(session, event.id, outcome, invoice_id=invoice.id)
    return WebhookOutcome(event.id, event.type, outcome, invoice=invoice.number, payment_status=status)


def _is_newest(session: Session, event: stripe.Event, stripe_invoice_id: str, status: str) -> bool:
    latest = session.execute(
        select(stripe_events.c.created, stripe_events.c.payment_status)
        .where(
            stripe_events.c.stripe_invoice_id == stripe_invoice_id,
            stripe_events.c.outcome == "applied",
            stripe_events.c.id != event.id,
        )
        .order_by(stripe_events.c.created.desc())
    ).all()
    if not latest:
        return True
    created = int(event.created)
    newest = latest[0].created
    if created != newest:
        return created > newest
    return all(_RANK[status] >= _RANK[row.payment_status] for row in latest if row.created == newest)


def _set_outcome(session: Session, event_id: str, outcome: str, *, invoice_id: int | None = None) -> None:
    session.execute(
        update(stripe_events)
        .where(stripe_events.c.id == event_id)
        .values(outcome=outcome, invoice_id=invoice_id)
    )
