"""metering: customer_months.too_large, a customer-month figure whose sum passes int64

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06

As `usage_months.too_large` (`metering.rollup.kept_sums`): a key whose sums pass int64 is kept
with its sums zero and its tasks counted, and its month read from its tasks
(`pricing.open_month.usable`, through a partial index of the few such keys). Before it, such a sum
made the rollup fail on PostgreSQL ("bigint out of range") and wrapped around, or turned REAL, on
SQLite; the upgrade rewrites every tenant's figures from `task_usage`
(`metering.rollup.month_figures.rebuild_from_task_usage`), so that no such sum is left.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("customer_months", sa.Column("too_large", sa.Integer(), server_default="0", nullable=False))
    op.create_index("ix_customer_months_too_large", "customer_months", ["tenant_id", "month"],
                    sqlite_where=sa.text("too_large > 0"), postgresql_where=sa.text("too_large > 0"))  # fmt: skip
    from metering.rollup.month_figures import rebuild_from_task_usage

    connection = op.get_bind()
    for tenant_id, timezone in connection.execute(sa.text("SELECT id, timezone FROM tenants")).all():
        rebuild_from_task_usage(connection, tenant_id, timezone)


def downgrade() -> None:
    op.drop_index("ix_customer_months_too_large", table_name="customer_months")
    # SQLite copies the table without the column: as the one-B-tree table it was.
    with op.batch_alter_table("customer_months", schema=None, table_kwargs={"sqlite_with_rowid": False}) as batch_op:
        batch_op.drop_column("too_large")
