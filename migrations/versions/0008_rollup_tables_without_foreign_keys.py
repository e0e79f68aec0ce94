"""metering: the rollup tables drop their foreign key to tenants

They hold derived rows that only the rollup writes, for a tenant it has just read from
`tenants` (the events they come from keep their foreign key). On PostgreSQL the per-row check
took ~17 s of a 12M-event rebuild's ~60 s of writing (4.9 M rows).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("task_usage", "task_usage_detail", "usage_daily")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(f"fk_{table}_tenant_id_tenants", type_="foreignkey")


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_foreign_key(f"fk_{table}_tenant_id_tenants", "tenants", ["tenant_id"], ["id"])
