"""metering: spend_deltas, counter moves stored with their batch and added to the counters later

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06

Ingestion in a process that runs a folder (a server's spend follower, `taskmeter ingest`) stores a
batch's budget-counter moves as one row in the batch's transaction; the folder adds them to
`budget_counters` and deletes the row (`metering.spend.counters.fold`). Empty at creation.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spend_deltas",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column(
            "tenant_id", sa.Integer(), sa.ForeignKey("tenants.id", name="fk_spend_deltas_tenant_id_tenants"), nullable=False
        ),
        sa.Column("moves", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_spend_deltas"),
    )
    op.create_index("ix_spend_deltas_tenant_id", "spend_deltas", ["tenant_id"])


def downgrade() -> None:
    # Moves not folded yet would be lost: stop the servers (their followers fold at stop) first.
    op.drop_index("ix_spend_deltas_tenant_id", table_name="spend_deltas")
    op.drop_table("spend_deltas")
