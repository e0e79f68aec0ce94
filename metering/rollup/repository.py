"""Reads of the rollup tables for the API and reports. Every query is scoped by tenant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, Literal

from sqlalchemy import ColumnElement, Connection, FromClause, and_, func, literal, select, union_all
from sqlalchemy.orm import Session

from metering.core.money import display_cost
from metering.core.periods import Period
from metering.core.tables import api_keys, events, task_usage, task_usage_detail, usage_daily
from metering.core.vocabulary import TASK_STATUSES, USAGE_MEASURES
from metering.events.ingest import from_us, to_us

GroupBy = Literal["model", "task_type", "day", "customer", "actor", "agent"]
ATTRIBUTION = ("actor", "agent")  # '' in the rollup tables where the events gave none; None in answers


def usage_figures(row: Any) -> dict[str, Any]:
    """Measures of a usage row as the API shows them: tokens, billable classes, exact cost."""
    get = row._mapping.get if hasattr(row, "_mapping") else row.get
    values = {name: int(get(name) or 0) for name in USAGE_MEASURES}
    return {
        "usage_events": values["usage_events"],
        "input_tokens": values["input_tokens"],
        "output_tokens": values["output_tokens"],
        "cache_read_tokens": values["cache_read_tokens"],
        "cache_write_tokens": values["cache_write_tokens"],
        "reasoning_tokens": values["reasoning_tokens"],
        "cache_write_1h_tokens": values["cache_write_1h_tokens"],
        "billable": {
            "input": values["input_tokens"] - values["cache_read_tokens"] - values["cache_write_tokens"],
            "cache_read": values["cache_read_tokens"],
            "cache_write": values["cache_write_tokens"],
            "output": values["output_tokens"],
        },
        "provider_cost": display_cost(values["cost_nanos"], values["cost_rem"]),
        "unpriced_events": values["unpriced_events"],
        "priced": values["unpriced_events"] == 0,
    }


def _sums(table: Any) -> list[Any]:
    return [func.coalesce(func.sum(table.c[name]), 0).label(name) for name in USAGE_MEASURES]


_GIGA = 1_000_000_000


def cost_sums(table: Any) -> list[Any]:
    """The exact sum of a table's cost as three sums no database can overflow: whole units
    (`cost_units`), nanos below a unit (`cost_subunit_nanos`) and the remainder (`cost_rem`);
    a month of costs near the int64 limit would overflow one SQL sum of `cost_nanos`.
    `summed_nanos` puts the first two back together."""
    return [
        func.coalesce(func.sum(table.c.cost_nanos // _GIGA), 0).label("cost_units"),
        func.coalesce(func.sum(table.c.cost_nanos % _GIGA), 0).label("cost_subunit_nanos"),
        func.coalesce(func.sum(table.c.cost_rem), 0).label("cost_rem"),
    ]


def summed_nanos(row: Any) -> int:
    return int(row.cost_units) * _GIGA + int(row.cost_subunit_nanos)


def task(connection: Connection | Session, tenant_id: int, name: str) -> dict[str, Any] | None:
    row = connection.execute(
        select(task_usage).where(task_usage.c.tenant_id == tenant_id, task_usage.c.task == name)
    ).one_or_none()
    if row is None:
        return None
    models = connection.execute(
        select(task_usage_detail.c.provider, task_usage_detail.c.model, *_sums(task_usage_detail))
        .where(task_usage_detail.c.tenant_id == tenant_id, task_usage_detail.c.task == name)
        .group_by(task_usage_detail.c.provider, task_usage_detail.c.model)
        .order_by(task_usage_detail.c.provider, task_usage_detail.c.model)
    ).all()
    return {
        "task": row.task,
        "customer": row.customer,
        "task_type": row.task_type,
        "status": row.status,
        "started_at": from_us(row.started_us) if row.started_us is not None else None,
        "ended_at": from_us(row.ended_us) if row.ended_us is not None else None,
        "first_event_at": from_us(row.first_event_us),
        "last_event_at": from_us(row.last_event_us),
        "events": row.events,
        **usage_figures(row),
        "models": [{"provider": m.provider, "model": m.model, **usage_figures(m)} for m in models],
    }


def usage(
    connection: Connection | Session,
    tenant_id: int,
    *,
    first_day: date,
    end_day: date,
    group_by: GroupBy,
    customer: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Usage of days [first_day, end_day) grouped as asked, and the total."""
    source: FromClause
    keys: Sequence[ColumnElement[Any]]
    if group_by == "task_type":
        table = task_usage_detail
        keys = [func.coalesce(task_usage.c.task_type, "").label("task_type")]
        source = task_usage_detail.join(
            task_usage, and_(task_usage.c.tenant_id == task_usage_detail.c.tenant_id, task_usage.c.task == task_usage_detail.c.task)
        )
    else:
        table = usage_daily
        source = usage_daily
        keys = {
            "model": [usage_daily.c.provider, usage_daily.c.model],
            "day": [usage_daily.c.day],
            "customer": [usage_daily.c.customer],
            "actor": [usage_daily.c.actor],
            "agent": [usage_daily.c.actor, usage_daily.c.agent],  # an agent acts for its actor
        }[group_by]
    where = [table.c.tenant_id == tenant_id, table.c.day >= first_day, table.c.day < end_day]
    if customer is not None:
        where.append(table.c.customer == customer)
    rows = connection.execute(select(*keys, *_sums(table)).select_from(source).where(*where).group_by(*keys).order_by(*keys)).all()
    # The total is the rows' sum (whole numbers: exact), not a second query: one round trip
    # fewer for every read of a customer's month.
    total = {name: sum(int(row._mapping[name]) for row in rows) for name in USAGE_MEASURES}
    out = []
    for row in rows:
        key = {k.name: row._mapping[k.name] for k in keys}
        if group_by == "task_type":
            key["task_type"] = key["task_type"] or None
        if group_by == "day":
            key["day"] = date.fromisoformat(str(key["day"]))
        for name in ATTRIBUTION:
            if name in key:
                key[name] = key[name] or None
        out.append({**key, **usage_figures(row)})
    return out, usage_figures(total)


def spend(
    connection: Connection | Session, tenant_id: int, *, first_day: date, end_day: date, customer: str | None = None
) -> list[dict[str, Any]]:
    """Usage of days [first_day, end_day) per customer, actor and agent (None where the usage
    events named none), by those three: usage events, input and output tokens, provider cost."""
    u = usage_daily.c
    where = [u.tenant_id == tenant_id, u.day >= first_day, u.day < end_day]
    if customer is not None:
        where.append(u.customer == customer)
    keys = (u.customer, u.actor, u.agent)
    sums = [func.sum(u[name]).label(name) for name in ("usage_events", "input_tokens", "output_tokens")]
    rows = connection.execute(select(*keys, *sums, *cost_sums(usage_daily)).where(*where).group_by(*keys)).all()
    out = [
        {"customer": r.customer, "actor": r.actor or None, "agent": r.agent or None, "usage_events": int(r.usage_events),
         "input_tokens": int(r.input_tokens), "output_tokens": int(r.output_tokens),
         "provider_cost": display_cost(summed_nanos(r), int(r.cost_rem))}
        for r in rows
    ]  # fmt: skip
    return sorted(out, key=lambda r: (r["customer"].encode(), (r["actor"] or "").encode(), (r["agent"] or "").encode()))


def task_outcomes(connection: Connection | Session, tenant_id: int, period: Period, customer: str | None = None) -> dict[str, int]:
    """Tasks that ended in the period, by status, and tasks still open (whenever they began)."""
    where = [task_usage.c.tenant_id == tenant_id]
    if customer is not None:
        where.append(task_usage.c.customer == customer)
    ended = (
        select(task_usage.c.status, func.count())
        .where(*where, task_usage.c.ended_us >= to_us(period.start), task_usage.c.ended_us < to_us(period.end))
        .group_by(task_usage.c.status)
    )
    still_open = select(literal("open"), func.count()).where(*where, task_usage.c.ended_us.is_(None))
    counts: dict[str, int] = dict.fromkeys(TASK_STATUSES, 0)
    # One statement, one round trip; each part keeps its own index plan.
    counts.update({status: int(n) for status, n in connection.execute(union_all(ended, still_open)).all()})
    return counts


def unpriced_models(connection: Connection | Session, tenant_id: int, first_day: date | None = None, end_day: date | None = None) -> list[dict[str, Any]]:
    where = [usage_daily.c.tenant_id == tenant_id, usage_daily.c.unpriced_events > 0]
    if first_day is not None:
        where.append(usage_daily.c.day >= first_day)
    if end_day is not None:
        where.append(usage_daily.c.day < end_day)
    rows = connection.execute(
        select(usage_daily.c.provider, usage_daily.c.model, func.sum(usage_daily.c.unpriced_events).label("events"),
               func.sum(usage_daily.c.input_tokens + usage_daily.c.output_tokens).label("tokens"))
        .where(*where).group_by(usage_daily.c.provider, usage_daily.c.model).order_by(usage_daily.c.provider, usage_daily.c.model)
    ).all()  # fmt: skip
    return [{"provider": r.provider, "model": r.model, "events": int(r.events), "tokens": int(r.tokens)} for r in rows]


def task_events(
    connection: Connection | Session, tenant_id: int, task: str, *, offset: int = 0, limit: int = 1000
) -> list[dict[str, Any]]:
    """A task's stored events in time order (ties by ingest order), each with the API key that
    sent it (None: the command line, a bulk load, or before keys were recorded)."""
    e, k = events, api_keys
    rows = connection.execute(
        select(e, k.c.prefix.label("key_prefix"), k.c.name.label("key_name"))
        .select_from(e.outerjoin(k, (k.c.id == e.c.key_id) & (k.c.tenant_id == e.c.tenant_id)))
        .where(e.c.tenant_id == tenant_id, e.c.task == task)
        .order_by(e.c.time_us, e.c.seq)
        .offset(offset)
        .limit(limit)
    ).all()
    return [
        {
            "seq": r.seq, "id": r.event_id, "type": r.type, "time": from_us(r.time_us), "customer": r.customer,
            "task_type": r.task_type, "provider": r.provider, "model": r.model,
            "input_tokens": r.input_tokens, "output_tokens": r.output_tokens, "actor": r.actor, "agent": r.agent,
            "ingested_at": from_us(r.ingested_us),
            "key": None if r.key_id is None else {"id": r.key_id, "prefix": r.key_prefix, "name": r.key_name},
        }
        for r in rows
    ]  # fmt: skip
