"""metering: usage_months, the per customer-month token usage the rollup keeps current

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06

`usage_daily` summed per customer, tenant-local month, provider, model, actor and agent, with
each daily row's cost settled to nanos and its unpriced tokens (`metering.rollup.usage_months`):
a month's usage reads it instead of every day of the month. Filled for existing tenants by the
upgrade from `usage_daily` (`metering.rollup.usage_months.rebuild_from_usage_daily`, per tenant).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

MEASURES = ("days", "usage_events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
            "reasoning_tokens", "cost_nanos", "cost_rem", "unpriced_events", "provider_cost_nanos", "unpriced_tokens")  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "usage_months",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("customer", sa.String(length=256), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("actor", sa.String(length=256), server_default="", nullable=False),
        sa.Column("agent", sa.String(length=256), server_default="", nullable=False),
        *[sa.Column(name, sa.BigInteger(), nullable=False) for name in MEASURES],
        sa.Column("too_large", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "month", "customer", "provider", "model", "actor", "agent", name=op.f("pk_usage_months")),
        sqlite_with_rowid=False,
    )
    # The sums of the days already rolled up (readers take an empty table for no usage).
    from metering.rollup.usage_months import rebuild_from_usage_daily

    connection = op.get_bind()
    for (tenant_id,) in connection.execute(sa.text("SELECT id FROM tenants")).all():
        rebuild_from_usage_daily(connection, tenant_id)


def downgrade() -> None:
    op.drop_table("usage_months")
