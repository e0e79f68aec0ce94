"""Tables of the Stripe integration: sync attempts per invoice, and the webhook events received.

Our own invoice rows carry the Stripe ids and statuses (`pricing.tables`: the bookkeeping columns
of `invoices`, `invoice_lines.stripe_item_id`, `customers.stripe_customer_id`); these tables hold
what only the integration needs.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Index, Integer, String, Table, Text

from metering.core.tables import metadata
from pricing.tables import invoices

InvoiceId = BigInteger().with_variant(Integer(), "sqlite")

# One row per invoice that a sync has touched: how often it failed, and when to try again.
stripe_sync_state = Table(
    "stripe_sync_state",
    metadata,
    Column("invoice_id", InvoiceId, ForeignKey(invoices.c.id), primary_key=True),
    Column("attempts", Integer, nullable=False),  # failed runs since the last success
    Column("next_retry_us", BigInteger),  # after a transient failure: not before this (UTC, µs)
    Column("last_error", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Every webhook event once (Stripe delivers at least once): a replay finds its row and stops.
stripe_events = Table(
    "stripe_events",
    metadata,
    Column("id", String(255), primary_key=True),  # Stripe's evt_...
    Column("type", String(128), nullable=False),
    Column("created", BigInteger, nullable=False),  # Stripe's, Unix seconds: orders the events
    Column("stripe_invoice_id", String(64)),
    Column("invoice_id", InvoiceId, ForeignKey(invoices.c.id)),  # ours, when it names one of ours
    Column("payment_status", String(32)),  # what the event says, when it is about payment
    Column("outcome", String(16), nullable=False),  # applied | stale | ignored | unknown_invoice
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ix_stripe_events_stripe_invoice_id", "stripe_invoice_id"),
)
