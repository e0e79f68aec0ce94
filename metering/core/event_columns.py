"""The `events` row as ingestion writes it: its columns in the table's order, and the positions
of the fields that code reading such a row picks out (the duplicate check, the budget counters);
and the columns the rollup reads (`EVENT_COLUMNS`), all derived from the table."""

from __future__ import annotations

from metering.core.tables import events

NOT_INSERTED = ("seq", "key_id")
"""Columns an insert leaves out: the sequence the database assigns, and the key that sent the
event (appended only when there is one)."""
INSERT_COLUMNS = tuple(column.name for column in events.columns if column.name not in NOT_INSERTED)
"""The `events` columns an insert writes, in the table's order (the bulk writers bind by it)."""

TYPE, TIME, CUSTOMER, TASK, TASK_TYPE, PROVIDER, MODEL = (
    INSERT_COLUMNS.index(name)
    for name in ("type", "time_us", "customer", "task", "task_type", "provider", "model")
)
INPUT, OUTPUT, CACHE_READ, CACHE_WRITE, CACHE_WRITE_1H = (
    INSERT_COLUMNS.index(name)
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens")
)
DIGEST = INSERT_COLUMNS.index("content_hash")
INGESTED = INSERT_COLUMNS.index("ingested_us")

NOT_ROLLED_UP = ("tenant_id", "event_id", "metadata", "content_hash", "ingested_us", "key_id")
"""Columns of `events` the rollup does not read: identity, payload, bookkeeping."""
EVENT_COLUMNS = tuple(column.name for column in events.columns if column.name not in NOT_ROLLED_UP)
TEXT_COLUMNS = tuple(
    column.name
    for column in events.columns
    if column.name in EVENT_COLUMNS and column.type.python_type is str
)
