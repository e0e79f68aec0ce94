"""metering: archived_months, the months whose events were dropped after a verified archive copy

Revision ID: 0015
Revises: 0009
Create Date: 2026-12-06

`taskmeter archive --drop` records each month it deleted from `events` (where its Parquet copy
is, the highest seq deleted, the copy's rows and checksum), so that a rollup that would rebuild
the tenant from its first event knows those events are not in the database any more.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "archived_months",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("max_seq", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("dropped_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_archived_months_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "month", name=op.f("pk_archived_months")),
    )


def downgrade() -> None:
    op.drop_table("archived_months")
