"""scheduler and Stripe: job guards and bookmarks, APScheduler's job store, Stripe sync state and
webhook events

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "job_locks",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
        sa.Column("acquired_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_locks")),
    )
    op.create_table(
        "job_bookmarks",
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_job_bookmarks_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("job", "tenant_id", name=op.f("pk_job_bookmarks")),
    )
    # APScheduler 3's SQLAlchemyJobStore table, exactly as the store would create it.
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.Unicode(191), nullable=False),
        sa.Column("next_run_time", sa.Float(25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apscheduler_jobs")),
    )
    op.create_index(op.f("ix_apscheduler_jobs_next_run_time"), "apscheduler_jobs", ["next_run_time"])
    op.create_table(
        "stripe_sync_state",
        sa.Column("invoice_id", BigId, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_retry_us", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_stripe_sync_state_invoice_id_invoices")
        ),
        sa.PrimaryKeyConstraint("invoice_id", name=op.f("pk_stripe_sync_state")),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("stripe_invoice_id", sa.String(64), nullable=True),
        sa.Column("invoice_id", BigId, nullable=True),
        sa.Column("payment_status", sa.String(32), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_stripe_events_invoice_id_invoices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    op.create_index("ix_stripe_events_stripe_invoice_id", "stripe_events", ["stripe_invoice_id"])


def downgrade() -> None:
    op.drop_index("ix_stripe_events_stripe_invoice_id", table_name="stripe_events")
    op.drop_table("stripe_events")
    op.drop_table("stripe_sync_state")
    op.drop_index(op.f("ix_apscheduler_jobs_next_run_time"), table_name="apscheduler_jobs")
    op.drop_table("apscheduler_jobs")
    op.drop_table("job_bookmarks")
    op.drop_table("job_locks")
