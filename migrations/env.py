"""Alembic environment: uses the connection handed over by `metering.core.db.upgrade_schema`, or opens
one from TASKMETER_DATABASE_URL when alembic runs from the command line."""

from __future__ import annotations

import os

from alembic import context

from metering.spend.budget_tables import (
    metadata,  # every table: metering, budgets (it imports metering.core.tables)
)

config = context.config


def run_migrations(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    from metering.core.db import make_engine

    engine = make_engine(os.environ.get("TASKMETER_DATABASE_URL", "sqlite:///./taskmeter.db"))
    with engine.begin() as conn:
        run_migrations(conn)
