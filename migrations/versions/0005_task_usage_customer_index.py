"""Indexes for reads that must not grow with history: a tenant's events past its watermark,
and a customer's tasks by end time (the running month's outcome counts).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_tenant_seq", "events", ["tenant_id", "seq"], unique=False)
    with op.batch_alter_table("task_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_task_usage_tenant_customer")
        batch_op.create_index("ix_task_usage_tenant_customer_ended", ["tenant_id", "customer", "ended_us"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_events_tenant_seq", table_name="events")
    with op.batch_alter_table("task_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_task_usage_tenant_customer_ended")
        batch_op.create_index("ix_task_usage_tenant_customer", ["tenant_id", "customer"], unique=False)
