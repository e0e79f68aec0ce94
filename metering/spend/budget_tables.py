"""Tables of spend control: budgets, their counters, alerts and the webhook outbox
(`metering.spend.budgets`, `metering.spend.counters`, `metering.spend.alerts`).

Counters are kept per (budget, period start) and written by ingestion in the transaction that
stores the events, or by a follower after it (deferred counting, `spend_watermarks`), so they
count each stored event once (never a duplicate or a replay).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from metering.core.tables import BigId, metadata

budgets = Table(
    "budgets",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("budget_id", String(128), primary_key=True),
    Column("definition", Text, nullable=False),  # the budget as JSON (metering.spend.budgets.Budget)
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# A tenant's budgets' generation, drawn anew (at random) by every change: a server process sees another's change
# with one primary-key read per batch and reloads its cached budgets.
budget_state = Table(
    "budget_state",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("generation", BigInteger, nullable=False),
    # The tenant has outcome rules (written by pricing.budget_billing): jobs count at settlement.
    Column("jobs_at_settlement", Boolean, nullable=False, server_default=false()),
)

# Deferred counting (`metering.spend.deferred`): every event of the tenant with seq <= counted_through
# is in the counters, and a follower counts the rest. No row: ingestion counts each batch itself
# (inline). The row is the tenant's counting mode, read by every process with the generation.
spend_watermarks = Table(
    "spend_watermarks",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("counted_through", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),  # the follower's last move
)

# How each customer's plan bills, reduced for the `billed` measure (metering.spend.budgets.BilledRule),
# written by pricing whenever plans or customers' plans change.
budget_billing = Table(
    "budget_billing",
    metadata,
    Column("tenant_id", Integer, primary_key=True),
    Column("customer", String(256), primary_key=True),
    Column("rule", Text, nullable=False),
)

budget_counters = Table(
    "budget_counters",
    metadata,
    Column("tenant_id", Integer, primary_key=True),
    Column("budget_id", String(128), primary_key=True),
    Column("period_start_us", BigInteger, primary_key=True),  # the period's first instant, UTC
    # Money: whole nano-units plus the rest in 1e-15 (exact, as the rollup's cost_nanos/cost_rem);
    # tokens and jobs: the count, rem 0.
    Column("used", BigInteger, nullable=False),
    Column("used_rem", BigInteger, nullable=False),
    Column("unpriced_events", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# The deciding terminal event of each task (the rollup's status rule), kept for the jobs measure:
# a later terminal event moves the job from the period (and scope) of the one it replaces.
budget_tasks = Table(
    "budget_tasks",
    metadata,
    Column("tenant_id", Integer, primary_key=True),
    Column("task", String(256), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("ended_us", BigInteger, nullable=False),
    Column("customer", String(256), nullable=False),
    Column("actor", String(256)),
    Column("agent", String(256)),
    Column("task_type", String(128)),
    sqlite_with_rowid=False,
)

budget_alerts = Table(
    "budget_alerts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("alert_id", String(64), nullable=False),  # stable: derived from the unique key
    Column("budget_id", String(128), nullable=False),
    Column("period_start_us", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),  # threshold | forecast
    Column("threshold", String(16), nullable=False),
    Column("used", String(48), nullable=False),
    Column("limit", String(48), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    UniqueConstraint(
        "tenant_id", "budget_id", "period_start_us", "threshold", "kind", name="uq_budget_alerts_key"
    ),
    Index("ix_budget_alerts_tenant_id_id", "tenant_id", "id"),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("url", String(2048), nullable=False),
    # The signing secret given to the tenant once, sealed (metering.core.secret_box, Fernet): the
    # sender opens it to sign; never logged, never stored in clear (migration 0017 sealed old rows).
    Column("secret", String(512), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("alert", BigInteger, ForeignKey("budget_alerts.id"), nullable=False),
    Column("webhook", Integer, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | failed (gave up)
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_us", BigInteger, nullable=False),
    Column("claimed_until_us", BigInteger, nullable=False),  # a sender's claim (row-level)
    Column("last_error", String(300)),
    Column("delivered_at", DateTime(timezone=True)),
    UniqueConstraint("alert", "webhook"),
    Index("ix_webhook_deliveries_status_next_attempt_us", "status", "next_attempt_us"),
    Index("ix_webhook_deliveries_tenant_id_id", "tenant_id", "id"),
)
