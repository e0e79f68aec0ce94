"""reliability: the quarantine of events the rollup cannot process, and the sweep of those stored
before event times had bounds

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

Events outside the span every layer can represent (1970-01-02T00:00:00Z to 2262-01-01T00:00:00Z,
`metering.events.schemas`) stop a tenant's rollup, close or reports: they are moved to the quarantine
here, and the rollup of each tenant that had one is rebuilt on its next run (its price version
is cleared, its rollup rows deleted), so that what they left in the rollup tables goes too.

On SQLite, `events.seq` becomes AUTOINCREMENT (the table is copied once): moving the newest events
aside must not let SQLite hand their seqs to the next events, which would then fall at or below a
watermark and never be rolled up. PostgreSQL's sequence never hands a number out twice.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

REPRESENTABLE_FROM_US = 86_400_000_000  # 1970-01-02T00:00:00Z
REPRESENTABLE_UNTIL_US = 9_214_646_400_000_000  # 2262-01-01T00:00:00Z
REASON = "time outside 1970-01-02T00:00:00Z to 2262-01-01T00:00:00Z, the span every layer can represent"
COLUMNS = (
    "tenant_id", "seq", "event_id", "type", "time_us", "customer", "task", "task_type", "provider", "model",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "metadata", "content_hash", "ingested_us",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("customer", sa.String(256), nullable=False),
        sa.Column("task", sa.String(256), nullable=False),
        sa.Column("task_type", sa.String(128), nullable=True),
        sa.Column("provider", sa.String(64), nullable=True),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(32), nullable=False),
        sa.Column("ingested_us", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(300), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_quarantine_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantine")),
    )
    op.create_index("ix_quarantine_tenant_id_id", "quarantine", ["tenant_id", "id"], unique=False)
    op.create_index("ix_quarantine_tenant_id_event_id", "quarantine", ["tenant_id", "event_id"], unique=False)
    if op.get_bind().dialect.name == "sqlite":
        _seq_never_reused_on_sqlite()
    _sweep()


SQLITE_EVENTS = """CREATE TABLE events_autoincrement (
    seq INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL,
    event_id VARCHAR(128) NOT NULL,
    type VARCHAR(16) NOT NULL,
    time_us BIGINT NOT NULL,
    customer VARCHAR(256) NOT NULL,
    task VARCHAR(256) NOT NULL,
    task_type VARCHAR(128),
    provider VARCHAR(64),
    model VARCHAR(128),
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    metadata TEXT,
    content_hash VARCHAR(32) NOT NULL,
    ingested_us BIGINT NOT NULL,
    CONSTRAINT fk_events_tenant_id_tenants FOREIGN KEY(tenant_id) REFERENCES tenants (id),
    CONSTRAINT uq_events_tenant_id_event_id UNIQUE (tenant_id, event_id)
)"""


def _seq_never_reused_on_sqlite() -> None:
    """The events table again, with AUTOINCREMENT (SQLite cannot add it to a table in place)."""
    op.execute(SQLITE_EVENTS)
    op.execute("INSERT INTO events_autoincrement SELECT * FROM events ORDER BY seq")
    op.execute("DROP TABLE events")
    op.execute("ALTER TABLE events_autoincrement RENAME TO events")
    op.create_index("ix_events_tenant_task", "events", ["tenant_id", "task"], unique=False)
    op.create_index("ix_events_tenant_seq", "events", ["tenant_id", "seq"], unique=False)


def _sweep() -> None:
    """Move the events already stored outside the representable span, and have the rollup of
    their tenants rebuilt."""
    bind = op.get_bind()
    events = sa.table("events", *(sa.column(name) for name in COLUMNS))
    quarantine = sa.table("quarantine", *(sa.column(name) for name in (*COLUMNS, "reason", "quarantined_at")))
    rollup_state = sa.table("rollup_state", sa.column("tenant_id"), sa.column("price_version"))
    outside = sa.or_(events.c.time_us < REPRESENTABLE_FROM_US, events.c.time_us >= REPRESENTABLE_UNTIL_US)
    tenants = [row[0] for row in bind.execute(sa.select(events.c.tenant_id).where(outside).distinct())]
    if not tenants:
        return
    now = sa.literal(datetime.now(UTC), sa.DateTime(timezone=True))
    rows = sa.select(*events.c, sa.literal(REASON), now).where(outside).order_by(events.c.seq)
    bind.execute(sa.insert(quarantine).from_select([*COLUMNS, "reason", "quarantined_at"], rows))
    bind.execute(sa.delete(events).where(outside))
    bind.execute(sa.update(rollup_state).where(rollup_state.c.tenant_id.in_(tenants)).values(price_version=""))
    # Rows those events left in the rollup tables would break reads until that rebuild.
    for name in ("task_usage", "task_usage_detail", "usage_daily"):
        table = sa.table(name, sa.column("tenant_id"))
        bind.execute(sa.delete(table).where(table.c.tenant_id.in_(tenants)))


def downgrade() -> None:
    op.drop_index("ix_quarantine_tenant_id_event_id", table_name="quarantine")
    op.drop_index("ix_quarantine_tenant_id_id", table_name="quarantine")
    op.drop_table("quarantine")
