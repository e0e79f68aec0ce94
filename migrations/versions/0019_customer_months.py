"""metering: customer_months, the per customer-month task figures the rollup keeps current

Revision ID: 0019
Revises: 0015
Create Date: 2026-12-06

Per customer, tenant-local month, task type, status and cost bucket: tasks, usage events, tokens
and whole-task provider cost (`metering.rollup.month_figures`). Filled for existing tenants by the
upgrade from `task_usage` (`metering.rollup.month_figures.rebuild_from_task_usage`, per tenant).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer_months",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("customer", sa.String(length=256), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("task_type", sa.String(length=128), server_default="", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("tasks", sa.BigInteger(), nullable=False),
        sa.Column("usage_events", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "customer", "month", "task_type", "status", "bucket", name=op.f("pk_customer_months")),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_customer_months_tenant_month", "customer_months", ["tenant_id", "month"])
    # The figures of the tasks already rolled up (readers take an empty table for no tasks).
    from metering.rollup.month_figures import COST_EDGES_NANOS, rebuild_from_task_usage

    connection = op.get_bind()
    for tenant_id, timezone in connection.execute(sa.text("SELECT id, timezone FROM tenants")).all():
        # The dashboard's edges: a tenant's own come with rollup_state.cost_edges (0020).
        rebuild_from_task_usage(connection, tenant_id, timezone, edges=COST_EDGES_NANOS)


def downgrade() -> None:
    op.drop_index("ix_customer_months_tenant_month", table_name="customer_months")
    op.drop_table("customer_months")
