"""Migration 0010 on a database from before events had actor and agent: every figure stays, nothing
is rebuilt, and new events are kept apart by actor and agent; its downgrade folds them back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, inspect, select

from metering.core.tables import task_usage, task_usage_detail, usage_daily
from metering.rollup.pipeline import rollup_tenant
from tests.reliability.test_quarantine_migration import migrate
from tests.reports.conftest import Books, make_books, usage  # noqa: F401 - fixtures

NOW = datetime(2026, 11, 2, tzinfo=UTC)
USAGE = ("usage_events", "input_tokens", "output_tokens", "cost_nanos", "cost_rem")


def figures(
    engine: Engine, keys: tuple[str, ...] = ("customer", "day", "provider", "model")
) -> list[tuple[Any, ...]]:
    names = ", ".join((*keys, *USAGE))
    with engine.connect() as connection:
        return [
            tuple(r)
            for r in connection.exec_driver_sql(f"SELECT {names} FROM usage_daily ORDER BY {', '.join(keys)}")
        ]  # noqa: S608


def test_the_upgrade_keeps_every_figure_and_rebuilds_nothing(
    engine: Engine,
    make_books: Callable[..., Books],  # noqa: F811 - the fixture
) -> None:
    books = make_books()
    books.send(
        usage("a1", "2026-10-10T09:00:00Z", input_tokens=1_000),
        usage("a1", "2026-10-11T09:00:00Z", input_tokens=2_000),
    )
    rollup_tenant(engine, books.tenant, now=NOW)
    before = figures(engine)
    with engine.connect() as connection:
        tasks_before = connection.execute(select(task_usage.c.task, task_usage.c.cost_nanos)).all()
    migrate(engine, "0009", down=True)  # the rollup rows as the code before 0010 kept them
    try:
        assert "actor" not in {c["name"] for c in inspect(engine).get_columns("usage_daily")}
        assert figures(engine) == before
    finally:
        migrate(engine, "head")
    assert figures(engine) == before and len(before) == 2
    assert figures(engine, ("customer", "day", "provider", "model", "actor", "agent")) == [
        (*row[:4], "", "", *row[4:]) for row in before
    ]
    books.send(
        usage("a1", "2026-10-12T09:00:00Z", input_tokens=500, actor="ben@acme.com", agent="ben/codex-1")
    )
    result = rollup_tenant(engine, books.tenant, now=NOW)
    # 0010 rebuilds nothing; 0018 (price buckets, which the round trip through 0009 dropped) has
    # the first run after the upgrade rebuild once, and every figure stays.
    assert result.rebuilt and result.events_read == 3
    assert figures(engine)[:2] == before
    with engine.connect() as connection:
        assert connection.execute(select(task_usage.c.task, task_usage.c.cost_nanos)).all() != tasks_before
        attributed = connection.execute(select(usage_daily.c.actor, usage_daily.c.agent, usage_daily.c.input_tokens)
                                        .where(usage_daily.c.actor != "")).all()  # fmt: skip
        detail = (
            connection.execute(
                select(task_usage_detail.c.actor).distinct().order_by(task_usage_detail.c.actor)
            )
            .scalars()
            .all()
        )
    assert [tuple(r) for r in attributed] == [("ben@acme.com", "ben/codex-1", 500)] and detail == [
        "",
        "ben@acme.com",
    ]


def test_the_downgrade_folds_actors_and_agents_into_their_key(
    engine: Engine,
    make_books: Callable[..., Books],  # noqa: F811 - the fixture
) -> None:
    books = make_books()
    books.send(
        usage("a1", "2026-10-10T09:00:00Z", input_tokens=1_000),
        usage("a1", "2026-10-10T10:00:00Z", input_tokens=2_000, actor="ben@acme.com"),
        usage("a2", "2026-10-10T11:00:00Z", input_tokens=4_000, actor="ben@acme.com", agent="ben/codex-1"),
    )
    rollup_tenant(engine, books.tenant, now=NOW)
    assert len(figures(engine, ("customer", "day", "provider", "model", "actor", "agent"))) == 3
    migrate(engine, "0009", down=True)
    try:
        [row] = figures(engine)
        assert row[4:6] == (3, 7_000)
    finally:
        migrate(engine, "head")
