"""metering: task_usage_buckets, the token sums a price change re-prices from; rollup_state's
price buckets and prices

Revision ID: 0018
Revises: 0015
Create Date: 2026-12-06

Existing tenants have no buckets (`rollup_state.price_buckets` NULL): the first rollup after the
upgrade rebuilds each tenant once from its events, which writes them (and carries every summed
cost: `cost_rem` < 10**6). From then on a price change re-prices from the buckets
(`metering.rollup.reprice`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

USAGE = ("usage_events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def upgrade() -> None:
    op.add_column("rollup_state", sa.Column("price_buckets", sa.Text(), nullable=True))
    op.add_column("rollup_state", sa.Column("price_settings", sa.Text(), nullable=True))
    op.create_table(
        "task_usage_buckets",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("task", sa.String(length=256), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("customer", sa.String(length=256), nullable=False),
        sa.Column("actor", sa.String(length=256), server_default="", nullable=False),
        sa.Column("agent", sa.String(length=256), server_default="", nullable=False),
        sa.Column("utc_shift", sa.SmallInteger(), nullable=False),
        sa.Column("period", sa.SmallInteger(), nullable=False),
        sa.Column("band", sa.SmallInteger(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in USAGE),
        sa.Column("cache_write_1h_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("cost_rem", sa.BigInteger(), nullable=False),
        sa.Column("unpriced_events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant_id", "provider", "model", "task", "day", "customer", "actor", "agent", "utc_shift", "period", "band",
            name=op.f("pk_task_usage_buckets"),
        ),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("task_usage_buckets")
    with op.batch_alter_table("rollup_state") as batch:
        batch.drop_column("price_settings")
        batch.drop_column("price_buckets")
