"""metering: attribution, the actor and agent of events, and usage kept per actor and agent

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

`events` and `quarantine` get two nullable columns, `actor` and `agent`. The rollup's usage
tables (`task_usage_detail`, `usage_daily`) get them as the last columns of their primary key,
'' where the events gave none. Every event stored before this migration has neither, so every
existing rollup row is exactly the '' row of its key: nothing is rebuilt, no figure changes.

PostgreSQL adds the columns with a constant default (no table rewrite) and rebuilds the primary
key. SQLite cannot change a primary key in place, nor keep WITHOUT ROWID through alembic's batch
copy: the two tables are created again under a new name, filled, and swapped in.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

USAGE = (
    "usage_events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "cost_nanos", "cost_rem", "unpriced_events",
)  # fmt: skip
KEYS = {
    "task_usage_detail": (
        ("task", sa.String(256)), ("day", sa.Date()), ("provider", sa.String(64)), ("model", sa.String(128)),
        ("customer", sa.String(256)),
    ),
    "usage_daily": (("customer", sa.String(256)), ("day", sa.Date()), ("provider", sa.String(64)), ("model", sa.String(128))),
}  # fmt: skip
INDEXES = {"task_usage_detail": "ix_task_usage_detail_tenant_day", "usage_daily": "ix_usage_daily_tenant_day"}
ATTRIBUTION = ("actor", "agent")


def upgrade() -> None:
    for table in ("events", "quarantine"):
        for name in ATTRIBUTION:
            op.add_column(table, sa.Column(name, sa.String(256), nullable=True))
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in KEYS:
        if sqlite:
            _recreate_on_sqlite(table, with_attribution=True)
        else:
            for name in ATTRIBUTION:
                op.add_column(table, sa.Column(name, sa.String(256), nullable=False, server_default=""))
            op.drop_constraint(f"pk_{table}", table, type_="primary")
            op.create_primary_key(
                f"pk_{table}", table, ["tenant_id", *(name for name, _ in KEYS[table]), *ATTRIBUTION]
            )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in KEYS:
        if sqlite:
            _recreate_on_sqlite(table, with_attribution=False)
        else:
            # Rows that differ only by actor and agent become one row of their key.
            _merge_attribution_away(table)
            op.drop_constraint(f"pk_{table}", table, type_="primary")
            for name in ATTRIBUTION:
                op.drop_column(table, name)
            op.create_primary_key(f"pk_{table}", table, ["tenant_id", *(name for name, _ in KEYS[table])])
    for table in ("events", "quarantine"):
        with op.batch_alter_table(table) as batch:
            for name in ATTRIBUTION:
                batch.drop_column(name)


def _definition(name: str, *, with_attribution: bool) -> sa.Table:
    keys = [sa.Column(key, kind, primary_key=True) for key, kind in KEYS[name]]
    if with_attribution:
        keys += [sa.Column(key, sa.String(256), primary_key=True, server_default="") for key in ATTRIBUTION]
    return sa.Table(
        f"{name}__0010",
        sa.MetaData(),
        sa.Column("tenant_id", sa.Integer(), primary_key=True),
        *keys,
        *(sa.Column(measure, sa.BigInteger(), nullable=False) for measure in USAGE),
        sa.PrimaryKeyConstraint("tenant_id", *(column.name for column in keys), name=f"pk_{name}"),
        sqlite_with_rowid=False,
    )


def _recreate_on_sqlite(name: str, *, with_attribution: bool) -> None:
    bind = op.get_bind()
    new = _definition(name, with_attribution=with_attribution)
    new.create(bind)
    keys = ["tenant_id", *(key for key, _ in KEYS[name])]
    source = sa.table(name, *(sa.column(column) for column in (*keys, *ATTRIBUTION, *USAGE)))
    if with_attribution:
        rows = sa.select(
            *(source.c[key] for key in keys), sa.literal(""), sa.literal(""), *(source.c[m] for m in USAGE)
        )
        bind.execute(sa.insert(new).from_select([*keys, *ATTRIBUTION, *USAGE], rows))
    else:
        sums = [sa.func.sum(source.c[m]) for m in USAGE]
        rows = sa.select(*(source.c[key] for key in keys), *sums).group_by(*(source.c[key] for key in keys))
        bind.execute(sa.insert(new).from_select([*keys, *USAGE], rows))
    op.drop_table(name)
    op.rename_table(new.name, name)
    op.create_index(INDEXES[name], name, ["tenant_id", "day"], unique=False)


def _merge_attribution_away(name: str) -> None:
    """PostgreSQL: each key's rows with an actor or agent are added into its '' row, then deleted."""
    from sqlalchemy.dialects import postgresql

    keys = ["tenant_id", *(key for key, _ in KEYS[name])]
    table = sa.table(name, *(sa.column(column) for column in (*keys, *ATTRIBUTION, *USAGE)))
    attributed = sa.or_(table.c.actor != "", table.c.agent != "")
    rows = (
        sa.select(
            *(table.c[key] for key in keys),
            sa.literal(""),
            sa.literal(""),
            *(sa.func.sum(table.c[m]) for m in USAGE),
        )
        .where(attributed)
        .group_by(*(table.c[key] for key in keys))
    )
    merge = postgresql.insert(table).from_select([*keys, *ATTRIBUTION, *USAGE], rows)
    merge = merge.on_conflict_do_update(
        index_elements=[*keys, *ATTRIBUTION], set_={m: table.c[m] + merge.excluded[m] for m in USAGE}
    )
    bind = op.get_bind()
    bind.execute(merge)
    bind.execute(sa.delete(table).where(attributed))
