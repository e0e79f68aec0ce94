"""Checks of what a billing database holds, for the reliability tests and the load bench: the
rollup tables against a rebuild from the first event, and a closed month's invoices against their
lines and the drafts computed before the close."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from metering.core.db import unit_of_work
from metering.core.money import to_minor
from metering.core.periods import Period
from metering.core.tables import events, rollup_state, task_usage, task_usage_detail, usage_daily
from metering.core.tenants import Tenant
from metering.rollup.pipeline import RollupResult, rollup_tenant
from pricing import repository
from pricing.invoices import month_assembly, month_drafts
from pricing.tables import billing_periods, invoice_lines, invoices

ROLLUP_TABLES = (task_usage, task_usage_detail, usage_daily)


def rollup_snapshot(engine: Engine, tenant_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tenant's rollup tables (without the tenant column), in key order."""
    snapshot = {}
    with engine.connect() as connection:
        for table in ROLLUP_TABLES:
            columns = [c for c in table.c if c.name != "tenant_id"]
            keys = [c for c in table.primary_key.columns if c.name != "tenant_id"]
            rows = connection.execute(select(*columns).where(table.c.tenant_id == tenant_id).order_by(*keys)).all()
            snapshot[table.name] = [tuple(row) for row in rows]
    return snapshot


def rollup_differences(got: dict[str, list[tuple[Any, ...]]], want: dict[str, list[tuple[Any, ...]]]) -> list[str]:
    """What differs between two snapshots, table by table (a few rows each)."""
    problems = []
    for name in want:
        a, b = Counter(got.get(name, [])), Counter(want[name])
        if a != b:
            extra, missing = list((a - b).elements())[:3], list((b - a).elements())[:3]
            problems.append(f"{name}: {sum((a - b).values())} row(s) only in the first {extra}, "
                            f"{sum((b - a).values())} only in the second {missing}")  # fmt: skip
    return problems


def rebuild(engine: Engine, tenant: Tenant, *, now: datetime) -> RollupResult:
    """Roll the tenant up again from its first event (as a change of its prices would)."""
    with unit_of_work(engine) as session:
        session.execute(update(rollup_state).where(rollup_state.c.tenant_id == tenant.id).values(price_version="", price_buckets=None))
    result = rollup_tenant(engine, tenant, now=now)
    assert result.rebuilt
    return result


def watermark(engine: Engine, tenant_id: int) -> int:
    with engine.connect() as connection:
        mark = connection.execute(select(rollup_state.c.watermark_seq).where(rollup_state.c.tenant_id == tenant_id)).scalar()
    return int(mark or 0)


def newest_seq(engine: Engine, tenant_id: int) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.max(events.c.seq)).where(events.c.tenant_id == tenant_id)).scalar() or 0)


def event_count(engine: Engine, tenant_id: int) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(events).where(events.c.tenant_id == tenant_id)).scalar_one())


def draft_totals(engine: Engine, tenant: Tenant, period: Period) -> dict[str, tuple[int, int]]:
    """customer → (total in minor units, number of lines) of the month's invoices as they stand."""
    with Session(engine) as session:
        assembly, _ = month_assembly(session, tenant, period, repository.rollup_position(session, tenant.id))
        drafts = month_drafts(assembly)
    return {d.customer: (sum(to_minor(line.amount, d.currency) for line in d.lines), len(d.lines)) for d in drafts}


def closed_invoices(engine: Engine, tenant_id: int, label: str) -> list[Any]:
    """The month's invoices, each with the sum and number of its lines."""
    lines = (
        select(invoice_lines.c.invoice_id, func.coalesce(func.sum(invoice_lines.c.amount_minor), 0).label("line_sum"),
               func.count().label("line_count"))
        .group_by(invoice_lines.c.invoice_id)
        .subquery()
    )  # fmt: skip
    query = (
        select(invoices, func.coalesce(lines.c.line_sum, 0).label("line_sum"), func.coalesce(lines.c.line_count, 0).label("line_count"))
        .select_from(invoices.outerjoin(lines, lines.c.invoice_id == invoices.c.id))
        .where(invoices.c.tenant_id == tenant_id, invoices.c.period == label)
        .order_by(invoices.c.id)
    )
    with engine.connect() as connection:
        return list(connection.execute(query).all())


def is_closed(engine: Engine, tenant_id: int, label: str) -> bool:
    with engine.connect() as connection:
        found = connection.execute(
            select(billing_periods.c.period).where(billing_periods.c.tenant_id == tenant_id, billing_periods.c.period == label)
        ).first()
    return found is not None


def invoice_problems(engine: Engine, tenant_id: int, label: str, expected: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Why the closed month's invoices are wrong: not closed, not finalized, a customer billed
    twice, a number missing or repeated, a total other than the sum of its lines, or (with
    `expected`, from `draft_totals`) other customers, totals or line counts than the drafts."""
    rows = closed_invoices(engine, tenant_id, label)
    problems = [] if is_closed(engine, tenant_id, label) else [f"{label} is not closed"]
    numbers = Counter(r.number for r in rows)
    customers = Counter(r.customer for r in rows)
    problems += [f"invoice {r.id} is {r.status}" for r in rows if r.status != "finalized"]
    problems += [f"invoice {r.id} has no number" for r in rows if not r.number]
    problems += [f"number {n} used {c} times" for n, c in numbers.items() if c > 1]
    problems += [f"customer {c} has {n} invoices" for c, n in customers.items() if n > 1]
    problems += [f"{r.number}: total {r.total_minor} != sum of its lines {r.line_sum}" for r in rows if r.total_minor != r.line_sum]
    if expected is not None:
        got = {r.customer: (int(r.total_minor), int(r.line_count)) for r in rows}
        if set(got) != set(expected):
            problems.append(f"customers billed {sorted(set(got) ^ set(expected))[:5]} differ from the drafts")
        problems += [
            f"{customer}: invoice (total, lines) {got[customer]} != draft {want}"
            for customer, want in expected.items() if customer in got and got[customer] != want
        ]  # fmt: skip
    return problems
