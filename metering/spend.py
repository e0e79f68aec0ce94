"""Spend counters at ingestion, and what `POST /v1/authorize` answers from them.

`count_stored` runs inside the transaction that stores a batch, with the rows that batch newly
stored (never a duplicate or a replay), so a counter moves exactly when its events commit. It
matches events to budgets in memory (`BudgetIndex`, cached per tenant, reloaded when the tenant's
budget generation changes), prices usage with the tenant's price book (the rollup's, so the
figures agree exactly), and writes each touched (budget, period) counter with one multi-row
upsert per batch. Crossing an alert threshold records the alert (`metering.alerts`) in the
same transaction.

Attribution of an event to a scope uses the event's own fields: its customer, actor, agent and
task_type (a usage event without task_type does not count towards a task_type budget). A job
(measure `jobs`) is a task whose deciding terminal event (the latest by time; on a tie the one
stored later, as the rollup orders by (time, seq)) is `task.completed`; it counts once, in the
period and scope of that event. A later terminal event moves it: a completed task that later
fails leaves its period's count, a task completed twice counts once, in the later period.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pandas as pd
from sqlalchemy import Connection, select, tuple_, update

from metering import alerts
from metering.budget_tables import budget_billing, budget_counters, budget_state, budget_tasks, budgets
from metering.budgets import (
    REM_PER_NANO,
    BilledRule,
    Budget,
    BudgetIndex,
    forecast_units,
    text,
    used_decimal,
)
from metering.bulk import write_rows
from metering.db import dialect_insert, name_locks, upsert
from metering.event_columns import CACHE_READ as _CACHE_READ
from metering.event_columns import CACHE_WRITE as _CACHE_WRITE
from metering.event_columns import CACHE_WRITE_1H as _CACHE_WRITE_1H
from metering.event_columns import CUSTOMER as _CUSTOMER
from metering.event_columns import INPUT as _INPUT
from metering.event_columns import MODEL as _MODEL
from metering.event_columns import OUTPUT as _OUTPUT
from metering.event_columns import PROVIDER as _PROVIDER
from metering.event_columns import TASK as _TASK
from metering.event_columns import TASK_TYPE as _TASK_TYPE
from metering.event_columns import TIME as _TIME
from metering.event_columns import TYPE as _TYPE
from metering.periods import Period, first_day, local_midnight, period_of
from metering.prices import price_usage
from metering.ratecards import PriceBook
from metering.tables import tenants

_CHUNK = 400
_COUNTER_COLUMNS = ("tenant_id", "budget_id", "period_start_us", "used", "used_rem", "unpriced_events")
_COUNTER_KEYS = ("tenant_id", "budget_id", "period_start_us")
_TASK_LOCKS = 0x746D_6274  # the advisory lock space of tasks' outcomes (PostgreSQL)
_US = 1_000_000
TERMINAL = ("task.completed", "task.failed", "task.cancelled")


@dataclass
class TenantBudgets:
    """A tenant's budgets as cached by a process: the index, time zone, price book."""

    generation: int
    timezone: str
    index: BudgetIndex
    billing: dict[str, BilledRule] = field(default_factory=dict)  # by customer, for `billed`
    watched: set[str] = field(default_factory=set)  # budgets with alerts or a forecast
    _book: PriceBook | None = None
    _overrides: list[dict[str, str]] = field(default_factory=list)

    def book(self) -> PriceBook:
        if self._book is None:
            self._book = PriceBook(self._overrides)
        return self._book


_cache: dict[int, TenantBudgets] = {}
_lock = threading.Lock()


def generation(connection: Connection, tenant_id: int) -> int:
    found = connection.execute(
        select(budget_state.c.generation).where(budget_state.c.tenant_id == tenant_id)
    ).scalar()
    return int(found or 0)


def bump_generation(connection: Connection, tenant_id: int) -> None:
    """Mark the tenant's budgets (or prices) changed: every process reloads them on next use."""
    upsert(
        connection, budget_state, {"tenant_id": tenant_id, "generation": 1}, key=("tenant_id",),
        update={"generation": budget_state.c.generation + 1},
    )  # fmt: skip
    with _lock:
        _cache.pop(tenant_id, None)


def tenant_budgets(connection: Connection, tenant_id: int) -> TenantBudgets:
    """The tenant's budgets, from this process's cache while its generation is current."""
    current = generation(connection, tenant_id)
    cached = _cache.get(tenant_id)
    if cached is not None and cached.generation == current:
        return cached
    rows = connection.execute(select(budgets.c.definition).where(budgets.c.tenant_id == tenant_id)).scalars()
    index = BudgetIndex.of(Budget.model_validate(orjson.loads(row)) for row in rows)
    timezone = (
        connection.execute(select(tenants.c.timezone).where(tenants.c.id == tenant_id)).scalar() or "UTC"
    )
    measures = index.measures()
    overrides = _overrides(connection, tenant_id) if measures & {"provider_cost", "billed"} else []
    billing = _billing(connection, tenant_id) if "billed" in measures else {}
    watched = {b.id for b in index.budgets if b.alerts or b.forecast}
    loaded = TenantBudgets(current, timezone, index, billing, watched, _overrides=overrides)
    with _lock:
        _cache[tenant_id] = loaded
    return loaded


def _billing(connection: Connection, tenant_id: int) -> dict[str, BilledRule]:
    rows = connection.execute(
        select(budget_billing.c.customer, budget_billing.c.rule).where(
            budget_billing.c.tenant_id == tenant_id
        )
    )
    return {row.customer: BilledRule.from_json(orjson.loads(row.rule)) for row in rows}


def _overrides(connection: Connection, tenant_id: int) -> list[dict[str, str]]:
    # As metering.pipeline.tenant_overrides (which imports ingestion, which imports this module).
    from metering.pipeline import tenant_overrides

    return tenant_overrides(connection, tenant_id)


# --- counting -----------------------------------------------------------------------------------


@dataclass
class Deltas:
    """Per (budget id, period start us): [units, rem, unpriced events]."""

    amounts: dict[tuple[str, int], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))

    def add(self, key: tuple[str, int], units: int, rem: int = 0, unpriced: int = 0) -> None:
        cell = self.amounts[key]
        cell[0] += units
        cell[1] += rem
        cell[2] += unpriced


class _Periods:
    """Local days of instants and period starts of local days, memoized per batch."""

    def __init__(self, timezone: str) -> None:
        self.timezone, self.zone = timezone, ZoneInfo(timezone)
        self._starts: dict[tuple[str, date], int] = {}

    def day(self, time_us: int) -> date:
        return datetime.fromtimestamp(time_us // _US, self.zone).date()

    def start_us(self, kind: str, day: date) -> int:
        key = (kind, day)
        found = self._starts.get(key)
        if found is None:
            first = first_day(kind, day)
            found = self._starts[key] = _us(local_midnight(first, self.timezone))
        return found


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * _US + moment.microsecond


def count_stored(
    connection: Connection,
    tenant_id: int,
    rows: Sequence[Sequence[Any]],
    attribution: Sequence[tuple[str | None, str | None]],
    *,
    now: datetime,
) -> int:
    """Count newly stored events (rows in `metering.event_columns.INSERT_COLUMNS` order, with each
    one's (actor, agent)) into the tenant's budget counters; returns the alerts raised."""
    if not rows:
        return 0
    state = tenant_budgets(connection, tenant_id)
    if not state.index:
        return 0
    measures = state.index.measures()
    periods = _Periods(state.timezone)
    deltas = Deltas()
    if measures & {"provider_cost", "tokens", "billed"}:
        _count_usage(
            state, periods, rows, attribution, deltas, cost=bool(measures & {"provider_cost", "billed"})
        )
    if measures & {"jobs", "billed"}:
        _count_jobs(connection, tenant_id, state, periods, rows, attribution, deltas)
    if not deltas.amounts:
        return 0
    totals = _write(connection, tenant_id, deltas, state.watched)
    return alerts.check(connection, tenant_id, state.index, state.timezone, deltas.amounts, totals, now=now)


def _count_usage(
    state: TenantBudgets,
    periods: _Periods,
    rows: Sequence[Sequence[Any]],
    attribution: Sequence[tuple[str | None, str | None]],
    deltas: Deltas,
    *,
    cost: bool,
) -> None:
    usage = [i for i, row in enumerate(rows) if row[_TYPE] == "usage"]
    if not usage:
        return
    nanos = rems = priced = None
    if cost:
        frame = pd.DataFrame(
            [(rows[i][_PROVIDER], rows[i][_MODEL], rows[i][_TIME], rows[i][_INPUT], rows[i][_OUTPUT],
              rows[i][_CACHE_READ], rows[i][_CACHE_WRITE], rows[i][_CACHE_WRITE_1H]) for i in usage],
            columns=["provider", "model", "time_us", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                     "cache_write_1h_tokens"],
        )  # fmt: skip
        prices = price_usage(frame, state.book())
        nanos, rems = prices["cost_nanos"].tolist(), prices["cost_rem"].tolist()
        priced = prices["priced"].tolist()
    # Sum per (attributes, local day) first: matching and period starts once per group.
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    billing = state.billing
    for position, i in enumerate(usage):
        row = rows[i]
        actor, agent = attribution[i]
        cell = groups[(row[_CUSTOMER], actor, agent, row[_TASK_TYPE], periods.day(row[_TIME]))]
        cell[0] += row[_INPUT] + row[_OUTPUT]
        if nanos is not None and rems is not None and priced is not None:
            cell[1] += nanos[position]
            cell[2] += rems[position]
            cell[3] += not priced[position]
            rule = billing.get(row[_CUSTOMER])
            if rule is not None:
                billable = {
                    "input": row[_INPUT] - row[_CACHE_READ] - row[_CACHE_WRITE], "cache_read": row[_CACHE_READ],
                    "cache_write": row[_CACHE_WRITE], "output": row[_OUTPUT],
                }  # fmt: skip
                cost_femtos = nanos[position] * REM_PER_NANO + rems[position]
                cell[4] += rule.usage_femtos(row[_PROVIDER], row[_MODEL], billable, cost_femtos)
    for (customer, actor, agent, task_type, day), (
        tokens,
        cost_nanos,
        cost_rem,
        unpriced,
        billed,
    ) in groups.items():
        attributes = {"customer": customer, "actor": actor, "agent": agent, "task_type": task_type}
        for budget in state.index.matching(attributes):
            key = (budget.id, periods.start_us(budget.period, day))
            if budget.measure == "tokens":
                deltas.add(key, tokens)
            elif budget.measure == "provider_cost":
                deltas.add(key, cost_nanos, cost_rem, unpriced)
            elif budget.measure == "billed" and billed:
                deltas.add(key, *divmod(billed, REM_PER_NANO))


@dataclass(frozen=True)
class _Outcome:
    status: str
    ended_us: int
    customer: str
    actor: str | None
    agent: str | None
    task_type: str | None


def _count_jobs(
    connection: Connection,
    tenant_id: int,
    state: TenantBudgets,
    periods: _Periods,
    rows: Sequence[Sequence[Any]],
    attribution: Sequence[tuple[str | None, str | None]],
    deltas: Deltas,
) -> None:
    deciding: dict[str, _Outcome] = {}
    for i, row in enumerate(rows):
        if row[_TYPE] not in TERMINAL:
            continue
        outcome = _Outcome(
            row[_TYPE].removeprefix("task."), row[_TIME], row[_CUSTOMER], *attribution[i], row[_TASK_TYPE]
        )
        known = deciding.get(row[_TASK])
        if known is None or outcome.ended_us >= known.ended_us:  # a tie: the one stored later
            deciding[row[_TASK]] = outcome
    if not deciding:
        return
    tasks = sorted(deciding)
    stored = _stored_outcomes(connection, tenant_id, tasks)
    changed: list[dict[str, Any]] = []
    for task in tasks:
        new, old = deciding[task], stored.get(task)
        if old is not None and new.ended_us < old.ended_us:
            continue  # an earlier terminal event: the stored one still decides
        if old is not None:
            _add_job(state, periods, old, -1, deltas)
        _add_job(state, periods, new, 1, deltas)
        changed.append({"tenant_id": tenant_id, "task": task, **new.__dict__})
    if changed:
        _write_outcomes(connection, changed)


def _add_job(state: TenantBudgets, periods: _Periods, outcome: _Outcome, sign: int, deltas: Deltas) -> None:
    attributes = {
        "customer": outcome.customer,
        "actor": outcome.actor,
        "agent": outcome.agent,
        "task_type": outcome.task_type,
    }
    day = periods.day(outcome.ended_us)
    rule = state.billing.get(outcome.customer)
    for budget in state.index.matching(attributes):
        if budget.measure == "jobs" and outcome.status == "completed":
            deltas.add((budget.id, periods.start_us(budget.period, day)), sign)
        elif budget.measure == "billed" and rule is not None:
            femtos = sign * rule.job_femtos(outcome.status, outcome.task_type)
            if femtos:
                deltas.add((budget.id, periods.start_us(budget.period, day)), *divmod(femtos, REM_PER_NANO))


def _stored_outcomes(connection: Connection, tenant_id: int, tasks: list[str]) -> dict[str, _Outcome]:
    """The tasks' stored deciding outcomes, locked for this transaction (PostgreSQL: one
    transaction-level advisory lock per task, taken in a fixed order, so concurrent batches
    with terminal events of one task decide it one after the other; SQLite: the write lock)."""
    name_locks(connection, _TASK_LOCKS, [f"{tenant_id}:{task}" for task in tasks])
    found: dict[str, _Outcome] = {}
    table = budget_tasks
    for start in range(0, len(tasks), _CHUNK):
        chunk = tasks[start : start + _CHUNK]
        query = select(table).where(table.c.tenant_id == tenant_id, table.c.task.in_(chunk))
        for row in connection.execute(query):
            found[row.task] = _Outcome(
                row.status, row.ended_us, row.customer, row.actor, row.agent, row.task_type
            )
    return found


def _write_outcomes(connection: Connection, changed: list[dict[str, Any]]) -> None:
    connection.execute(_outcome_upsert(dialect_insert(connection, budget_tasks)), changed)


def _outcome_upsert(base: Any) -> Any:
    columns = ("status", "ended_us", "customer", "actor", "agent", "task_type")
    return base.on_conflict_do_update(
        index_elements=["tenant_id", "task"], set_={c: base.excluded[c] for c in columns}
    )


def _write(
    connection: Connection, tenant_id: int, deltas: Deltas, watched: set[str]
) -> dict[tuple[str, int], tuple[int, int]]:
    """Add the deltas to the counters with one upsert (`metering.bulk.write_rows`: an
    executemany of one compiled statement on SQLite, COPY and one INSERT ... SELECT on
    PostgreSQL); then the totals after of the `watched` budgets' counters (those with
    alerts), read back in one query per chunk."""
    items = sorted(deltas.amounts.items())  # a fixed order: concurrent batches lock rows alike
    rows = [
        (tenant_id, budget_id, period_us, units, rem, unpriced)
        for (budget_id, period_us), (units, rem, unpriced) in items
    ]
    write_rows(
        connection,
        budget_counters,
        _COUNTER_COLUMNS,
        rows,
        on_conflict="add",
        keys=_COUNTER_KEYS,
        add=_COUNTER_COLUMNS[3:],
    )
    keys = [key for key, _ in items if key[0] in watched]
    table = budget_counters
    totals: dict[tuple[str, int], tuple[int, int]] = {}
    for start in range(0, len(keys), _CHUNK):
        query = select(table.c.budget_id, table.c.period_start_us, table.c.used, table.c.used_rem).where(
            table.c.tenant_id == tenant_id,
            tuple_(table.c.budget_id, table.c.period_start_us).in_(keys[start : start + _CHUNK]),
        )
        totals.update({(r[0], r[1]): (r[2], r[3]) for r in connection.execute(query)})
    return totals


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    """A budget in its current period: what its counter says."""

    budget: Budget
    period: Period
    used: int
    rem: int
    unpriced_events: int


def standings(
    connection: Connection, tenant_id: int, chosen: Sequence[Budget], timezone: str, *, now: datetime
) -> list[Standing]:
    """The budgets' counters in the periods holding `now` (one indexed read, no event scan)."""
    if not chosen:
        return []
    periods = {b.id: period_of(now, timezone, b.period) for b in chosen}
    keys = [(b.id, _us(periods[b.id].start)) for b in chosen]
    table = budget_counters
    found: dict[tuple[str, int], tuple[int, int, int]] = {}
    for start in range(0, len(keys), _CHUNK):
        query = select(
            table.c.budget_id,
            table.c.period_start_us,
            table.c.used,
            table.c.used_rem,
            table.c.unpriced_events,
        ).where(
            table.c.tenant_id == tenant_id,
            tuple_(table.c.budget_id, table.c.period_start_us).in_(keys[start : start + _CHUNK]),
        )
        for row in connection.execute(query):
            found[(row.budget_id, row.period_start_us)] = (row.used, row.used_rem, row.unpriced_events)
    out = []
    for budget, key in zip(chosen, keys, strict=True):
        used, rem, unpriced = found.get(key, (0, 0, 0))
        out.append(Standing(budget, periods[budget.id], used, rem, unpriced))
    return out


def counter_history(
    connection: Connection, tenant_id: int, budget_id: str
) -> list[tuple[int, int, int, int]]:
    """(period start us, used, rem, unpriced) of a budget's counters, newest first."""
    table = budget_counters
    query = (
        select(table.c.period_start_us, table.c.used, table.c.used_rem, table.c.unpriced_events)
        .where(table.c.tenant_id == tenant_id, table.c.budget_id == budget_id)
        .order_by(table.c.period_start_us.desc())
    )
    return [(row[0], row[1], row[2], row[3]) for row in connection.execute(query)]


def reset_counters(connection: Connection, tenant_id: int, budget_id: str) -> None:
    """Forget a budget's counters (its definition changed what it counts)."""
    connection.execute(
        update(budget_counters)
        .where(budget_counters.c.tenant_id == tenant_id, budget_counters.c.budget_id == budget_id)
        .values(used=0, used_rem=0, unpriced_events=0)
    )


def describe(standing: Standing, *, now: datetime) -> dict[str, Any]:
    """A budget with its current period's figures (decimal strings)."""
    budget, period = standing.budget, standing.period
    used = used_decimal(budget, standing.used, standing.rem)
    exact = standing.used * REM_PER_NANO + standing.rem if budget.money else standing.used
    forecast = forecast_units(exact, period, now)
    forecast_value = Decimal(forecast).scaleb(-15) if budget.money else Decimal(forecast)
    return {
        **budget.definition(), "used": text(used), "remaining": text(max(budget.limit - used, Decimal(0))),
        "period_start": period.start, "period_end": period.end, "forecast_value": text(forecast_value),
        "unpriced_events": standing.unpriced_events, "exceeded": used >= budget.limit,
    }  # fmt: skip


def authorize(
    connection: Connection, tenant_id: int, attributes: dict[str, str | None], *, now: datetime
) -> dict[str, Any]:
    """`POST /v1/authorize`: every budget whose scope the request falls under, from the
    counters; denied by the first enforced budget (by id) whose usage reached its limit."""
    state = tenant_budgets(connection, tenant_id)
    matching = sorted(state.index.matching(attributes), key=lambda b: b.id)
    listed = []
    denied_by = None
    for standing in standings(connection, tenant_id, matching, state.timezone, now=now):
        budget = standing.budget
        used = used_decimal(budget, standing.used, standing.rem)
        if budget.enforce and used >= budget.limit and denied_by is None:
            denied_by = budget.id
        listed.append({
            "id": budget.id, "measure": budget.measure, "limit": text(budget.limit), "used": text(used),
            "remaining": text(max(budget.limit - used, Decimal(0))), "period_end": standing.period.end,
            "enforced": budget.enforce,
        })  # fmt: skip
    return {"allowed": denied_by is None, "denied_by": denied_by, "budgets": listed}
