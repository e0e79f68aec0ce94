"""budgets: budgets, their counters at ingestion, alerts, webhooks and the delivery outbox

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column(
            "tenant_id",
            sa.Integer(),
            sa.ForeignKey("tenants.id", name="fk_budgets_tenant_id_tenants"),
            nullable=False,
        ),
        sa.Column("budget_id", sa.String(128), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "budget_id", name="pk_budgets"),
    )
    op.create_table(
        "budget_state",
        sa.Column(
            "tenant_id",
            sa.Integer(),
            sa.ForeignKey("tenants.id", name="fk_budget_state_tenant_id_tenants"),
            nullable=False,
        ),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_budget_state"),
    )
    op.create_table(
        "budget_billing",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("customer", sa.String(256), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "customer", name="pk_budget_billing"),
    )
    op.create_table(
        "budget_counters",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("budget_id", sa.String(128), nullable=False),
        sa.Column("period_start_us", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("used_rem", sa.BigInteger(), nullable=False),
        sa.Column("unpriced_events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "budget_id", "period_start_us", name="pk_budget_counters"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "budget_tasks",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ended_us", sa.BigInteger(), nullable=False),
        sa.Column("customer", sa.String(256), nullable=False),
        sa.Column("actor", sa.String(256), nullable=True),
        sa.Column("agent", sa.String(256), nullable=True),
        sa.Column("task_type", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "task", name="pk_budget_tasks"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "budget_alerts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Integer(), sa.ForeignKey("tenants.id", name="fk_budget_alerts_tenant_id_tenants"), nullable=False),
        sa.Column("alert_id", sa.String(64), nullable=False),
        sa.Column("budget_id", sa.String(128), nullable=False),
        sa.Column("period_start_us", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("threshold", sa.String(16), nullable=False),
        sa.Column("used", sa.String(48), nullable=False),
        sa.Column("limit", sa.String(48), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_budget_alerts"),
        sa.UniqueConstraint(
            "tenant_id", "budget_id", "period_start_us", "threshold", "kind",
            name="uq_budget_alerts_key",
        ),
    )  # fmt: skip
    op.create_index("ix_budget_alerts_tenant_id_id", "budget_alerts", ["tenant_id", "id"])
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "tenant_id",
            sa.Integer(),
            sa.ForeignKey("tenants.id", name="fk_webhooks_tenant_id_tenants"),
            nullable=False,
        ),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhooks"),
    )
    op.create_index("ix_webhooks_tenant_id", "webhooks", ["tenant_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Integer(), sa.ForeignKey("tenants.id", name="fk_webhook_deliveries_tenant_id_tenants"), nullable=False),
        sa.Column("alert", sa.BigInteger(), sa.ForeignKey("budget_alerts.id", name="fk_webhook_deliveries_alert_budget_alerts"), nullable=False),
        sa.Column(
            "webhook", sa.Integer(),
            sa.ForeignKey("webhooks.id", name="fk_webhook_deliveries_webhook_webhooks", ondelete="CASCADE"), nullable=False,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_us", sa.BigInteger(), nullable=False),
        sa.Column("claimed_until_us", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.UniqueConstraint("alert", "webhook", name="uq_webhook_deliveries_alert_webhook"),
    )  # fmt: skip
    op.create_index(
        "ix_webhook_deliveries_status_next_attempt_us", "webhook_deliveries", ["status", "next_attempt_us"]
    )
    op.create_index("ix_webhook_deliveries_tenant_id_id", "webhook_deliveries", ["tenant_id", "id"])


def downgrade() -> None:
    for name in (
        "webhook_deliveries",
        "webhooks",
        "budget_alerts",
        "budget_tasks",
        "budget_counters",
        "budget_billing",
        "budget_state",
        "budgets",
    ):
        op.drop_table(name)
