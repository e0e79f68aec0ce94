"""rollup tables

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollup_state",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("watermark_seq", sa.BigInteger(), nullable=False),
        sa.Column("price_version", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_rollup_state_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_rollup_state")),
    )
    op.create_table(
        "task_usage",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=256), nullable=False),
        sa.Column("customer", sa.String(length=256), nullable=False),
        sa.Column("customer_us", sa.BigInteger(), nullable=False),
        sa.Column("customer_seq", sa.BigInteger(), nullable=False),
        sa.Column("task_type", sa.String(length=128), nullable=True),
        sa.Column("task_type_us", sa.BigInteger(), nullable=True),
        sa.Column("task_type_seq", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ended_us", sa.BigInteger(), nullable=True),
        sa.Column("status_seq", sa.BigInteger(), nullable=True),
        sa.Column("started_us", sa.BigInteger(), nullable=True),
        sa.Column("first_event_us", sa.BigInteger(), nullable=False),
        sa.Column("last_event_us", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("usage_events", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("cost_rem", sa.BigInteger(), nullable=False),
        sa.Column("unpriced_events", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_task_usage_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("tenant_id", "task", name=op.f("pk_task_usage")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("task_usage", schema=None) as batch_op:
        batch_op.create_index("ix_task_usage_tenant_customer", ["tenant_id", "customer"], unique=False)
        batch_op.create_index("ix_task_usage_tenant_ended", ["tenant_id", "ended_us"], unique=False)

    op.create_table(
        "task_usage_detail",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=256), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("customer", sa.String(length=256), nullable=False),
        sa.Column("usage_events", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("cost_rem", sa.BigInteger(), nullable=False),
        sa.Column("unpriced_events", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_task_usage_detail_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "task", "day", "provider", "model", "customer", name=op.f("pk_task_usage_detail")
        ),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("task_usage_detail", schema=None) as batch_op:
        batch_op.create_index("ix_task_usage_detail_tenant_day", ["tenant_id", "day"], unique=False)

    op.create_table(
        "tenant_prices",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("input", sa.String(length=40), nullable=False),
        sa.Column("output", sa.String(length=40), nullable=False),
        sa.Column("cache_read", sa.String(length=40), nullable=True),
        sa.Column("cache_write", sa.String(length=40), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_prices_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "provider", "model", name=op.f("pk_tenant_prices")),
    )
    op.create_table(
        "usage_daily",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("customer", sa.String(length=256), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("usage_events", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("cost_rem", sa.BigInteger(), nullable=False),
        sa.Column("unpriced_events", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_usage_daily_tenant_id_tenants")),
        sa.PrimaryKeyConstraint(
            "tenant_id", "customer", "day", "provider", "model", name=op.f("pk_usage_daily")
        ),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("usage_daily", schema=None) as batch_op:
        batch_op.create_index("ix_usage_daily_tenant_day", ["tenant_id", "day"], unique=False)



def downgrade() -> None:
    with op.batch_alter_table("usage_daily", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_daily_tenant_day")

    op.drop_table("usage_daily")
    op.drop_table("tenant_prices")
    with op.batch_alter_table("task_usage_detail", schema=None) as batch_op:
        batch_op.drop_index("ix_task_usage_detail_tenant_day")

    op.drop_table("task_usage_detail")
    with op.batch_alter_table("task_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_task_usage_tenant_ended")
        batch_op.drop_index("ix_task_usage_tenant_customer")

    op.drop_table("task_usage")
    op.drop_table("rollup_state")
