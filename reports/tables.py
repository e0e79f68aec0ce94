"""SQLAlchemy tables of the reports domain.

`report_snapshots` keeps the dashboard's figures of a tenant's month (all customers), computed
once and read many times: a month of a large tenant takes seconds to rate and aggregate, and the
dashboard must open in well under one. A snapshot records what it was computed from (the rollup
watermark and a fingerprint of prices, plans, assignments, closed months and invoices) so that a
reader can tell whether it is current. It is a cache: deleting every row loses nothing.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Integer, String, Table, Text

from metering.core.tables import metadata

report_snapshots = Table(
    "report_snapshots",
    metadata,
    Column("tenant_id", Integer, ForeignKey("tenants.id"), primary_key=True),
    Column("period", String(7), primary_key=True),  # YYYY-MM, tenant-local
    Column("format", Integer, nullable=False),  # layout of `payload`; another layout is recomputed
    Column("fingerprint", String(300), nullable=False),
    Column("watermark_seq", BigInteger, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    # The month's totals, for the 12-month chart without reading the payloads.
    Column("currency", String(3), nullable=False),
    Column("revenue_minor", BigInteger, nullable=False),
    Column("cost_micros", BigInteger, nullable=False),
    Column("payload", Text, nullable=False),  # JSON: reports.dashboard.MonthView
)
