"""metering: spend_watermarks, how far a follower has counted a tenant's events into its budgets

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07

Deferred spend counting (`TASKMETER_SPEND_COUNTING=deferred`, `metering.spend.deferred`). No row
for a tenant means its events are counted at ingestion, as before: existing tenants start so.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spend_watermarks",
        sa.Column(
            "tenant_id", sa.Integer(), sa.ForeignKey("tenants.id", name="fk_spend_watermarks_tenant_id_tenants"), nullable=False
        ),
        sa.Column("counted_through", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_spend_watermarks"),
    )


def downgrade() -> None:
    # Events past a watermark would then never be counted: run an inline server first (its
    # follower catches each tenant up and drops its row).
    op.drop_table("spend_watermarks")
