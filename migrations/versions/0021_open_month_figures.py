"""metering: what an open month reads beside the per customer-month figures: rollup_state.cost_edges
(the tenant's own edges of their cost buckets) and task_usage's partial indexes of the reopened and
the rejected tasks

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06

Edges: one just above each per-job price of the tenant's plans (`pricing.open_month.job_price_edges`),
so that the dashboard tells the tasks that cost more than their job price from the figures
(`metering.rollup.month_figures.set_edges`). Set for existing tenants by the upgrade, which
rewrites their figures with them; afterwards whenever a plan version is stored. Indexes: a
month's outcome counts (`pricing.open_month.reopened_and_rejected`) read those few tasks alone.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rollup_state", sa.Column("cost_edges", sa.Text(), nullable=True))
    op.create_index("ix_task_usage_tenant_reopened", "task_usage", ["tenant_id", "reopened_us"],
                    sqlite_where=sa.text("reopened_us IS NOT NULL"), postgresql_where=sa.text("reopened_us IS NOT NULL"))
    op.create_index("ix_task_usage_tenant_rejected", "task_usage", ["tenant_id", "ended_us"],
                    sqlite_where=sa.text("rejected > 0"), postgresql_where=sa.text("rejected > 0"))  # fmt: skip
    from metering.rollup.month_figures import set_edges
    from pricing.open_month import job_price_edges
    from pricing.plans import plan_from_definition

    connection = op.get_bind()
    now = datetime.now(UTC)
    for tenant_id, timezone in connection.execute(sa.text("SELECT id, timezone FROM tenants")).all():
        definitions = connection.execute(sa.text("SELECT definition FROM plan_versions WHERE tenant_id = :t"), {"t": tenant_id}).scalars()
        edges = job_price_edges(plan_from_definition(definition, None) for definition in definitions)
        if edges:
            set_edges(connection, tenant_id, timezone, edges, now=now)


def downgrade() -> None:
    op.drop_index("ix_task_usage_tenant_rejected", table_name="task_usage")
    op.drop_index("ix_task_usage_tenant_reopened", table_name="task_usage")
    with op.batch_alter_table("rollup_state", schema=None) as batch_op:
        batch_op.drop_column("cost_edges")
