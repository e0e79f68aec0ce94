"""ingest log: the loader's verdicts (duplicate, conflict) and its quarantine of messages it
could not store

Revision ID: 0014
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "load_verdicts",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("content_hash", sa.String(32), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_load_verdicts_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "event_id", name=op.f("pk_load_verdicts")),
    )
    op.create_table(
        "log_quarantine",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("event_id", sa.String(128), nullable=True),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_log_quarantine")),
    )
    op.create_index(
        "ix_log_quarantine_tenant_id_event_id", "log_quarantine", ["tenant_id", "event_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_log_quarantine_tenant_id_event_id", table_name="log_quarantine")
    op.drop_table("log_quarantine")
    op.drop_table("load_verdicts")
