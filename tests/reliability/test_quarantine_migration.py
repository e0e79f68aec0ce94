"""Migration 0009 on a database from before event times had bounds: the events it already holds
outside the representable span move to the quarantine, and their tenants' rollup is rebuilt."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine, select, text

from metering.core.tables import events, quarantine, rollup_state, task_usage
from metering.core.tenants import Tenant
from metering.events.ingest import to_us
from metering.rollup.pipeline import rollup_tenant
from metering.rollup.quarantine import REASONS
from tests.reliability.test_quarantine import YEAR_1, YEAR_1600, plant
from tests.reports.conftest import Books, make_books, usage  # noqa: F401 - fixtures
from tests.support.migrations import migrate


def test_events_stored_before_the_bounds_are_swept_into_the_quarantine(
    engine: Engine, make_books: Callable[..., Books]  # noqa: F811
) -> None:
    books = make_books()
    other: Tenant = make_books("other").tenant
    books.send(usage("a1", "2026-10-10T09:30:00Z", input_tokens=1_000))
    rollup_tenant(engine, books.tenant, now=datetime(2026, 11, 2, tzinfo=UTC))
    rollup_tenant(engine, other, now=datetime(2026, 11, 2, tzinfo=UTC))
    migrate(engine, "0008", down=True)
    try:
        plant(engine, books.tenant.id, "ancient", YEAR_1, task="a1")
        plant(engine, books.tenant.id, "y1600", YEAR_1600, task="old")
        with engine.begin() as connection:  # as if an older rollup had taken them in (a UTC tenant could)
            connection.execute(task_usage.update().where(task_usage.c.task == "a1").values(first_event_us=YEAR_1600))
    finally:
        migrate(engine, "head")
    with engine.connect() as connection:
        moved = dict(connection.execute(select(quarantine.c.event_id, quarantine.c.reason)).all())
        left = connection.execute(select(events.c.event_id).where(events.c.time_us < to_us(datetime(1970, 1, 2, tzinfo=UTC)))).all()
        versions = dict(connection.execute(select(rollup_state.c.tenant_id, rollup_state.c.price_version)).all())
        rolled_up = connection.execute(select(task_usage.c.task).where(task_usage.c.tenant_id == books.tenant.id)).all()
    assert moved == {"ancient": REASONS[1], "y1600": REASONS[1]} and left == []
    assert versions[books.tenant.id] == "" and versions[other.id] != ""  # only the tenant concerned is rebuilt
    assert rolled_up == []  # its rows that the old events had touched are gone until the rebuild
    result = rollup_tenant(engine, books.tenant, now=datetime(2026, 11, 2, tzinfo=UTC))
    assert result.rebuilt and result.quarantined == 0
    with engine.connect() as connection:
        first = connection.execute(select(task_usage.c.first_event_us).where(task_usage.c.task == "a1")).scalar_one()
        if engine.dialect.name == "sqlite":
            ddl = connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'events'")).scalar_one()
            assert "AUTOINCREMENT" in ddl
    assert first == to_us(datetime(2026, 10, 10, 9, 30, tzinfo=UTC))
