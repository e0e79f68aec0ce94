"""metering: task_usage_buckets without cost columns

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07

A bucket's cost is the price of its sums (`metering.costs.prices.price_sums`) and its detail row
(`task_usage_detail`) holds the sum of its buckets' costs: the buckets' own cost columns only
repeated them, and a re-pricing rewrote every changed bucket to keep them (446,431 rows of
1,169,213 for one model's price at 12M events). A re-pricing now takes the buckets' old costs
from the old prices, or from their detail rows when those are not known
(`metering.rollup.reprice`). The rows stay as they are otherwise: nothing is rebuilt.

The downgrade adds the columns back as zeros and drops the tenants' bucket schemes
(`rollup_state.price_buckets`): the next rollup of each tenant rebuilds it from its events, which
writes the buckets' costs again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

COST = ("cost_nanos", "cost_rem", "unpriced_events")


def upgrade() -> None:
    # SQLite copies the table without the columns: as the one-B-tree table it is.
    with op.batch_alter_table("task_usage_buckets", schema=None, table_kwargs={"sqlite_with_rowid": False}) as batch_op:
        for name in COST:
            batch_op.drop_column(name)


def downgrade() -> None:
    with op.batch_alter_table("task_usage_buckets", schema=None, table_kwargs={"sqlite_with_rowid": False}) as batch_op:
        for name in COST:
            batch_op.add_column(sa.Column(name, sa.BigInteger(), server_default="0", nullable=False))
    op.execute(sa.text("UPDATE rollup_state SET price_buckets = NULL"))
