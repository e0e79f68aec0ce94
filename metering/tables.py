"""SQLAlchemy tables of the metering domain, and the one `metadata` every domain's tables share.

Times of events are integer microseconds since the epoch, UTC (`*_us` columns): exact, identical
on SQLite and PostgreSQL, and read into pandas without parsing text.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")

tenants = Table(
    "tenants",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("timezone", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    # The public part of a key, used to find its row; the rest is only kept as a keyed hash.
    Column("prefix", String(32), nullable=False, unique=True),
    Column("key_hash", LargeBinary(32), nullable=False),
    Column("scopes", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

events = Table(
    "events",
    metadata,
    # The ingest sequence number: the rollup's watermark.
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("type", String(16), nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("customer", String(256), nullable=False),
    Column("task", String(256), nullable=False),
    Column("task_type", String(128)),
    Column("provider", String(64)),
    Column("model", String(128)),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cache_read_tokens", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("metadata", Text),
    # Digest of the normalized event: a replay with other content is a conflict, not a duplicate.
    Column("content_hash", String(32), nullable=False),
    Column("ingested_us", BigInteger, nullable=False),
    UniqueConstraint("tenant_id", "event_id"),
    Index("ix_events_tenant_task", "tenant_id", "task"),
)
