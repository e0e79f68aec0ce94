"""SQLAlchemy tables of the metering domain, and the one `metadata` every domain's tables share.

Times of events are integer microseconds since the epoch, UTC (`*_us` columns): exact, identical
on SQLite and PostgreSQL, and read into pandas without parsing text.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
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
    Column("customer", String(256)),  # a verdict key's customer: it acts for that customer only
)


def _stored_event_columns() -> list[Column[Any]]:
    """An event as stored, after its seq and tenant: in `events`, and in `quarantine` as it was there."""
    return [
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
        Column("actor", String(256)),  # whose account the work ran under; NULL: not given
        Column("agent", String(256)),  # which of the actor's agents; NULL: not given
        Column("metadata", Text),
        # Digest of the normalized event: a replay with other content is a conflict, not a duplicate.
        Column("content_hash", String(32), nullable=False),
        Column("ingested_us", BigInteger, nullable=False),
        # The 1-hour cache writes, a subset of cache_write_tokens (migration 0012: added last).
        Column("cache_write_1h_tokens", BigInteger, nullable=False, server_default="0"),
    ]


events = Table(
    "events",
    metadata,
    # The ingest sequence number: the rollup's watermark.
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    *_stored_event_columns(),
    # The API key that sent the event (evidence: GET /v1/tasks/{task}/events); NULL for events
    # that came another way (command line, bulk load) or before keys were recorded.
    Column("key_id", Integer),
    UniqueConstraint("tenant_id", "event_id"),
    Index("ix_events_tenant_task", "tenant_id", "task"),
    Index("ix_events_tenant_seq", "tenant_id", "seq"),  # a tenant's events past its watermark
    # SQLite: a seq is never handed out twice, even after the newest events were moved to the
    # quarantine (otherwise the next events could get seqs at or below a watermark).
    sqlite_autoincrement=True,
)


# --- the rollup: what metering.rollup.pipeline computes from events -----------------------------------

rollup_state = Table(
    "rollup_state",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    # Every event with seq <= watermark_seq is in the rollup tables, priced with price_version.
    Column("watermark_seq", BigInteger, nullable=False),
    Column("price_version", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The price buckets of the tenant's rows (`BucketScheme.text`; NULL: none yet, the next
    # rollup rebuilds) and the prices (`tenant_overrides`, JSON) that price_version names.
    Column("price_buckets", Text),
    Column("price_settings", Text),
    # The tenant's own edges of the per customer-month figures' cost buckets, in nanos, comma
    # separated (`metering.rollup.month_figures.set_edges`; NULL: the dashboard's edges alone).
    Column("cost_edges", Text),
)


# The rollup tables (task_usage, task_usage_detail, usage_daily) name their tenant without a
# foreign key: their rows are derived, written only by the rollup for a tenant it has just read,
# and rebuilt from events (which keep theirs). On PostgreSQL the per-row check cost a 12M-event
# rebuild ~17 s of its ~60 s of writing (migration 0008).


def _usage_columns(*, cost: bool = True) -> list[Column[Any]]:
    """Additive usage measures: counts, tokens and (`cost`) exact cost (nanos + remainder in 1e-15)."""
    return [
        Column("usage_events", BigInteger, nullable=False),
        Column("input_tokens", BigInteger, nullable=False),
        Column("output_tokens", BigInteger, nullable=False),
        Column("cache_read_tokens", BigInteger, nullable=False),
        Column("cache_write_tokens", BigInteger, nullable=False),
        Column("reasoning_tokens", BigInteger, nullable=False),
        Column("cache_write_1h_tokens", BigInteger, nullable=False, server_default="0"),  # a subset of cache writes
        *(
            [
                Column("cost_nanos", BigInteger, nullable=False),
                Column("cost_rem", BigInteger, nullable=False),
                Column("unpriced_events", BigInteger, nullable=False),
            ]
            if cost
            else []
        ),
    ]


def _attribution_keys() -> list[Column[Any]]:
    """The actor and agent of the usage events a row sums, as keys: '' where the events gave
    none (a key cannot be NULL), which is every row of usage from before events had them."""
    return [
        Column("actor", String(256), primary_key=True, server_default=""),
        Column("agent", String(256), primary_key=True, server_default=""),
    ]


task_usage = Table(
    "task_usage",
    metadata,
    Column("tenant_id", Integer, primary_key=True),  # no foreign key (above)
    Column("task", String(256), primary_key=True),
    # Each attribute below is decided by an event, ordered by (time, seq); the deciding event's
    # time and seq are kept so that a later rollup can merge new events in the same way.
    Column("customer", String(256), nullable=False),  # the earliest event's
    Column("customer_us", BigInteger, nullable=False),
    Column("customer_seq", BigInteger, nullable=False),
    Column("task_type", String(128)),  # the latest event that gave one
    Column("task_type_us", BigInteger),
    Column("task_type_seq", BigInteger),
    Column("status", String(16), nullable=False),  # the latest terminal event's, else open
    Column("ended_us", BigInteger),
    Column("status_seq", BigInteger),
    Column("started_us", BigInteger),  # the earliest task.started
    Column("first_event_us", BigInteger, nullable=False),
    Column("last_event_us", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
    *_usage_columns(),
    Column("last_seq", BigInteger, nullable=False),
    # Outcome truth (`pricing.outcomes` settles a task from these): the latest task.completed,
    # task.accepted and task.reopened, and how many reopenings and rejections the task had.
    Column("completed_us", BigInteger),
    Column("accepted_us", BigInteger),
    Column("reopened_us", BigInteger),
    Column("reopened", BigInteger, nullable=False, server_default="0"),
    Column("rejected", BigInteger, nullable=False, server_default="0"),
    # A customer's tasks by end time; open tasks are the ones with no end (ended_us IS NULL).
    Index("ix_task_usage_tenant_customer_ended", "tenant_id", "customer", "ended_us"),
    Index("ix_task_usage_tenant_ended", "tenant_id", "ended_us"),
    # The few tasks reopened, and rejected, that a month's outcome counts name beside the per
    # customer-month figures (`pricing.open_month.reopened_and_rejected`).
    Index("ix_task_usage_tenant_reopened", "tenant_id", "reopened_us", sqlite_where=text("reopened_us IS NOT NULL"),
          postgresql_where=text("reopened_us IS NOT NULL")),
    Index("ix_task_usage_tenant_rejected", "tenant_id", "ended_us", sqlite_where=text("rejected > 0"),
          postgresql_where=text("rejected > 0")),
    sqlite_with_rowid=False,  # one B-tree keyed by (tenant, task), not a rowid table plus an index
)

# One row per task, tenant-local day, model, customer, actor and agent (of the usage events;
# the customer normally the task's): a task's usage split by when it happened and who spent it.
task_usage_detail = Table(
    "task_usage_detail",
    metadata,
    Column("tenant_id", Integer, primary_key=True),  # no foreign key (above)
    Column("task", String(256), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("model", String(128), primary_key=True),
    Column("customer", String(256), primary_key=True),
    *_attribution_keys(),
    *_usage_columns(),
    Index("ix_task_usage_detail_tenant_day", "tenant_id", "day"),
    sqlite_with_rowid=False,
)

# One row per customer, tenant-local day, model, actor and agent: what the API and rating read.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("tenant_id", Integer, primary_key=True),  # no foreign key (above)
    Column("customer", String(256), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("model", String(128), primary_key=True),
    *_attribution_keys(),
    *_usage_columns(),
    Index("ix_usage_daily_tenant_day", "tenant_id", "day"),
    sqlite_with_rowid=False,
)

# One row per detail row (above) and price bucket (`metering.costs.price_buckets`: the UTC date as a
# shift from the tenant-local day, the time-of-day period, the context band), with the same
# counts and tokens: the sums a price change re-prices from without reading events (`metering.rollup.reprice`).
# No cost (migration 0024): a bucket's cost is the price of its sums, and its detail row holds the
# sum of them; a re-pricing writes the detail rows, not the (more) buckets.
# Provider and model lead the key: a re-pricing reads the rows of the models whose price changed.
task_usage_buckets = Table(
    "task_usage_buckets",
    metadata,
    Column("tenant_id", Integer, primary_key=True),  # no foreign key (above)
    Column("provider", String(64), primary_key=True),
    Column("model", String(128), primary_key=True),
    Column("task", String(256), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("customer", String(256), primary_key=True),
    *_attribution_keys(),
    Column("utc_shift", SmallInteger, primary_key=True),
    Column("period", SmallInteger, primary_key=True),
    Column("band", SmallInteger, primary_key=True),
    *_usage_columns(cost=False),
    sqlite_with_rowid=False,
)

# A tenant's own model prices (negotiated or self-hosted), per million tokens, as decimal text.
tenant_prices = Table(
    "tenant_prices",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("model", String(128), primary_key=True),
    Column("input", String(40), nullable=False),
    Column("output", String(40), nullable=False),
    Column("cache_read", String(40)),
    Column("cache_write", String(40)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The whole price as JSON (versions, tiers, 1-hour cache writes; `TenantPrice.as_mapping`);
    # the columns above keep the first version's flat rates for readers that know only those.
    Column("spec", Text),
)

# A tenant's model aliases (the config file's `models:`), in file order: the first match wins.
tenant_model_aliases = Table(
    "tenant_model_aliases",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("match", String(200), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# --- the quarantine: stored events that the rollup cannot process (metering.rollup.quarantine) ----------

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    # The event as it was stored in `events` (the same columns), with its seq there.
    Column("seq", BigInteger, nullable=False),
    *_stored_event_columns(),
    Column("reason", String(300), nullable=False),
    Column("quarantined_at", DateTime(timezone=True), nullable=False),
    # Not unique: a row that cannot be moved aside would stop the tenant's rollup again.
    Index("ix_quarantine_tenant_id_id", "tenant_id", "id"),
    Index("ix_quarantine_tenant_id_event_id", "tenant_id", "event_id"),
)


# --- the ingest log (metering.events.ingest_log, metering.events.loader) -------------------------------------

# The loader's verdict on an event id whose latest message from the log was not stored: a
# duplicate of the stored event, or a conflict (other content under a stored id). One row per
# id (the latest verdict): what `GET /v1/events/{id}` reports beside the stored event.
load_verdicts = Table(
    "load_verdicts",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("event_id", String(128), primary_key=True),
    Column("verdict", String(16), nullable=False),  # duplicate | conflict
    Column("content_hash", String(32), nullable=False),  # of the message that was not stored
    Column("decided_at", DateTime(timezone=True), nullable=False),
)

# Messages of the log that the loader could not store (undecodable, invalid at load, or an error
# of the database specific to that message): kept whole, with the reason, and acknowledged so that
# they do not come round again.
log_quarantine = Table(
    "log_quarantine",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # Both as far as the message could be read (an undecodable one names neither); no foreign
    # key: a message naming no known tenant is kept too.
    Column("tenant_id", BigInteger),
    Column("event_id", String(128)),
    Column("subject", String(256), nullable=False),
    Column("stream_seq", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("reason", String(1000), nullable=False),
    Column("quarantined_at", DateTime(timezone=True), nullable=False),
    Index("ix_log_quarantine_tenant_id_event_id", "tenant_id", "event_id"),
)

# --- the archive: months whose events left the database for a verified Parquet copy ------------

archived_months = Table(
    "archived_months",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("month", String(7), primary_key=True),  # YYYY-MM, tenant-local
    Column("url", Text, nullable=False),  # the archive's root (metering.events.archive)
    # Events of the month with seq <= max_seq were deleted; the archive holds them (rows, checksum).
    Column("max_seq", BigInteger, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("dropped_at", DateTime(timezone=True), nullable=False),
)

# --- the open month's figures: per customer and tenant-local month, kept by the rollup -----------

# One row per customer, tenant-local month, task type ('' for none), status and cost bucket: how
# many tasks, their usage events, tokens and whole-task provider cost (each task's cost settled to
# nano-units first, as rating reads it). A task counts in the month of its end (`ended_us`), an
# open task in the month of its last event. Written by the rollup in the transaction of its other
# tables (`metering.rollup.month_figures`): the dashboard, the upcoming invoice and an open month's
# reports read it instead of every task of the month.
customer_months = Table(
    "customer_months",
    metadata,
    Column("tenant_id", Integer, primary_key=True),  # no foreign key (as the rollup tables)
    Column("customer", String(256), primary_key=True),
    Column("month", String(7), primary_key=True),
    Column("task_type", String(128), primary_key=True, server_default=""),
    Column("status", String(16), primary_key=True),
    Column("bucket", Integer, primary_key=True),
    Column("tasks", BigInteger, nullable=False),
    Column("usage_events", BigInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cost_nanos", BigInteger, nullable=False),
    # 1: a sum of the key passed int64 (its sums are zero, its tasks counted): the month is read
    # from its tasks (`pricing.open_month.usable`, through the partial index of the few such keys).
    Column("too_large", Integer, nullable=False, server_default="0"),
    Index("ix_customer_months_tenant_month", "tenant_id", "month"),
    Index("ix_customer_months_too_large", "tenant_id", "month", sqlite_where=text("too_large > 0"),
          postgresql_where=text("too_large > 0")),
    sqlite_with_rowid=False,
)

# One row per customer, tenant-local month, model, actor and agent: `usage_daily` summed over the
# month's days, each daily row's cost also settled to nano-units (half up, as rating reads a row)
# before it is summed, and its input and output tokens when it has unpriced events. Written by the
# rollup in the transaction of its other tables (`metering.rollup.usage_months`): a month's usage
# (`pricing.repository.month_usage`) reads it instead of every day of the month.
usage_months = Table(
    "usage_months",
    metadata,
    Column("tenant_id", Integer, primary_key=True),  # no foreign key (as the rollup tables)
    Column("month", String(7), primary_key=True),
    Column("customer", String(256), primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("model", String(128), primary_key=True),
    *_attribution_keys(),
    Column("days", BigInteger, nullable=False),  # the daily rows summed
    Column("usage_events", BigInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cache_read_tokens", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("cost_nanos", BigInteger, nullable=False),
    Column("cost_rem", BigInteger, nullable=False),  # summed, not carried (as a SUM of the daily rows)
    Column("unpriced_events", BigInteger, nullable=False),
    Column("provider_cost_nanos", BigInteger, nullable=False),  # each daily row's cost settled, summed
    Column("unpriced_tokens", BigInteger, nullable=False),
    # 1: a sum of the key passed int64 (its sums are zero): the month is read from its days.
    Column("too_large", Integer, nullable=False, server_default="0"),
    sqlite_with_rowid=False,
)
