"""Budget counters recounted from the stored events: the open periods' figures set anew.

Ingestion adds each batch to the counters (`metering.spend.count_stored`); what it cannot know
is the spend stored before a budget existed, or that the prices it counted with have changed.
`recount` sets the counters of the periods holding `now` to what the stored events count, with
the same code as ingestion (`metering.spend`), so they equal what ingestion would have counted
had the budget (and the prices) been there from the start, and so the rollup's figures:
- a budget created mid-period, or changed to count something else (scope, measure, period),
  starts from the spend already in its period (`metering.budget_repository`);
- when the tenant's prices, model aliases or customers' plans change (`pricing.budget_billing`),
  the money budgets' open periods are re-priced.

It runs in the caller's unit of work and first takes the tenant's ingest lock alone (as the
rollup's read of its newest seq): ingest batches in flight commit before the read, later ones
wait for the commit, so no batch is counted twice or lost. Cost: one pass over the tenant's
events stored with a time since the earliest open period's start (keyset pages along the
tenant's seq index), in the transaction that changes the budget or the prices. Alerts that the
new figures cross are raised as at ingestion (each once per budget, period and threshold).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, tuple_

from metering import alerts, spend
from metering.budget_tables import budget_counters
from metering.budgets import BudgetIndex, period_at
from metering.db import tenant_lock
from metering.ingest import INSERT_COLUMNS, ingest_lock_key
from metering.tables import events

PAGE = 20_000
_READ = (
    "type", "time_us", "customer", "task", "task_type", "provider", "model", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
)  # fmt: skip
_POSITIONS = [INSERT_COLUMNS.index(name) for name in _READ]
_WIDTH = len(INSERT_COLUMNS)


JobOutcomes = Callable[[Connection, int, int], Iterable[spend._Outcome]]
"""(connection, tenant id, since us) → the jobs to count, each in the period of its `ended_us`,
instead of the tasks' deciding terminal events: settled jobs (`pricing.budget_settlement`)."""


def recount(
    connection: Connection,
    tenant_id: int,
    *,
    now: datetime,
    only: Collection[str] | None = None,
    measures: Collection[str] | None = None,
    jobs: JobOutcomes | None = None,
) -> dict[str, tuple[int, int, int]]:
    """Set the counters of the open periods (those holding `now`) of the tenant's budgets, or of
    the budgets `only` names, or of those of `measures`, to what the stored events count.
    Returns the new (used, rem, unpriced events) by budget id. For a tenant whose jobs count at
    settlement, `jobs` and `billed` budgets are recounted only when `jobs` gives the settled jobs
    (pricing knows the outcome rules; `pricing.budget_settlement`)."""
    state = spend.tenant_budgets(connection, tenant_id)
    chosen = [
        b for b in state.index.budgets
        if (only is None or b.id in only) and (measures is None or b.measure in measures)
        and not (state.jobs_at_settlement and jobs is None and b.measure in ("jobs", "billed"))
    ]  # fmt: skip
    if not chosen:
        return {}
    tenant_lock(connection, ingest_lock_key(tenant_id))
    open_starts = {b.id: spend._us(period_at(b.period, now, state.timezone).start) for b in chosen}
    since = min(open_starts.values())
    subset = replace(state, index=BudgetIndex.of(chosen), watched=set())
    kinds = subset.index.measures()
    periods = spend._Periods(state.timezone)
    deltas = spend.Deltas()
    deciding: dict[str, spend._Outcome] = {}
    usage_counted = bool(kinds & {"provider_cost", "tokens", "billed"})
    pages = _pages(connection, tenant_id, since) if usage_counted or jobs is None else iter(())
    for rows, attribution in pages:
        if usage_counted:
            spend._count_usage(
                subset, periods, rows, attribution, deltas, cost=bool(kinds & {"provider_cost", "billed"})
            )
        for row, (actor, agent) in zip(rows, attribution, strict=True):
            if jobs is None and row[spend._TYPE] in spend.TERMINAL:  # in seq order: on a tie in time the later one decides
                outcome = spend._Outcome(
                    row[spend._TYPE].removeprefix("task."), row[spend._TIME], row[spend._CUSTOMER], actor, agent,
                    row[spend._TASK_TYPE],
                )  # fmt: skip
                known = deciding.get(row[spend._TASK])
                if known is None or outcome.ended_us >= known.ended_us:
                    deciding[row[spend._TASK]] = outcome
    if kinds & {"jobs", "billed"}:
        for outcome in deciding.values() if jobs is None else jobs(connection, tenant_id, since):
            spend._add_job(subset, periods, outcome, 1, deltas)
    if state.index.measures() & {"jobs", "billed"} and deciding:
        # What ingestion compares a task's next terminal event with (it kept none while no
        # budget counted jobs).
        spend._write_outcomes(
            connection, [{"tenant_id": tenant_id, "task": task, **o.__dict__} for task, o in sorted(deciding.items())]
        )
    wanted = {(budget_id, start): deltas.amounts.get((budget_id, start), [0, 0, 0]) for budget_id, start in open_starts.items()}
    before = _replace_counters(connection, tenant_id, wanted)
    moved = {key: [new[0] - old[0], new[1] - old[1], new[2] - old[2]] for key, new in wanted.items() for old in [before.get(key, (0, 0, 0))]}
    totals = {key: (new[0], new[1]) for key, new in wanted.items() if key[0] in state.watched}
    alerts.check(connection, tenant_id, state.index, state.timezone, moved, totals, now=now)
    return {budget_id: (v[0], v[1], v[2]) for (budget_id, _), v in wanted.items()}


def _pages(
    connection: Connection, tenant_id: int, since_us: int
) -> Iterator[tuple[list[Sequence[Any]], list[tuple[str | None, str | None]]]]:
    """The tenant's events with a time since `since_us`, in seq order, a page at a time: rows in
    `INSERT_COLUMNS` order (the columns counting reads) and each one's (actor, agent)."""
    e = events
    columns = [e.c[name] for name in _READ]
    after = 0
    while True:
        page = connection.execute(
            select(e.c.seq, e.c.actor, e.c.agent, *columns)
            .where(e.c.tenant_id == tenant_id, e.c.seq > after, e.c.time_us >= since_us)
            .order_by(e.c.seq)
            .limit(PAGE)
        ).all()
        if not page:
            return
        rows: list[Sequence[Any]] = []
        for found in page:
            row: list[Any] = [None] * _WIDTH
            for position, value in zip(_POSITIONS, found[3:], strict=True):
                row[position] = value
            rows.append(row)
        yield rows, [(found[1], found[2]) for found in page]
        if len(page) < PAGE:
            return
        after = page[-1][0]


def _replace_counters(
    connection: Connection, tenant_id: int, wanted: dict[tuple[str, int], list[int]]
) -> dict[tuple[str, int], tuple[int, int, int]]:
    """Write the counters as given; returns what they held before."""
    table = budget_counters
    keys = sorted(wanted)
    where = (table.c.tenant_id == tenant_id, tuple_(table.c.budget_id, table.c.period_start_us).in_(keys))
    before = {
        (r.budget_id, r.period_start_us): (r.used, r.used_rem, r.unpriced_events)
        for r in connection.execute(
            select(table.c.budget_id, table.c.period_start_us, table.c.used, table.c.used_rem, table.c.unpriced_events).where(*where)
        )
    }  # fmt: skip
    connection.execute(delete(table).where(*where))
    connection.execute(
        insert(table),
        [
            {"tenant_id": tenant_id, "budget_id": b, "period_start_us": p, "used": v[0], "used_rem": v[1], "unpriced_events": v[2]}
            for (b, p), v in ((key, wanted[key]) for key in keys)
        ],
    )  # fmt: skip
    return before
