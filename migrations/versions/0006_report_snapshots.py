"""reports: the dashboard's month snapshots

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "report_snapshots",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("format", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(300), nullable=False),
        sa.Column("watermark_seq", sa.BigInteger(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("revenue_minor", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_report_snapshots_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "period", name=op.f("pk_report_snapshots")),
    )


def downgrade() -> None:
    op.drop_table("report_snapshots")
