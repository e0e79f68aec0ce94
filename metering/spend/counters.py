"""Spend counters at ingestion, and what `POST /v1/authorize` answers from them.

`count_stored` runs inside the transaction that stores a batch, with the rows that batch newly
stored (never a duplicate or a replay), so a counter moves exactly when its events commit; or,
with `TASKMETER_SPEND_COUNTING=deferred`, in a follower's transaction after ingestion, over
committed events in seq order (`metering.spend.deferred`: ingestion then stores only). It
matches events to budgets in memory (`BudgetIndex`, cached per database and tenant, reloaded when
the tenant's budget generation changes), prices usage with the tenant's price book (the rollup's,
so the figures agree exactly), and writes each touched (budget, period) counter with one
multi-row upsert per batch. Crossing an alert threshold records the alert
(`metering.spend.alerts`) in the same transaction.

Attribution of an event to a scope uses the event's own fields: its customer, actor, agent and
task_type (a usage event without task_type does not count towards a task_type budget). A job
(measure `jobs`) is a task whose deciding terminal event (the latest by time; on a tie the one
stored later, as the rollup orders by (time, seq)) is `task.completed`; it counts once, in the
period and scope of that event. A later terminal event moves it: a completed task that later
fails leaves its period's count, a task completed twice counts once, in the later period.
"""

from __future__ import annotations

import secrets
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_CEILING, Decimal
from itertools import count as count_from
from itertools import repeat
from operator import is_, itemgetter
from typing import Any

import numpy as np
import orjson
from sqlalchemy import BindParameter, Connection, Engine, Pool, bindparam, event, select, tuple_, update

from metering.core.db import add_rows, dialect_insert, name_locks, upsert
from metering.core.event_columns import CACHE_READ as _CACHE_READ
from metering.core.event_columns import CACHE_WRITE as _CACHE_WRITE
from metering.core.event_columns import CACHE_WRITE_1H as _CACHE_WRITE_1H
from metering.core.event_columns import CUSTOMER as _CUSTOMER
from metering.core.event_columns import INPUT as _INPUT
from metering.core.event_columns import MODEL as _MODEL
from metering.core.event_columns import OUTPUT as _OUTPUT
from metering.core.event_columns import PROVIDER as _PROVIDER
from metering.core.event_columns import TASK as _TASK
from metering.core.event_columns import TASK_TYPE as _TASK_TYPE
from metering.core.event_columns import TIME as _TIME
from metering.core.event_columns import TYPE as _TYPE
from metering.core.periods import Period, PeriodKind, first_day, local_midnight, period_of
from metering.core.tables import tenants
from metering.costs.book import tenant_overrides
from metering.costs.prices import price_arrays
from metering.costs.ratecards import PriceBook
from metering.spend import alerts
from metering.spend.budget_tables import (
    budget_billing,
    budget_counters,
    budget_state,
    budget_tasks,
    budgets,
    spend_watermarks,
)
from metering.spend.budgets import (
    REM_PER_NANO,
    BilledRule,
    Budget,
    BudgetIndex,
    forecast_units,
    text,
    used_decimal,
)

_CHUNK = 400
_COUNTER_COLUMNS = ("tenant_id", "budget_id", "period_start_us", "used", "used_rem", "unpriced_events")
_COUNTER_KEYS = ("tenant_id", "budget_id", "period_start_us")
_TASK_LOCKS = 0x746D_6274  # the advisory lock space of tasks' outcomes (PostgreSQL)
_US = 1_000_000
_DAY_US = 86_400 * _US
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
MEASURE_CODES = {"provider_cost": 0, "billed": 1, "tokens": 2, "jobs": 3}
PERIOD_CODES = {"day": 0, "week": 1, "month": 2}
_MEMO = 100_000  # entries of a tenant's memos before they start over
_GENERATIONS = 2**63 - 1  # budget generations are 1 .. 2**63 - 1 (a signed 64-bit column)
TERMINAL = ("task.completed", "task.failed", "task.cancelled")
_TERMINAL_TYPES = frozenset(TERMINAL)


@dataclass(frozen=True)
class Marks:
    """Where a watched budget's alerts fire, in exact counter units (femto-units for money, the
    count otherwise): a batch needs `metering.spend.alerts.check` only for counters that pass one."""

    money: bool
    thresholds: tuple[int, ...]  # the least exact units that reach each alert fraction
    forecast_limit: int | None  # the limit, when the budget has a forecast alert

    @classmethod
    def of(cls, budget: Budget) -> Marks:
        scale = 10**15 if budget.money else 1
        # As `metering.spend.budgets.reached` computes it (the same Decimal operations), then the least
        # integer at or above it: an integer counter reaches the fraction iff it reaches that.
        thresholds = tuple(
            int((budget.limit * fraction * scale).to_integral_value(rounding=ROUND_CEILING))
            for fraction in budget.alerts
        )
        return cls(budget.money, thresholds, budget.limit_units() * (_US if budget.money else 1) if budget.forecast else None)

    def exact(self, used: int, rem: int) -> int:
        return used * REM_PER_NANO + rem if self.money else used

    def may_fire(self, before: int, after: int) -> bool:
        """Whether going from `before` to `after` can raise an alert: it passes a threshold, or
        (forecast) the period-end forecast can pass the limit. The forecast of x is at least x
        and at most x times the days of the period (<= 31), so a forecast alert needs
        before < limit <= 31 x after; `alerts.check` decides exactly."""
        if any(before < threshold <= after for threshold in self.thresholds):
            return True
        limit = self.forecast_limit
        return limit is not None and before < limit <= after * 31


@dataclass
class TenantBudgets:
    """A tenant's budgets as cached by a process: the index, time zone, price book, and the
    memos that make counting a batch cheap (scopes matched, local midnights, period starts)."""

    generation: int
    timezone: str
    index: BudgetIndex
    billing: dict[str, BilledRule] = field(default_factory=dict)  # by customer, for `billed`
    watched: set[str] = field(default_factory=set)  # budgets with alerts or a forecast
    # The tenant has outcome rules: jobs count when they settle (`pricing.budget_settlement`
    # recounts them), so ingestion counts no job (neither `jobs` nor the jobs of `billed`).
    jobs_at_settlement: bool = False
    _book: PriceBook | None = None
    _overrides: list[dict[str, str]] = field(default_factory=list)
    marks: dict[str, Marks] = field(default_factory=dict)  # of the watched budgets
    _matches: dict[tuple[str | None, ...], tuple[Budget, ...]] = field(default_factory=dict)
    _midnights: dict[int, int] = field(default_factory=dict)  # local day ordinal -> its first instant (us)
    _starts: dict[tuple[str, int], int] = field(default_factory=dict)  # (period kind, day ordinal) -> start us
    _slots: dict[tuple[str | None, ...], np.ndarray] = field(default_factory=dict)
    _customer_slots: dict[str | None, np.ndarray] = field(default_factory=dict)  # `_slots` of (customer, None, None, None)

    def __post_init__(self) -> None:
        # The budgets as arrays by slot (their position in the index, which sorts them by id).
        listed = self.index.budgets
        self.measures = frozenset(self.index.measures())
        self.ids = np.array([b.id for b in listed], dtype=object)
        self.slot_of = {b.id: slot for slot, b in enumerate(listed)}
        self.measure = np.array([MEASURE_CODES[b.measure] for b in listed], dtype=np.int64)
        self.kind = np.array([PERIOD_CODES[b.period] for b in listed], dtype=np.int64)
        self.watched_slots = np.array([b.id in self.marks for b in listed], dtype=bool)
        # Alert marks as floats, for a vectorized first look (`_passing` checks exactly after).
        width = max((len(m.thresholds) for m in self.marks.values()), default=0)
        self.mark_floats = np.full((len(listed), width), np.inf)
        self.forecast_floats = np.full(len(listed), np.inf)
        for slot, budget in enumerate(listed):
            marks = self.marks.get(budget.id)
            if marks is not None:
                self.mark_floats[slot, : len(marks.thresholds)] = marks.thresholds
                if marks.forecast_limit is not None:
                    self.forecast_floats[slot] = marks.forecast_limit

    def slots_of(self, scopes: Sequence[tuple[str | None, ...]]) -> list[np.ndarray]:
        """`slots` of each (customer, actor, agent, task_type): one C-level pass over the memo,
        `slots` for those it lacks."""
        found: list[np.ndarray | None] = list(map(self._slots.get, scopes))
        if any(map(is_, found, repeat(None))):  # (not `None in found`: that compares arrays with ==)
            found = [slots if slots is not None else self.slots(*key) for key, slots in zip(scopes, found, strict=True)]
        return found  # type: ignore[return-value]

    def slots_of_customers(self, customers: Sequence[str | None]) -> list[np.ndarray]:
        """`slots_of` scopes with neither actor, agent nor task type, given by customer (no tuple
        made per scope)."""
        memo = self._customer_slots
        found: list[np.ndarray | None] = list(map(memo.get, customers))
        if any(map(is_, found, repeat(None))):
            if len(memo) >= _MEMO:
                memo.clear()
            for i, customer in enumerate(customers):
                if found[i] is None:
                    found[i] = memo[customer] = self.slots(customer, None, None, None)
        return found  # type: ignore[return-value]

    def slots(self, customer: str | None, actor: str | None, agent: str | None, task_type: str | None) -> np.ndarray:
        """`matching` as the budgets' slots."""
        key = (customer, actor, agent, task_type)
        found = self._slots.get(key)
        if found is None:
            if len(self._slots) >= _MEMO:
                self._slots.clear()
            found = self._slots[key] = np.array([self.slot_of[b.id] for b in self.matching(*key)], dtype=np.int64)
        return found

    def book(self) -> PriceBook:
        if self._book is None:
            self._book = PriceBook(self._overrides)
        return self._book

    def matching(self, customer: str | None, actor: str | None, agent: str | None, task_type: str | None) -> tuple[Budget, ...]:
        """The budgets an event or request with these attributes falls under (memoized)."""
        key = (customer, actor, agent, task_type)
        found = self._matches.get(key)
        if found is None:
            if len(self._matches) >= _MEMO:
                self._matches.clear()
            attributes = {"customer": customer, "actor": actor, "agent": agent, "task_type": task_type}
            found = self._matches[key] = tuple(self.index.matching(attributes))
        return found

    def midnight_us(self, ordinal: int) -> int:
        found = self._midnights.get(ordinal)
        if found is None:
            if len(self._midnights) >= _MEMO:
                self._midnights.clear()
            found = self._midnights[ordinal] = _us(local_midnight(date.fromordinal(ordinal), self.timezone))
        return found

    def start_us(self, kind: str, ordinal: int) -> int:
        """The first instant (us) of the period of `kind` holding the local day."""
        key = (kind, ordinal)
        found = self._starts.get(key)
        if found is None:
            if len(self._starts) >= _MEMO:
                self._starts.clear()
            found = self._starts[key] = self.midnight_us(first_day(kind, date.fromordinal(ordinal)).toordinal())
        return found

    def local_days(self, time_us: np.ndarray) -> np.ndarray:
        """The tenant-local day (proleptic ordinal) of each instant: the last local midnight at
        or before it, among those of its UTC day and the days either side (offsets are under a
        day)."""
        near = np.unique(time_us // _DAY_US)
        days = np.unique(np.concatenate([near - 1, near, near + 1])) + _EPOCH_ORDINAL
        midnights = np.fromiter((self.midnight_us(day) for day in days.tolist()), dtype=np.int64, count=len(days))
        return days[np.searchsorted(midnights, time_us, side="right") - 1]


@dataclass
class _Kept:
    """What this process keeps of one database, by tenant id: budgets and authorize snapshots."""

    budgets: dict[int, TenantBudgets] = field(default_factory=dict)
    snapshots: dict[int, Snapshot] = field(default_factory=dict)


# By the engine's connection pool: one database as this process reaches it (engines derived with
# `execution_options` share their engine's pool), so two databases never share an entry, even
# where tenant ids and generations repeat (a new database, another SQLite file, one in memory);
# a pool's entries go with it (`Engine.dispose` replaces it).
_kept: weakref.WeakKeyDictionary[Pool, _Kept] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _kept_by(bind: Engine | Connection) -> _Kept:
    pool = bind.engine.pool
    found = _kept.get(pool)
    if found is None:
        with _lock:
            found = _kept.setdefault(pool, _Kept())
    return found


def generation(connection: Connection, tenant_id: int) -> int:
    found = connection.execute(
        select(budget_state.c.generation).where(budget_state.c.tenant_id == tenant_id)
    ).scalar()
    return int(found or 0)


def counting_state(connection: Connection, tenant_id: int) -> tuple[int, int | None]:
    """The tenant's budget generation and its follower's watermark (None: counted at
    ingestion), in one statement: ingestion reads both for every batch."""
    found, through = connection.execute(_COUNTING_STATE, {"tenant_id": tenant_id}).one()
    return int(found or 0), through


def _counting_state() -> Any:
    """`counting_state`'s statement, built once (building it per batch cost more than running it)."""
    tenant: BindParameter[int] = bindparam("tenant_id")
    current = select(budget_state.c.generation).where(budget_state.c.tenant_id == tenant).scalar_subquery()
    mark = select(spend_watermarks.c.counted_through).where(spend_watermarks.c.tenant_id == tenant).scalar_subquery()
    return select(current, mark)


_COUNTING_STATE = _counting_state()


def bump_generation(connection: Connection, tenant_id: int) -> None:
    """Mark the tenant's budgets (or prices) changed: every process reloads them on next use.

    The new generation is drawn at random (63 bits, never 0, which stands for "no row"), not
    counted up: a change that loaded a process's cache in its own transaction and then rolled
    back leaves that cache keyed by a generation no later change will reuse (counting up, another
    process's next change would take the same number and the stale budgets would be served)."""
    drawn = secrets.randbelow(_GENERATIONS) + 1
    upsert(
        connection, budget_state, {"tenant_id": tenant_id, "generation": drawn}, key=("tenant_id",),
        update={"generation": drawn},
    )  # fmt: skip
    kept = _kept_by(connection)
    with _lock:
        kept.budgets.pop(tenant_id, None)
        kept.snapshots.pop(tenant_id, None)


def tenant_budgets(connection: Connection, tenant_id: int, current: int | None = None) -> TenantBudgets:
    """The tenant's budgets, from this process's cache while its generation (`current`, when the
    caller has just read it) is current."""
    current = generation(connection, tenant_id) if current is None else current
    kept = _kept_by(connection)
    cached = kept.budgets.get(tenant_id)
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
    settled = connection.execute(
        select(budget_state.c.jobs_at_settlement).where(budget_state.c.tenant_id == tenant_id)
    ).scalar()
    marks = {b.id: Marks.of(b) for b in index.budgets if b.id in watched}
    loaded = TenantBudgets(
        current, timezone, index, billing, watched, jobs_at_settlement=bool(settled), _overrides=overrides, marks=marks
    )
    with _lock:
        kept.budgets[tenant_id] = loaded
    return loaded


def _billing(connection: Connection, tenant_id: int) -> dict[str, BilledRule]:
    rows = connection.execute(
        select(budget_billing.c.customer, budget_billing.c.rule).where(
            budget_billing.c.tenant_id == tenant_id
        )
    )
    return {row.customer: BilledRule.from_json(orjson.loads(row.rule)) for row in rows}


def _overrides(connection: Connection, tenant_id: int) -> list[dict[str, str]]:
    return tenant_overrides(connection, tenant_id)


# --- counting -----------------------------------------------------------------------------------


Counters = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Columns of counter moves: budget slot, period start (us), units, rem, unpriced events."""


@dataclass
class Deltas:
    """What a batch adds to counters: columns from the usage events (`Counters`), and, per
    (budget id, period start us), [units, rem, unpriced events] from the jobs."""

    amounts: dict[tuple[str, int], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    columns: list[Counters] = field(default_factory=list)

    def add(self, key: tuple[str, int], units: int, rem: int = 0, unpriced: int = 0) -> None:
        cell = self.amounts[key]
        cell[0] += units
        cell[1] += rem
        cell[2] += unpriced

    def merged(self, state: TenantBudgets) -> Counters | None:
        """Every move summed per (budget, period), sorted by budget id then period start."""
        parts = list(self.columns)
        if self.amounts:
            keys = list(self.amounts)
            values = list(self.amounts.values())
            units, rem, unpriced = (np.array([v[i] for v in values], dtype=np.int64) for i in range(3))
            slots = np.array([state.slot_of[b] for b, _ in keys], dtype=np.int64)
            parts.append((slots, np.array([p for _, p in keys], dtype=np.int64), units, rem, unpriced))
        if not parts:
            return None
        slot, period_us, units, rem, unpriced = (np.concatenate(column) for column in zip(*parts, strict=True))
        order = np.lexsort((period_us, slot))
        slot, period_us = slot[order], period_us[order]
        starts = np.flatnonzero(np.concatenate(([True], (slot[1:] != slot[:-1]) | (period_us[1:] != period_us[:-1]))))
        if not len(starts):
            return None
        def summed(values: np.ndarray) -> np.ndarray:
            return np.add.reduceat(values[order], starts)

        return slot[starts], period_us[starts], summed(units), summed(rem), summed(unpriced)


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * _US + moment.microsecond


def _period_firsts(kind: np.ndarray, day: np.ndarray) -> np.ndarray:
    """The first local day (ordinal) of the period of `kind` (PERIOD_CODES) holding each day."""
    week = day - (day - 1) % 7  # ordinal 1, 0001-01-01, is a Monday
    days = (day - _EPOCH_ORDINAL).astype("datetime64[D]")
    month = days.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) + _EPOCH_ORDINAL
    return np.select([kind == 0, kind == 1], [day, week], month)


_TOKEN_POSITIONS = (_INPUT, _OUTPUT, _CACHE_READ, _CACHE_WRITE, _CACHE_WRITE_1H)


@dataclass(frozen=True)
class Stored:
    """Events as counting reads them, column by column (each a sequence over the events, in one
    order): what `count_usage` and `deciding_outcomes` take. `tasks` may hold None for an event
    that is not a terminal one (`TERMINAL`): only those are read."""

    types: Sequence[str]
    times: Sequence[int]
    customers: Sequence[str]
    tasks: Sequence[str | None]
    task_types: Sequence[str | None]
    providers: Sequence[str]  # a usage event's (None for the others)
    models: Sequence[str]  # a usage event's (None for the others)
    actors: Sequence[str | None]
    agents: Sequence[str | None]
    tokens: tuple[Sequence[int], ...]  # input, output, cache read, cache write, cache write (1h)

    def __len__(self) -> int:
        return len(self.types)

    @classmethod
    def of_rows(cls, rows: Sequence[Sequence[Any]], attribution: Sequence[tuple[str | None, str | None]]) -> Stored:
        """Rows in `INSERT_COLUMNS` order with each one's (actor, agent), as columns: each in one C-level pass (transposing every row costs more)."""
        def column(position: int) -> list[Any]:
            return list(map(itemgetter(position), rows))

        count = len(rows)
        if attribution.count((None, None)) == count:  # no actor or agent in the batch
            actors = agents = [None] * count
        else:
            actors, agents = list(map(itemgetter(0), attribution)), list(map(itemgetter(1), attribution))
        return cls(
            column(_TYPE), column(_TIME), column(_CUSTOMER), column(_TASK), column(_TASK_TYPE), column(_PROVIDER),
            column(_MODEL), actors, agents, tuple(column(position) for position in _TOKEN_POSITIONS),
        )  # fmt: skip

    def taken(self, positions: Sequence[int]) -> Stored:
        """The events at `positions`, in that order."""
        def pick(values: Sequence[Any]) -> list[Any]:
            return list(map(values.__getitem__, positions))

        return Stored(
            pick(self.types), pick(self.times), pick(self.customers), pick(self.tasks), pick(self.task_types),
            pick(self.providers), pick(self.models), pick(self.actors), pick(self.agents), tuple(map(pick, self.tokens)),
        )  # fmt: skip


def count_ingested(
    connection: Connection,
    tenant_id: int,
    rows: Sequence[Sequence[Any]],
    attribution: Sequence[tuple[str | None, str | None]],
    *,
    now: datetime,
) -> int:
    """What ingestion calls for the rows a batch newly stored: `count_stored`, unless a follower
    counts the tenant's events (deferred counting: the tenant has a watermark,
    `metering.spend.deferred`), in which case storing them is all. One statement reads both the
    watermark and the budget generation."""
    if not rows:
        return 0
    current, following = counting_state(connection, tenant_id)
    if following is not None:
        return 0
    return count_stored(connection, tenant_id, rows, attribution, now=now, budget_generation=current)


def count_stored(
    connection: Connection,
    tenant_id: int,
    rows: Sequence[Sequence[Any]],
    attribution: Sequence[tuple[str | None, str | None]],
    *,
    now: datetime,
    budget_generation: int | None = None,
) -> int:
    """Count newly stored events (rows in `metering.core.event_columns.INSERT_COLUMNS` order, with each
    one's (actor, agent); columns past those are ignored) into the tenant's budget counters, in
    the caller's transaction; returns the alerts raised. Called by ingestion (`count_ingested`)
    and, with committed events in seq order, by the follower of deferred counting
    (`metering.spend.deferred`). `budget_generation`: the tenant's budget generation, when the
    caller has just read it.

    One batch costs: one read of the budget generation, array work over the batch (local days,
    prices, sums per (scope, local day)), a dictionary read per group for its budgets, and one
    upsert of every touched counter that returns the totals after it; `metering.spend.alerts.check`
    runs only for the counters whose move passes one of their budget's alert marks."""
    if not rows:
        return 0
    state = tenant_budgets(connection, tenant_id, budget_generation)
    if not state.index:
        return 0
    stored = Stored.of_rows(rows, attribution)
    return add_counted(connection, tenant_id, state, stored, usage_deltas(state, stored), now=now)


def usage_deltas(state: TenantBudgets, stored: Stored) -> Deltas:
    """The first half of `count_stored`, which reads nothing: what the usage events among
    `stored` add to the counters of the budgets in `state` (the deferred follower computes it
    outside its lock)."""
    deltas = Deltas()
    measures = state.measures
    if len(stored) and measures & {"provider_cost", "tokens", "billed"}:
        count_usage(state, stored, deltas, cost=bool(measures & {"provider_cost", "billed"}))
    return deltas


def add_counted(
    connection: Connection,
    tenant_id: int,
    state: TenantBudgets,
    stored: Stored,
    deltas: Deltas,
    *,
    now: datetime,
) -> int:
    """The second half of `count_stored`, in the caller's transaction (and locks): the jobs of
    `stored` (their tasks' stored outcomes read and written), then one upsert of every counter
    the usage `deltas` (`usage_deltas` of the same events and `state`) and the jobs move, and
    the alerts those moves raise; returns how many."""
    if state.measures & {"jobs", "billed"} and not state.jobs_at_settlement:
        _count_jobs(connection, tenant_id, state, stored, deltas)
    counters = deltas.merged(state)
    if counters is None:
        return 0
    slot, period_us, units, rem, unpriced = counters
    ids = state.ids[slot].tolist()
    used_after, rem_after, unpriced_after = _write(connection, tenant_id, state, counters, ids)
    _pending(connection).append((tenant_id, ids, period_us, used_after, rem_after, unpriced_after))  # lists at commit, if pushed
    passing = _passing(state, counters, used_after, rem_after)
    if not passing:
        return 0
    ids = state.ids
    amounts = {(ids[slot[i]], int(period_us[i])): [int(units[i]), int(rem[i]), int(unpriced[i])] for i in passing}
    totals = {(ids[slot[i]], int(period_us[i])): (int(used_after[i]), int(rem_after[i])) for i in passing}
    return alerts.check(connection, tenant_id, state.index, state.timezone, amounts, totals, now=now)


def _passing(state: TenantBudgets, counters: Counters, used: np.ndarray, rem: np.ndarray) -> list[int]:
    """The counters whose move in this batch may raise an alert: a look in floats with a margin
    over all of them, then `Marks.may_fire` exactly for the few it keeps."""
    slot, _, units, rems, _ = counters
    money = state.measure[slot] <= 1  # provider_cost, billed
    scale = np.where(money, float(REM_PER_NANO), 1.0)
    after = used * scale + np.where(money, rem, 0)
    before = after - (units * scale + np.where(money, rems, 0))
    slack = np.abs(after) * 1e-9 + 2  # float rounding, with room to spare
    marks = state.mark_floats[slot]
    look = ((before[:, None] < marks + slack[:, None]) & (marks <= after[:, None] + slack[:, None])).any(axis=1)
    forecast = state.forecast_floats[slot]
    look |= (before < forecast + slack) & (forecast <= after * 31 + 31 * slack)
    look &= state.watched_slots[slot]
    out = []
    for i in np.flatnonzero(look).tolist():
        marks_of = state.marks[state.ids[slot[i]]]
        exact_after = marks_of.exact(int(used[i]), int(rem[i]))
        if marks_of.may_fire(exact_after - marks_of.exact(int(units[i]), int(rems[i])), exact_after):
            out.append(i)
    return out


def count_usage(state: TenantBudgets, stored: Stored, deltas: Deltas, *, cost: bool) -> None:
    """The usage events among `stored`: tokens, cost (priced as the rollup prices them, exactly)
    and billed amounts summed per (scope attributes, local day) with array operations, then each
    group added to the counters of the budgets its attributes fall under."""
    types = stored.types
    usage_count = types.count("usage")  # (the common batch is all usage: one C-level pass)
    if usage_count < len(types):
        if not usage_count:
            return
        stored = stored.taken([i for i, kind in enumerate(types) if kind == "usage"])
    count = len(stored)
    actors, agents = stored.actors, stored.agents

    def ints(values: Sequence[int]) -> np.ndarray:
        return np.fromiter(values, dtype=np.int64, count=count)

    tokens = stored.tokens
    times, inputs, outputs = ints(stored.times), ints(tokens[0]), ints(tokens[1])
    days = state.local_days(times)
    scope_of_row, scopes, by_customer = _scopes(stored.customers, actors, agents, stored.task_types)
    first = int(days.min())
    span = int(days.max()) - first + 1
    groups, group_of_row = np.unique(scope_of_row * span + (days - first), return_inverse=True)
    order = np.argsort(group_of_row, kind="stable")
    ordered = group_of_row[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))

    def sums(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values[order], starts)

    token_sums = sums(inputs + outputs)
    cost_nanos = cost_rem = unpriced = np.zeros(len(groups), dtype=np.int64)
    billed: dict[int, int] = defaultdict(int)
    if cost:
        counts = {
            "input_tokens": inputs, "output_tokens": outputs, "cache_read_tokens": ints(tokens[2]),
            "cache_write_tokens": ints(tokens[3]), "cache_write_1h_tokens": ints(tokens[4]),
        }  # fmt: skip
        priced, nanos, rems = price_arrays(stored.providers, stored.models, times, counts, state.book())
        cost_nanos, cost_rem = sums(nanos), sums(rems)
        unpriced = sums((~priced).astype(np.int64))
        if state.billing:
            _bill(state, stored, nanos.tolist(), rems.tolist(), group_of_row.tolist(), billed)
    # Each group against each budget of its scope: (group, slot) pairs, gathered without a loop.
    matched = state.slots_of_customers(scopes) if by_customer else state.slots_of(scopes)
    lengths = np.fromiter(map(len, matched), dtype=np.int64, count=len(matched))
    offsets = np.cumsum(lengths) - lengths
    flat = np.concatenate(matched) if matched else np.zeros(0, dtype=np.int64)
    group_scope, group_day = np.divmod(groups, span)
    per_group = lengths[group_scope]
    pair_group = np.repeat(np.arange(len(groups)), per_group)
    within = np.arange(len(pair_group)) - np.repeat(np.cumsum(per_group) - per_group, per_group)
    pair_slot = flat[offsets[group_scope][pair_group] + within]
    measure = state.measure[pair_slot]
    billed_nanos, billed_rem = np.zeros(len(groups), dtype=np.int64), np.zeros(len(groups), dtype=np.int64)
    for group, femtos in billed.items():
        billed_nanos[group], billed_rem[group] = divmod(femtos, REM_PER_NANO)
    tokens_, nanos_, rem_, unpriced_ = (np.asarray(v, dtype=np.int64) for v in (token_sums, cost_nanos, cost_rem, unpriced))
    cost_pair, billed_pair = measure == MEASURE_CODES["provider_cost"], measure == MEASURE_CODES["billed"]
    units = np.select([measure == MEASURE_CODES["tokens"], cost_pair, billed_pair], [tokens_[pair_group], nanos_[pair_group], billed_nanos[pair_group]], 0)
    rem = np.select([cost_pair, billed_pair], [rem_[pair_group], billed_rem[pair_group]], 0)
    keep = (measure != MEASURE_CODES["jobs"]) & (~billed_pair | (units != 0) | (rem != 0))
    if not keep.any():
        return
    pair_slot, pair_group, units, rem = pair_slot[keep], pair_group[keep], units[keep], rem[keep]
    firsts = _period_firsts(state.kind[pair_slot], first + group_day[pair_group])
    distinct, which = np.unique(firsts, return_inverse=True)
    midnights = np.fromiter((state.midnight_us(day) for day in distinct.tolist()), dtype=np.int64, count=len(distinct))
    unpriced_pair = np.where(cost_pair[keep], unpriced_[pair_group], 0)
    deltas.columns.append((pair_slot, midnights[which], units, rem, unpriced_pair))


def _scopes(
    customers: Sequence[str | None], actors: Sequence[str | None], agents: Sequence[str | None], task_types: Sequence[str | None]
) -> tuple[np.ndarray, list[Any], bool]:
    """Each row's scope number (0, 1, ... in order of first appearance) and the distinct
    (customer, actor, agent, task_type) scopes in that order, with no Python step per row:
    `setdefault` keeps the row number where each scope first appears (dicts keep insertion
    order), and those row numbers, ranked, are the scope numbers. A batch without actors,
    agents and task types has its scopes as customers alone (no tuple made per row or scope),
    and says so (the last item returned)."""
    count = len(customers)
    plain = actors.count(None) == count and agents.count(None) == count and task_types.count(None) == count
    seen: dict[Any, int] = {}
    keys: Any = customers if plain else zip(customers, actors, agents, task_types, strict=True)
    first_row = np.fromiter(map(seen.setdefault, keys, count_from()), dtype=np.int64, count=count)
    rank = np.zeros(count, dtype=np.int64)
    rank[np.fromiter(seen.values(), dtype=np.int64, count=len(seen))] = np.arange(len(seen))
    return rank[first_row], list(seen), plain


def _bill(
    state: TenantBudgets, stored: Stored, nanos: list[int], rems: list[int], group_of_row: list[int],
    billed: dict[int, int],
) -> None:  # fmt: skip
    """What each usage event bills under its customer's plan (femto-units), summed per group."""
    inputs, outputs, cache_reads, cache_writes = stored.tokens[:4]
    for position, customer in enumerate(stored.customers):
        rule = state.billing.get(customer)
        if rule is None:
            continue
        billable = {
            "input": inputs[position] - cache_reads[position] - cache_writes[position],
            "cache_read": cache_reads[position], "cache_write": cache_writes[position], "output": outputs[position],
        }  # fmt: skip
        cost_femtos = nanos[position] * REM_PER_NANO + rems[position]
        provider, model = stored.providers[position], stored.models[position]
        billed[group_of_row[position]] += rule.usage_femtos(provider, model, billable, cost_femtos)


@dataclass(frozen=True)
class Outcome:
    """A task's deciding terminal event, as `budget_tasks` keeps it."""

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
    stored: Stored,
    deltas: Deltas,
) -> None:
    deciding = deciding_outcomes(stored, {})
    if not deciding:
        return
    tasks = sorted(deciding)
    kept = _stored_outcomes(connection, tenant_id, tasks)
    changed: list[dict[str, Any]] = []
    for task in tasks:
        new, old = deciding[task], kept.get(task)
        if old is not None and new.ended_us < old.ended_us:
            continue  # an earlier terminal event: the stored one still decides
        if old is not None:
            add_job(state, old, -1, deltas)
        add_job(state, new, 1, deltas)
        changed.append({"tenant_id": tenant_id, "task": task, **new.__dict__})
    if changed:
        write_outcomes(connection, changed)


def deciding_outcomes(stored: Stored, deciding: dict[str, Outcome]) -> dict[str, Outcome]:
    """Each task's deciding terminal event among `stored` (in seq order) and those already in
    `deciding`, which it updates and returns: the latest by time; on a tie the one stored later."""
    types = stored.types
    if types.count("usage") == len(types) or _TERMINAL_TYPES.isdisjoint(types):  # the common batch: C-level passes
        return deciding
    for i, kind in enumerate(types):
        if kind not in _TERMINAL_TYPES:
            continue
        outcome = Outcome(
            kind.removeprefix("task."), stored.times[i], stored.customers[i], stored.actors[i], stored.agents[i],
            stored.task_types[i],
        )  # fmt: skip
        task = stored.tasks[i]
        assert task is not None  # a terminal event's task is read
        known = deciding.get(task)
        if known is None or outcome.ended_us >= known.ended_us:
            deciding[task] = outcome
    return deciding


def add_job(state: TenantBudgets, outcome: Outcome, sign: int, deltas: Deltas) -> None:
    """A job into (`sign` 1) or out of (-1) the `jobs` and `billed` counters of its period and scope."""
    day = int(state.local_days(np.array([outcome.ended_us], dtype=np.int64))[0])
    rule = state.billing.get(outcome.customer)
    for budget in state.matching(outcome.customer, outcome.actor, outcome.agent, outcome.task_type):
        if budget.measure == "jobs" and outcome.status == "completed":
            deltas.add((budget.id, state.start_us(budget.period, day)), sign)
        elif budget.measure == "billed" and rule is not None:
            femtos = sign * rule.job_femtos(outcome.status, outcome.task_type)
            if femtos:
                deltas.add((budget.id, state.start_us(budget.period, day)), *divmod(femtos, REM_PER_NANO))


def _stored_outcomes(connection: Connection, tenant_id: int, tasks: list[str]) -> dict[str, Outcome]:
    """The tasks' stored deciding outcomes, locked for this transaction (PostgreSQL: one
    transaction-level advisory lock per task, taken in a fixed order, so concurrent batches
    with terminal events of one task decide it one after the other; SQLite: the write lock)."""
    name_locks(connection, _TASK_LOCKS, [f"{tenant_id}:{task}" for task in tasks])
    found: dict[str, Outcome] = {}
    table = budget_tasks
    for start in range(0, len(tasks), _CHUNK):
        chunk = tasks[start : start + _CHUNK]
        query = select(table).where(table.c.tenant_id == tenant_id, table.c.task.in_(chunk))
        for row in connection.execute(query):
            found[row.task] = Outcome(
                row.status, row.ended_us, row.customer, row.actor, row.agent, row.task_type
            )
    return found


def write_outcomes(connection: Connection, changed: list[dict[str, Any]]) -> None:
    connection.execute(_outcome_upsert(dialect_insert(connection, budget_tasks)), changed)


def _outcome_upsert(base: Any) -> Any:
    columns = ("status", "ended_us", "customer", "actor", "agent", "task_type")
    return base.on_conflict_do_update(
        index_elements=["tenant_id", "task"], set_={c: base.excluded[c] for c in columns}
    )


def _write(
    connection: Connection, tenant_id: int, state: TenantBudgets, counters: Counters, ids: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add the moves to the counters (`ids`: their budgets' ids) with one upsert that returns each
    counter's (used, rem, unpriced) after it (`metering.core.db.add_rows`), so no counter is read
    back; returned in `counters` order (the upsert returns its rows in no set order: they are put
    back in it by (budget slot, period start), with arrays)."""
    slot, period_us, units, rem, unpriced = counters
    rows = list(zip(ids, period_us.tolist(), units.tolist(), rem.tolist(), unpriced.tolist(), strict=True))
    # sorted by (budget id, period): concurrent batches lock rows alike
    written = add_rows(
        connection, budget_counters, _COUNTER_COLUMNS[1:], rows, keys=_COUNTER_KEYS, add=_COUNTER_COLUMNS[3:],
        fixed={"tenant_id": tenant_id},
    )  # fmt: skip
    if len(written) != len(rows):
        raise RuntimeError(f"the counter upsert returned {len(written)} rows for {len(rows)}")
    count = len(rows)

    def column(position: int) -> np.ndarray:
        return np.fromiter(map(itemgetter(position), written), dtype=np.int64, count=count)

    written_slot = np.fromiter(map(state.slot_of.__getitem__, map(itemgetter(1), written)), dtype=np.int64, count=count)
    written_start = column(2)
    order = np.lexsort((written_start, written_slot))
    if not (np.array_equal(written_slot[order], slot) and np.array_equal(written_start[order], period_us)):
        raise RuntimeError("the counter upsert returned other counters than it wrote")
    return column(3)[order], column(4)[order], column(5)[order]


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    """A budget in its current period: what its counter says."""

    budget: Budget
    period: Period
    used: int
    rem: int
    unpriced_events: int
    end: datetime | None = None  # the period's end, when the caller has it (else `period.end`)


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
    return _answer(standings(connection, tenant_id, matching, state.timezone, now=now))


def _answer(found: Sequence[Standing]) -> dict[str, Any]:
    listed = []
    denied_by = None
    for standing in found:
        budget = standing.budget
        used = used_decimal(budget, standing.used, standing.rem)
        if budget.enforce and used >= budget.limit and denied_by is None:
            denied_by = budget.id
        listed.append({
            "id": budget.id, "measure": budget.measure, "limit": text(budget.limit), "used": text(used),
            "remaining": text(max(budget.limit - used, Decimal(0))),
            "period_end": standing.end if standing.end is not None else standing.period.end,
            "enforced": budget.enforce,
        })  # fmt: skip
    return {"allowed": denied_by is None, "denied_by": denied_by, "budgets": listed}


# --- authorization from memory -------------------------------------------------------------------
#
# `POST /v1/authorize` is asked before every task, while ingestion batches run in the same
# process. A read of the database there waits for the GIL (and on SQLite for the file) behind
# those batches, so the server answers it from a per-process snapshot of the counters of the
# budgets' current periods: counting pushes the totals it wrote when its transaction commits,
# and the snapshot is read again from the database when it is older than `SNAPSHOT_REFRESH`
# seconds (in the background) or `SNAPSHOT_MAX_AGE` (before answering), which brings in what
# other processes counted and budgets changed elsewhere.

SNAPSHOT_REFRESH = 0.5
SNAPSHOT_MAX_AGE = 2.0
_PENDING = "taskmeter.spend.pending"


@dataclass
class Snapshot:
    """A tenant's budgets with their counters in the periods current when it was read."""

    state: TenantBudgets
    counters: dict[tuple[str, int], tuple[int, int, int]]
    read_at: float  # time.monotonic()
    valid_until: datetime  # the earliest end of those periods
    refreshing: bool = False
    # By period kind: the period holding the read's `now`, its start (us) and end, computed once
    # (a request then does no time zone arithmetic while `now` falls in it).
    periods: dict[str, tuple[Period, int, datetime, datetime]] = field(default_factory=dict)

    def age(self) -> float:
        return time.monotonic() - self.read_at

    def period(self, kind: PeriodKind, now: datetime) -> tuple[Period, int, datetime]:
        """The period of `kind` holding `now`, its start (us) and its end."""
        found = self.periods.get(kind)
        if found is None or not found[2] <= now < found[3]:
            period = period_of(now, self.state.timezone, kind)
            start, end = period.start, period.end
            found = (period, _us(start), start, end)
            if start <= now < end:
                self.periods[kind] = found
        return found[0], found[1], found[3]


def _pending(connection: Connection) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = connection.info.setdefault(_PENDING, [])
    return found


@event.listens_for(Engine, "commit")
def _committed(connection: Connection) -> None:
    """Push the counter totals a transaction wrote into this process's snapshots."""
    pushed = connection.info.pop(_PENDING, None)
    if not pushed:
        return
    snapshots = _kept_by(connection).snapshots
    for tenant_id, ids, starts, used, rems, unpriced in pushed:
        snapshot = snapshots.get(tenant_id)
        if snapshot is None:
            continue
        counters = snapshot.counters
        columns = (starts.tolist(), used.tolist(), rems.tolist(), unpriced.tolist())
        for budget_id, start, u, r, x in zip(ids, *columns, strict=True):
            if (budget_id, start) in counters:  # a counter of a current period
                counters[(budget_id, start)] = (u, r, x)


@event.listens_for(Engine, "rollback")
def _rolled_back(connection: Connection) -> None:
    if connection.invalidated:  # its DBAPI connection is gone, and what it wrote with it
        return
    connection.info.pop(_PENDING, None)


@event.listens_for(Pool, "reset")
def _reset(dbapi_connection: Any, record: Any, reset_state: Any) -> None:
    record.info.pop(_PENDING, None)  # returned to the pool without a commit: nothing to push


def snapshot(engine: Engine, tenant_id: int) -> Snapshot | None:
    """The tenant's snapshot that this process keeps for the engine's database, if any."""
    return _kept_by(engine).snapshots.get(tenant_id)


def read_snapshot(connection: Connection, tenant_id: int, *, now: datetime) -> Snapshot:
    """Read the tenant's budgets and the counters of their current periods (one query for the
    budgets' generation, one for the counters), and keep it as the process's snapshot."""
    read_at = time.monotonic()
    state = tenant_budgets(connection, tenant_id)
    periods = {b.id: period_of(now, state.timezone, b.period) for b in state.index.budgets}
    starts = {_us(period.start) for period in periods.values()}
    counters: dict[tuple[str, int], tuple[int, int, int]] = {
        (b.id, _us(periods[b.id].start)): (0, 0, 0) for b in state.index.budgets
    }
    if starts:
        table = budget_counters
        query = select(table.c.budget_id, table.c.period_start_us, table.c.used, table.c.used_rem, table.c.unpriced_events).where(
            table.c.tenant_id == tenant_id, table.c.period_start_us.in_(sorted(starts))
        )
        for budget_id, start, used, rem, unpriced in connection.execute(query):
            if (budget_id, start) in counters:
                counters[(budget_id, start)] = (used, rem, unpriced)
    ends = [period.end for period in periods.values()]
    valid_until = min(ends) if ends else datetime.max.replace(tzinfo=now.tzinfo)
    found = Snapshot(state, counters, read_at, valid_until)
    kept = _kept_by(connection)
    with _lock:
        kept.snapshots[tenant_id] = found
    return found


def authorize_from(found: Snapshot, attributes: dict[str, str | None], *, now: datetime) -> dict[str, Any]:
    """`authorize`, answered from a snapshot (no I/O)."""
    state = found.state
    matching = state.matching(attributes.get("customer"), attributes.get("actor"), attributes.get("agent"), attributes.get("task_type"))
    if len(matching) > 1:
        matching = tuple(sorted(matching, key=lambda b: b.id))
    out = []
    for budget in matching:
        period, start_us, end = found.period(budget.period, now)
        used, rem, unpriced = found.counters.get((budget.id, start_us), (0, 0, 0))
        out.append(Standing(budget, period, used, rem, unpriced, end))
    return _answer(out)
