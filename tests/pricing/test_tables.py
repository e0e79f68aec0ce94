"""The pricing tables as declared are the tables the migrations build (on the test database)."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, Table

from pricing import tables

PRICING = {"plans", "plan_versions", "customers", "customer_plans", "billing_periods", "invoices", "invoice_lines", "credit_notes"}


def _ours(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    table = obj if isinstance(obj, Table) else getattr(obj, "table", None)
    return table is not None and table.name in PRICING


def test_the_migrations_build_the_declared_pricing_tables(engine: Engine) -> None:
    assert PRICING <= set(tables.metadata.tables)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": _ours})
        assert compare_metadata(context, tables.metadata) == []
