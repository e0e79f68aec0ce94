"""outcomes: what settlement reads in task_usage, the tenant's outcome rule versions, and the
rule versions an invoice's tasks were settled under, disputes (and the task and dispute a credit
note is for), and the API key that sent each event (evidence)

Revision ID: 0013
Revises: 0009
Create Date: 2026-12-06

The new task_usage columns are filled by the rollup from events of the new types
(task.reopened, task.accepted, task.rejected) and task.completed. Rows rolled up before this
migration had no such events but may have completions: `completed_us` is set to the end time of
the completed ones, which is what a rollup from scratch would give them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_usage") as batch:
        batch.add_column(sa.Column("completed_us", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("accepted_us", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("reopened_us", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("reopened", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("rejected", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute("UPDATE task_usage SET completed_us = ended_us WHERE status = 'completed'")
    op.create_table(
        "outcome_rule_versions",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=True),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_outcome_rule_versions_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outcome_rule_versions")),
        sa.UniqueConstraint("tenant_id", "version", name=op.f("uq_outcome_rule_versions_tenant_id_version")),
    )
    op.add_column("invoices", sa.Column("outcome_versions", sa.Text(), nullable=True))
    op.add_column("events", sa.Column("key_id", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("customer", sa.String(256), nullable=True))
    op.add_column("credit_notes", sa.Column("task", sa.String(256), nullable=True))
    op.add_column("credit_notes", sa.Column("dispute_id", sa.BigInteger(), nullable=True))
    op.create_table(
        "disputes",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("customer", sa.String(256), nullable=False),
        sa.Column("task", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_by", sa.String(128), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(128), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("resolve_key", sa.String(200), nullable=True),
        sa.Column("invoice_id", sa.BigInteger(), nullable=True),
        sa.Column("credit_note_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("status IN ('open', 'accepted', 'rejected')", name=op.f("ck_disputes_status")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_disputes_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disputes")),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name=op.f("uq_disputes_tenant_id_idempotency_key")
        ),
    )
    op.create_index("ix_disputes_tenant_id_task", "disputes", ["tenant_id", "task"])


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("customer")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("key_id")
    op.drop_index("ix_disputes_tenant_id_task", table_name="disputes")
    op.drop_table("disputes")
    with op.batch_alter_table("credit_notes") as batch:
        batch.drop_column("dispute_id")
        batch.drop_column("task")
    op.drop_column("invoices", "outcome_versions")
    op.drop_table("outcome_rule_versions")
    with op.batch_alter_table("task_usage") as batch:
        for name in ("rejected", "reopened", "reopened_us", "accepted_us", "completed_us"):
            batch.drop_column(name)
