"""Stored budgets: replace a tenant's set (the config file), put or delete one (the API).

Every change draws a new budget generation for the tenant (`metering.spend.counters.bump_generation`), so each
server process reloads its cached budgets before it counts the next batch. A new budget, and one
whose scope, measure or period changes, starts from the spend already stored in its current
period (`metering.spend.recount`, in the same transaction; what older counters held counted something
else and is dropped); a changed limit, alerts, forecast or enforce keeps the counters.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.orm import Session

from metering.core.errors import InvalidInput, NotFound
from metering.spend import counters as spend
from metering.spend import recount
from metering.spend.budget_tables import budget_counters, budgets
from metering.spend.budgets import Budget, parse_budgets


def _connection(session: Session | Connection) -> Connection:
    return session.connection() if isinstance(session, Session) else session


def stored(session: Session | Connection, tenant_id: int) -> dict[str, Budget]:
    rows = session.execute(select(budgets.c.definition).where(budgets.c.tenant_id == tenant_id)).scalars()
    found = (Budget.model_validate(orjson.loads(row)) for row in rows)
    return {b.id: b for b in sorted(found, key=lambda b: b.id)}


def _counts_alike(a: Budget, b: Budget) -> bool:
    return (a.scope, a.measure, a.period) == (b.scope, b.measure, b.period)


def _write(
    connection: Connection, tenant_id: int, budget: Budget, old: Budget | None, *, now: datetime
) -> str:
    definition = orjson.dumps(budget.definition()).decode()
    if old is None:
        connection.execute(
            insert(budgets).values(
                tenant_id=tenant_id, budget_id=budget.id, definition=definition, updated_at=now
            )
        )
        return "added"
    if old == budget:
        return "unchanged"
    where = (budgets.c.tenant_id == tenant_id, budgets.c.budget_id == budget.id)
    connection.execute(update(budgets).where(*where).values(definition=definition, updated_at=now))
    if not _counts_alike(old, budget):
        _drop_counters(connection, tenant_id, budget.id)
    return "changed"


def _drop_counters(connection: Connection, tenant_id: int, budget_id: str) -> None:
    connection.execute(
        delete(budget_counters).where(
            budget_counters.c.tenant_id == tenant_id, budget_counters.c.budget_id == budget_id
        )
    )


def replace_all(
    session: Session | Connection, tenant_id: int, entries: Sequence[Budget], *, now: datetime
) -> dict[str, int]:
    """Make the tenant's budgets these (the config file's `budgets:` section)."""
    connection = _connection(session)
    have = stored(connection, tenant_id)
    counts = {"added": 0, "changed": 0, "removed": 0, "unchanged": 0}
    fresh = {b.id for b in entries if b.id not in have or not _counts_alike(have[b.id], b)}
    if fresh:
        recount.lock(connection, tenant_id)  # before dropping counters that counting writes
    for budget in entries:
        counts[_write(connection, tenant_id, budget, have.get(budget.id), now=now)] += 1
    for gone in sorted(have.keys() - {b.id for b in entries}):
        _delete(connection, tenant_id, gone)
        counts["removed"] += 1
    spend.bump_generation(connection, tenant_id)
    if fresh:
        recount.recount(connection, tenant_id, now=now, only=fresh)
    return counts


def put(
    session: Session | Connection, tenant_id: int, budget_id: str, raw: Any, *, now: datetime
) -> tuple[Budget, str]:
    """Create or replace one budget from an API body; the body's id, when given, must match."""
    if isinstance(raw, dict) and "id" not in raw:
        raw = {**raw, "id": budget_id}
    parsed, problems = parse_budgets([raw], prefix="budget")
    problems = [(path.replace("budget[0]", "body"), message) for path, message in problems]
    if not problems and parsed[0].id != budget_id:
        problems.append(("body.id", f"must be the id in the path ({budget_id!r})"))
    if problems:
        raise InvalidInput("invalid budget", detail=[{"field": f, "message": m} for f, m in problems])
    connection = _connection(session)
    old = stored(connection, tenant_id).get(budget_id)
    counts_anew = old is None or not _counts_alike(old, parsed[0])
    if counts_anew:
        recount.lock(connection, tenant_id)  # before dropping counters that counting writes
    status = _write(connection, tenant_id, parsed[0], old, now=now)
    spend.bump_generation(connection, tenant_id)
    if counts_anew:
        recount.recount(connection, tenant_id, now=now, only={budget_id})
    return parsed[0], status


def _delete(connection: Connection, tenant_id: int, budget_id: str) -> int:
    _drop_counters(connection, tenant_id, budget_id)
    result = connection.execute(
        delete(budgets)
        .where(budgets.c.tenant_id == tenant_id, budgets.c.budget_id == budget_id)
        .execution_options(preserve_rowcount=True)
    )
    return int(result.rowcount)


def remove(session: Session | Connection, tenant_id: int, budget_id: str) -> None:
    connection = _connection(session)
    if not _delete(connection, tenant_id, budget_id):
        raise NotFound(f"no budget {budget_id!r}")
    spend.bump_generation(connection, tenant_id)


def get(session: Session | Connection, tenant_id: int, budget_id: str) -> Budget:
    found = stored(session, tenant_id).get(budget_id)
    if found is None:
        raise NotFound(f"no budget {budget_id!r}")
    return found
