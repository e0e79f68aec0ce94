"""prices: 1-hour cache writes on events and in the rollup, whole tenant prices, model aliases

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-06

`cache_write_1h_tokens` (a subset of `cache_write_tokens`, 0 for events stored before) is added
last to `events`, `quarantine` and the three rollup tables. `tenant_prices.spec` holds a price's
versions, context tiers and 1-hour rate as JSON; `tenant_model_aliases` the config's `models:`;
`invoice_lines.adjustment_reason` why an adjustment line was made (`late_usage`, `repricing`, ...).
Nothing is re-priced by the upgrade: stored prices read back as before (no spec) and every
stored count of 1-hour writes is 0, so the rollup's price version stays. The first config load
with a `prices:` section stores each price's spec (the version then changes once, and the next
rollup rebuilds that tenant), as does any change of prices or aliases.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TOKEN_TABLES = ("events", "quarantine", "task_usage", "task_usage_detail", "usage_daily")


def upgrade() -> None:
    for table in TOKEN_TABLES:
        op.add_column(
            table, sa.Column("cache_write_1h_tokens", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.add_column("tenant_prices", sa.Column("spec", sa.Text(), nullable=True))
    op.add_column("invoice_lines", sa.Column("adjustment_reason", sa.String(32), nullable=True))
    op.create_table(
        "tenant_model_aliases",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("match", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_model_aliases_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "position", name=op.f("pk_tenant_model_aliases")),
    )


def downgrade() -> None:
    op.drop_table("tenant_model_aliases")
    with op.batch_alter_table("invoice_lines") as batch:
        batch.drop_column("adjustment_reason")
    with op.batch_alter_table("tenant_prices") as batch:
        batch.drop_column("spec")
    for table in reversed(TOKEN_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("cache_write_1h_tokens")
