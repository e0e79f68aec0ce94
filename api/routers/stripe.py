"""Stripe: the webhook (payment status of pushed invoices) and the sync status of a tenant."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from api.deps import NowDep, ReadScope, SessionDep, SettingsDep
from api.errors import ErrorBody, responses
from metering.core.errors import PayloadTooLarge, Unavailable
from pricing.stripe_sync import sync_status
from pricing.stripe_webhooks import record_event, verify

router = APIRouter(tags=["stripe"])

MAX_WEBHOOK_BYTES = 1024 * 1024  # Stripe's events are far smaller


async def webhook_body(request: Request) -> bytes:
    """The raw body, as signed: the signature covers these exact bytes."""
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_WEBHOOK_BYTES:
            raise PayloadTooLarge(f"a webhook body may hold at most {MAX_WEBHOOK_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class WebhookAck(BaseModel):
    received: bool = True
    event_id: str
    type: str
    outcome: str  # applied | stale | ignored | unknown_invoice | duplicate
    invoice: str | None = None
    payment_status: str | None = None


class UnsyncedInvoice(BaseModel):
    id: int
    number: str | None
    customer: str
    period: str
    total_minor: int
    currency: str
    stripe_status: str | None
    stripe_error: str | None
    stripe_invoice_id: str | None
    attempts: int
    next_retry_at: datetime | None


class StripeStatus(BaseModel):
    enabled: bool
    counts: dict[
        str, int
    ]  # finalized invoices by stripe_status (not_synced, pending, retrying, synced, failed)
    unsynced: list[UnsyncedInvoice]


@router.post(
    "/v1/stripe/webhook",
    response_model=WebhookAck,
    responses={
        400: {"model": ErrorBody, "description": "Missing or invalid Stripe signature"},
        413: {"model": ErrorBody, "description": "Body too large"},
        503: {"model": ErrorBody, "description": "Webhooks are off (no signing secret configured)"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object", "description": "A Stripe event, as signed"}}},
        }
    },
)
def stripe_webhook(
    request: Request,
    body: Annotated[bytes, Depends(webhook_body)],
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> WebhookAck:
    """Stripe's events about pushed invoices, signed with `TASKMETER_STRIPE_WEBHOOK_SECRET`.

    A replayed event (same id) changes nothing and is answered 200 with `outcome: duplicate`.
    """
    if settings.stripe_webhook_secret is None:
        raise Unavailable("Stripe webhooks are off: TASKMETER_STRIPE_WEBHOOK_SECRET is not set")
    event = verify(
        body, request.headers.get("stripe-signature"), settings.stripe_webhook_secret.get_secret_value()
    )
    outcome = record_event(session, event, now=now)
    return WebhookAck(
        event_id=outcome.event_id, type=outcome.type, outcome=outcome.outcome,
        invoice=outcome.invoice, payment_status=outcome.payment_status,
    )  # fmt: skip


@router.get("/v1/stripe/status", response_model=StripeStatus, responses=responses())
def stripe_status(principal: ReadScope, session: SessionDep, settings: SettingsDep) -> StripeStatus:
    """The caller's finalized invoices by Stripe sync status, and each one not synced with its
    last error (`failed` ones wait for `taskmeter stripe sync --retry-failed`)."""
    status = sync_status(session, principal.tenant.id)
    return StripeStatus(enabled=settings.stripe_api_key is not None, **status)
