"""SQLAlchemy tables of the pricing domain: plans and their versions, customers and their plan
history, closed billing periods, invoices, invoice lines and credit notes.

Money is integer minor units of the invoice's currency (`*_minor`: cents for USD); quantities and
unit prices are decimal text, exactly as rated. A finalized invoice and its lines never change:
besides `pricing.invoices` writing them only while draft, the migration installs triggers that
refuse any other change (only the Stripe bookkeeping columns, and finalized → void, may move).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from metering.core.tables import BigId, metadata

INVOICE_STATUSES = ("draft", "finalized", "void")

plans = Table(
    "plans",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("plan_id", String(200), primary_key=True),
    Column("type", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Append-only. A plan's terms on a day are those of the newest version (highest `version`) among
# the versions with the latest `effective_from` on or before that day; NULL means since always.
plan_versions = Table(
    "plan_versions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, nullable=False),
    Column("plan_id", String(200), nullable=False),
    Column("version", Integer, nullable=False),  # 1, 2, ... per plan
    Column("effective_from", Date),  # tenant-local; NULL: since always
    Column("definition", Text, nullable=False),  # pricing.plans.plan_definition
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["tenant_id", "plan_id"], ["plans.tenant_id", "plans.plan_id"]),
    UniqueConstraint("tenant_id", "plan_id", "version"),
)

# Append-only, like plan_versions: the tenant's outcome rules (`pricing.outcomes`), the whole
# `outcomes` section of the config file per version. In force on a day: the newest version among
# those with the latest `effective_from` on or before it; NULL means since always.
outcome_rule_versions = Table(
    "outcome_rule_versions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("version", Integer, nullable=False),  # 1, 2, ... per tenant
    Column("effective_from", Date),  # tenant-local; NULL: since always
    Column("definition", Text, nullable=False),  # JSON: the rules, as pricing.outcomes.rules_definition
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant_id", "version"),
)

customers = Table(
    "customers",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("customer", String(256), primary_key=True),  # the `customer` of events and invoices
    Column("plan", String(200), nullable=False),  # the latest assignment's
    Column("compare_with", Text, nullable=False),  # JSON list of plan ids
    Column("stripe_customer_id", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Append-only history of plan assignments. A month is billed under the assignment in force on
# its last day (the newest `id` among the latest `effective_from`); NULL means since always.
customer_plans = Table(
    "customer_plans",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, nullable=False),
    Column("customer", String(256), nullable=False),
    Column("plan", String(200), nullable=False),
    Column("compare_with", Text, nullable=False),
    Column("effective_from", Date),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["tenant_id", "customer"], ["customers.tenant_id", "customers.customer"]),
    Index("ix_customer_plans_tenant_customer", "tenant_id", "customer"),
)

# One row per closed tenant-local month: closing twice finds it and does nothing. What the close
# saw is kept, so that late usage re-rates the month exactly as it was billed.
billing_periods = Table(
    "billing_periods",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("period", String(7), primary_key=True),  # YYYY-MM
    Column("closed_at", DateTime(timezone=True), nullable=False),
    Column("watermark_seq", BigInteger, nullable=False),  # the rollup's, when closed
    Column("price_version", String(64), nullable=False),  # the rollup's provider prices
    Column("plans_as_of", BigInteger, nullable=False),  # newest plan_versions.id then
    Column("assignments_as_of", BigInteger, nullable=False),  # newest customer_plans.id then
    # The rollup state up to which late usage of this month has been billed.
    Column("reconciled_seq", BigInteger, nullable=False),
    Column("reconciled_price_version", String(64), nullable=False),
)

invoices = Table(
    "invoices",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("customer", String(256), nullable=False),
    Column("period", String(7), nullable=False),  # YYYY-MM, tenant-local
    Column("number", String(64), unique=True),  # INV-<tenant>-<yyyymm>-<seq>; NULL while draft
    Column("status", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("total_minor", BigInteger, nullable=False),  # the sum of the lines' amount_minor
    Column("plan", String(200), nullable=False),  # the plan the month was billed under
    Column("plan_versions", Text, nullable=False),  # JSON: {plan id: [version numbers used]}
    Column("price_version", String(64), nullable=False),  # provider prices of the usage rated
    Column("outcome_versions", Text),  # JSON: [outcome rule versions that settled its tasks]; NULL: none
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finalized_at", DateTime(timezone=True)),
    # Stripe bookkeeping (pricing.stripe_sync): the only columns that change once finalized.
    Column("stripe_invoice_id", String(64)),
    Column("stripe_status", String(32)),
    Column("stripe_error", Text),
    Column("payment_status", String(32)),
    UniqueConstraint("tenant_id", "customer", "period"),
    CheckConstraint("status IN ('draft', 'finalized', 'void')", name="status"),
    Index("ix_invoices_tenant_period", "tenant_id", "period"),
)

invoice_lines = Table(
    "invoice_lines",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("invoice_id", BigId, ForeignKey("invoices.id"), nullable=False),
    Column("line_no", Integer, nullable=False),  # 1, 2, ... within the invoice
    Column("kind", String(32), nullable=False),  # pricing.rating.LineKind
    Column("description", Text, nullable=False),
    Column("quantity", String(60), nullable=False),  # decimal text
    Column("unit_price", String(60), nullable=False),  # decimal text
    Column("amount_exact", String(80), nullable=False),  # decimal text, before the one rounding
    Column("amount_minor", BigInteger, nullable=False),  # rounded once (ROUND_HALF_UP)
    Column("plan", String(200)),
    Column("plan_version", Integer),
    Column("adjusts_period", String(7)),  # late usage: the closed month this line corrects
    Column("adjustment_reason", String(32)),  # why an adjustment line: pricing.assembly.AdjustmentReason
    Column("stripe_item_id", String(64)),
    UniqueConstraint("invoice_id", "line_no"),
)

credit_notes = Table(
    "credit_notes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("invoice_id", BigId, ForeignKey("invoices.id"), nullable=False, index=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("stripe_credit_note_id", String(64)),
    # A credit note for an accepted dispute (pricing.disputes): the task and the dispute it is for.
    Column("task", String(256)),
    Column("dispute_id", BigInteger),
)

DISPUTE_STATUSES = ("open", "accepted", "rejected")

# Disputes of billed (or settling) tasks (pricing.disputes). An accepted dispute either credits the
# finalized invoice that billed the task (`invoice_id`, `credit_note_id`), or, when the task's
# month is still open, keeps the task off every invoice (`invoice_id` NULL).
disputes = Table(
    "disputes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("customer", String(256), nullable=False),
    Column("task", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("note", Text),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("opened_by", String(128), nullable=False),  # "key:<prefix>" or "cli:<user>"
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolved_by", String(128)),
    Column("idempotency_key", String(200)),  # the opening request's Idempotency-Key header
    Column("resolve_key", String(200)),  # the resolving request's
    Column("invoice_id", BigInteger),
    Column("credit_note_id", BigInteger),
    CheckConstraint("status IN ('open', 'accepted', 'rejected')", name="status"),
    UniqueConstraint("tenant_id", "idempotency_key"),
    Index("ix_disputes_tenant_id_task", "tenant_id", "task"),
)
