"""Budget counters recounted from the stored events: the open periods' figures set anew.

Ingestion adds each batch to the counters (`metering.spend.counters.count_stored`); what it cannot know
is the spend stored before a budget existed, or that the prices it counted with have changed.
`recount` sets the counters of the periods holding `now` to what the stored events count, by
ingestion's rules, so they equal what ingestion would have counted had the budget (and the
prices) been there from the start, and so the rollup's figures:
- a budget created mid-period, or changed to count something else (scope, measure, period),
  starts from the spend already in its period (`metering.spend.budget_repository`);
- when the tenant's prices, model aliases or customers' plans change (`pricing.budget_billing`),
  the money budgets' open periods are re-priced.

It counts with ingestion's own code (`metering.spend.counters`: `count_usage`,
`deciding_outcomes`, `add_job`), a page of events at a time, and keeps the chosen budgets' open
periods. It runs in the caller's unit of work and first takes the tenant's ingest lock alone (as
the rollup's read of its newest seq): ingest batches in flight commit before the read, later ones
wait for the commit, so no batch is counted twice or lost. Under deferred counting
(`metering.spend.deferred`) it also holds the follower lock and reads only the events up to the
follower's watermark: the follower counts the later ones, with the new budgets. Cost: one pass
over the tenant's events stored with a time since the earliest open period's start (keyset pages
along the tenant's seq index), in the transaction that changes the budget or the prices. Alerts
that the new figures cross are raised as at ingestion (each once per budget, period and
threshold).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select, tuple_

from metering.core.db import ingest_lock_key, tenant_lock
from metering.core.periods import period_of
from metering.spend import alerts, deferred
from metering.spend import counters as spend
from metering.spend.budget_tables import budget_counters
from metering.spend.budgets import MONEY_MEASURES

PAGE = 20_000
_US = 1_000_000
_NO_BOUND = 2**63 - 1  # the largest seq: no upper bound


JobOutcomes = Callable[[Connection, int, int], Iterable[spend.Outcome]]
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
    lock(connection, tenant_id)
    # Deferred counting: the events past the follower's watermark are not in the counters yet;
    # the follower counts them next, with these budgets, so the recount leaves them out.
    through = deferred.counted_through(connection, tenant_id)
    open_starts = {b.id: _us(period_of(now, state.timezone, b.period).start) for b in chosen}
    kinds = {b.measure for b in chosen}
    usage_counted = bool(kinds & {"provider_cost", "tokens", "billed"})
    deltas = spend.Deltas()
    deciding: dict[str, spend.Outcome] = {}
    since = min(open_starts.values())
    pages = _pages(connection, tenant_id, since, through) if usage_counted or jobs is None else iter(())
    for stored in pages:
        if usage_counted:
            spend.count_usage(state, stored, deltas, cost=bool(kinds & set(MONEY_MEASURES)))
        if jobs is None:
            spend.deciding_outcomes(stored, deciding)
    if kinds & {"jobs", "billed"}:
        for outcome in deciding.values() if jobs is None else jobs(connection, tenant_id, since):
            spend.add_job(state, outcome, 1, deltas)
    if state.index.measures() & {"jobs", "billed"} and deciding:
        # What ingestion compares a task's next terminal event with (it kept none while no
        # budget counted jobs).
        spend.write_outcomes(
            connection, [{"tenant_id": tenant_id, "task": task, **o.__dict__} for task, o in sorted(deciding.items())]
        )
    amounts = _amounts(state, deltas)
    wanted = {(budget_id, start): amounts.get((budget_id, start), [0, 0, 0]) for budget_id, start in open_starts.items()}
    before = _replace_counters(connection, tenant_id, wanted)
    moved = {key: [new[0] - old[0], new[1] - old[1], new[2] - old[2]] for key, new in wanted.items() for old in [before.get(key, (0, 0, 0))]}
    totals = {key: (new[0], new[1]) for key, new in wanted.items() if key[0] in state.watched}
    alerts.check(connection, tenant_id, state.index, state.timezone, moved, totals, now=now)
    return {budget_id: (v[0], v[1], v[2]) for (budget_id, _), v in wanted.items()}


def lock(connection: Connection, tenant_id: int) -> None:
    """What a recount holds until its transaction ends: the tenant's ingest lock alone (no batch
    is stored, or counted, meanwhile), then its follower lock (`metering.spend.deferred`). A
    transaction that changes counters before it recounts (a budget put) takes them first, so it
    never waits for a follower that waits for its rows."""
    tenant_lock(connection, ingest_lock_key(tenant_id))
    deferred.lock(connection, tenant_id)


def _amounts(state: spend.TenantBudgets, deltas: spend.Deltas) -> dict[tuple[str, int], list[int]]:
    """The counted sums by (budget id, period start us): [units, rem, unpriced events]."""
    merged = deltas.merged(state)
    if merged is None:
        return {}
    slot, period_us, units, rem, unpriced = (column.tolist() for column in merged)
    ids = state.ids
    return {(ids[s], p): [u, r, x] for s, p, u, r, x in zip(slot, period_us, units, rem, unpriced, strict=True)}


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * _US + moment.microsecond


def _pages(connection: Connection, tenant_id: int, since_us: int, through: int | None) -> Iterator[spend.Stored]:
    """The tenant's events with a time since `since_us` (and a seq up to `through`, when given),
    in seq order, a page at a time (keyset pages along the tenant's seq index), as counting takes
    them (`metering.spend.deferred.stored_page`)."""
    after, bound = 0, _NO_BOUND if through is None else through
    while True:
        stored, after = deferred.stored_page(connection, tenant_id, after, bound, PAGE, since_us=since_us)
        if stored is None:
            return
        yield stored
        if len(stored) < PAGE:
            return


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
