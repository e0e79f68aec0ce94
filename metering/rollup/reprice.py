"""Re-pricing: a price change applied from the rollup's own rows, without reading events.

The rollup keeps, per detail row (task, tenant-local day, provider, model, customer, actor,
agent) and price bucket (`metering.costs.price_buckets`: the UTC date, the time-of-day period and the
context band of its events), the usage sums that pricing reads (`task_usage_buckets`). Within a
bucket every event has the same rate card and tier, so its cost is exactly the price of its sums
(`metering.costs.prices.price_sums`), and a detail row's cost is the sum of its buckets' (the
buckets keep no cost of their own: migration 0024). When the tenant's price version changes,
`reprice_tenant`:

1. finds the (provider, model) pairs whose prices differ between the old price book and the new
   one (all pairs when the old one is not known: genai-prices was upgraded);
2. reads those pairs' buckets, prices them with the new book and with the old one (or, when the
   old one is not known, sums the new costs per detail row and reads the detail rows' stored
   costs), and keeps the cost changes per detail row;
3. adds the changes to the detail rows, the tasks and the customer days (carried,
   so every row is byte for byte what a rebuild from the events writes), moves the per
   customer-month figures by the changed tasks' contributions (`month_figures.shift_costs`) and the
   per customer-month usage by the changed daily rows' (`usage_months.shift_costs`), and
   moves the tenant's price version by compare-and-set, in one transaction: all of it or nothing.

Which changes need which (the pipeline decides, `can_reprice`):

- re-priced from the rollup's rows: a tenant's new, changed or removed price (rates, request
  fees, 1-hour cache writes, dated versions), a new or changed model alias, an unpriced model
  that becomes priced, a new genai-prices release; provided every context tier threshold and
  time-of-day switch of the new prices is among the buckets' (`BucketScheme.covers`);
- rebuilt from the events: a tier threshold the buckets do not separate (a tenant tier at a
  new `above`, or a genai-prices release with a new tier start or time-of-day switch), a rollup
  without buckets (before migration 0018), and a first run. A rebuild keeps the thresholds of
  genai-prices and of the tenant's prices at that time, so later changes that reuse them re-price.

Dated versions start at a UTC midnight (tenant `start_date`, genai-prices' start dates) and
genai-prices' time-of-day prices switch at UTC times: the buckets are keyed by those boundaries,
so a version that starts inside a tenant-local day prices each event by its own instant, as a
rebuild does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import Engine, Row, update

from metering.core.db import no_cyclic_gc
from metering.core.errors import Conflict
from metering.core.tables import rollup_state, task_usage, task_usage_detail, usage_daily
from metering.core.vocabulary import PRICED_TOKEN_FIELDS
from metering.costs.book import price_version
from metering.costs.price_buckets import BucketScheme, days_since_epoch, representative_us, scheme_for
from metering.costs.prices import REM_PER_NANO, price_sums
from metering.costs.ratecards import ModelPricing, PriceBook, RateCardError
from metering.rollup import month_figures, usage_months
from metering.rollup.stores import RollupStore
from metering.rollup.summary import DAILY_KEYS, DETAIL_KEYS

LEVELS = (
    (task_usage_detail, DETAIL_KEYS),
    (task_usage, ("task",)),
    (usage_daily, DAILY_KEYS),
)
"""Each table whose costs a re-pricing changes, with its key (after tenant_id). Not the buckets:
they hold no cost (migration 0024)."""
CHANGES = ("d_nanos", "d_rem", "d_unpriced")


class PricesMoved(Conflict):
    """Another rollup of the tenant moved its watermark or prices first; nothing was written."""


@dataclass
class RepriceResult:
    models: list[tuple[str, str]] = field(default_factory=list)  # the pairs re-priced
    buckets: int = 0  # bucket rows read and priced
    rows_changed: dict[str, int] = field(default_factory=dict)  # per table
    unpriced: dict[tuple[str, str], int] = field(default_factory=dict)  # usage events, per pair


def can_reprice(state: Row[Any], overrides: list[dict[str, Any]]) -> bool:
    """Whether the tenant's rollup has buckets that separate every event the new prices tell apart."""
    scheme = BucketScheme.parse(state.price_buckets)
    return scheme is not None and state.watermark_seq > 0 and scheme.covers(scheme_for(overrides))


def needs_rebuild(state: Row[Any], overrides: list[dict[str, Any]]) -> bool:
    """Whether the next rollup rebuilds the tenant from its first event: a rollup without price
    buckets, or a price change that they cannot apply."""
    if BucketScheme.parse(state.price_buckets) is None:
        return True
    return state.price_version != price_version(overrides) and not can_reprice(state, overrides)


def reprice_tenant(
    engine: Engine, tenant_id: int, state: Row[Any], overrides: list[dict[str, Any]], *, now: datetime, store: RollupStore,
    timezone: str,
) -> RepriceResult:  # fmt: skip
    """Apply the prices `overrides` name to the tenant's rollup rows as of `state` (its
    rollup_state row, which `can_reprice` accepted). Raises `PricesMoved` when another rollup
    changed that state first."""
    scheme = BucketScheme.parse(state.price_buckets)
    if scheme is None:
        raise ValueError("the tenant's rollup has no price buckets: rebuild it")
    book, before = PriceBook(overrides), _previous_book(state)
    result = RepriceResult()
    with store.transaction(engine, tenant_id, replacing=None) as connection:
        moved = connection.execute(
            update(rollup_state)
            .where(
                rollup_state.c.tenant_id == tenant_id,
                rollup_state.c.watermark_seq == state.watermark_seq,
                rollup_state.c.price_version == state.price_version,
            )
            .values(price_version=price_version(overrides), price_settings=settings_text(overrides), updated_at=now)
            .execution_options(preserve_rowcount=True)
        ).rowcount
        if moved != 1:
            raise PricesMoved("another rollup of the tenant ran at the same time; nothing was written")
        pairs = store.price_pairs(connection, tenant_id)
        result.models = [pair for pair in pairs if before is None or _rates(before, pair) != _rates(book, pair)]
        if not result.models:
            return result
        # Hundreds of thousands of rows as tuples and frames of objects, none in a cycle: without the
        # cyclic collector, which they would set off over and over.
        with no_cyclic_gc():
            buckets = store.read_buckets(connection, tenant_id, result.models)
            result.buckets = len(buckets)
            models = result.models
            detail = cost_changes(
                buckets, book, scheme, result.unpriced, before=before, stored=lambda: store.read_detail_costs(connection, tenant_id, models)
            )  # fmt: skip
            per_level = {task_usage_detail: detail, task_usage: summed(detail, ("task",)), usage_daily: summed(detail, DAILY_KEYS)}
            # The per customer-month figures sum task costs: moved by the changed tasks' old and new
            # contributions, read before their task_usage rows change.
            month_figures.shift_costs(connection, tenant_id, timezone, per_level[task_usage])
            # The per customer-month usage sums each daily row's settled cost: likewise.
            usage_months.shift_costs(connection, tenant_id, per_level[usage_daily])
            for table, keys in LEVELS:
                result.rows_changed[table.name] = store.shift_costs(connection, tenant_id, table, keys, per_level[table])
    return result


def cost_changes(
    buckets: pd.DataFrame,
    book: PriceBook,
    scheme: BucketScheme,
    unpriced: dict[tuple[str, str], int] | None = None,
    *,
    before: PriceBook | None,
    stored: Callable[[], pd.DataFrame],
) -> pd.DataFrame:
    """The detail rows whose cost changes when `buckets` (all the buckets of their pairs) are
    priced with `book`: their `DETAIL_KEYS` and `CHANGES` (new minus stored: nano-units, carried
    remainder, unpriced events). The old costs are the buckets' prices under `before`, the book
    that priced the stored rows (a bucket's cost is exactly the price of its sums); when it is
    not known, the detail rows' stored costs (`stored`: at least these pairs' rows, `DETAIL_KEYS`
    and `DETAIL_COSTS`). Counts the unpriced usage events per pair into `unpriced`."""
    if buckets.empty:
        return pd.DataFrame({**{name: buckets[name] for name in DETAIL_KEYS}, **{name: np.zeros(0, dtype=np.int64) for name in CHANGES}})
    usage_events = buckets["usage_events"].to_numpy(dtype=np.int64)
    sums = pd.DataFrame(
        {
            "provider": buckets["provider"],
            "model": buckets["model"],
            "time_us": representative_us(days_since_epoch(buckets["day"]), buckets["utc_shift"], buckets["period"], scheme),
            "tier_input": scheme.tier_input(buckets["band"].to_numpy(dtype=np.int64)),
            "usage_events": usage_events,
            **{name: buckets[name].to_numpy(dtype=np.int64) for name in PRICED_TOKEN_FIELDS},
        }
    )
    nanos, rem, now_unpriced = _priced(sums, book, usage_events)
    if unpriced is not None:
        missing = buckets.loc[now_unpriced > 0].groupby(["provider", "model"], sort=True)["usage_events"].sum()
        for (provider, model), count in missing.items():
            unpriced[(provider, model)] = unpriced.get((provider, model), 0) + int(count)
    keys = {name: buckets[name] for name in DETAIL_KEYS}
    if before is not None:
        old_nanos, old_rem, old_unpriced = _priced(sums, before, usage_events)
        changes = pd.DataFrame({**keys, "d_nanos": nanos - old_nanos, "d_rem": rem - old_rem, "d_unpriced": now_unpriced - old_unpriced})
        moved = (changes[list(CHANGES)] != 0).any(axis=1).to_numpy()
        return summed(changes.loc[moved].reset_index(drop=True), DETAIL_KEYS)
    new = summed(pd.DataFrame({**keys, "d_nanos": nanos, "d_rem": rem, "d_unpriced": now_unpriced}), DETAIL_KEYS, keep_zero=True)
    rows = new.merge(stored(), on=list(DETAIL_KEYS), how="left", validate="one_to_one")
    if rows["cost_nanos"].isna().any():
        raise ValueError("a re-priced bucket has no task_usage_detail row")
    rem_change = rows["d_rem"].to_numpy(dtype=np.int64) - rows["cost_rem"].to_numpy(dtype=np.int64)
    changes = rows[list(DETAIL_KEYS)].assign(
        d_nanos=rows["d_nanos"].to_numpy(dtype=np.int64) - rows["cost_nanos"].to_numpy(dtype=np.int64) + rem_change // REM_PER_NANO,
        d_rem=rem_change % REM_PER_NANO,
        d_unpriced=rows["d_unpriced"].to_numpy(dtype=np.int64) - rows["unpriced_events"].to_numpy(dtype=np.int64),
    )
    return changes.loc[(changes[list(CHANGES)] != 0).any(axis=1).to_numpy()].reset_index(drop=True)


def _priced(sums: pd.DataFrame, book: PriceBook, usage_events: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The buckets' costs under `book` (nanos, remainder) and their unpriced usage events."""
    priced = price_sums(sums, book)
    unpriced = np.where(priced["priced"].to_numpy(), 0, usage_events)
    return priced["cost_nanos"].to_numpy(dtype=np.int64), priced["cost_rem"].to_numpy(dtype=np.int64), unpriced


def summed(changes: pd.DataFrame, keys: tuple[str, ...], *, keep_zero: bool = False) -> pd.DataFrame:
    """Changes summed per key, carried (`d_rem` in [0, 10**6), `d_nanos` may be negative), the
    rows that change nothing left out (unless `keep_zero`)."""
    if changes.empty:
        return changes[[*keys, *CHANGES]]
    out = changes.groupby(list(keys), sort=False, observed=True)[list(CHANGES)].sum().reset_index()
    out["d_nanos"] += out["d_rem"] // REM_PER_NANO  # floor division: a negative change borrows
    out["d_rem"] %= REM_PER_NANO
    if keep_zero:
        return out
    return out.loc[(out[list(CHANGES)] != 0).any(axis=1).to_numpy()].reset_index(drop=True)


def settings_text(overrides: list[dict[str, Any]]) -> str:
    """The prices as kept in rollup_state, for the next re-pricing to compare with."""
    return orjson.dumps(overrides).decode()


def _previous_book(state: Row[Any]) -> PriceBook | None:
    """The price book the rollup's rows were priced with, when it is known: its prices were kept
    and genai-prices is the release that priced them."""
    if not state.price_settings or not state.price_version.startswith(f"genai-prices@{package_version('genai-prices')}+"):
        return None
    try:
        return PriceBook(orjson.loads(state.price_settings))
    except (RateCardError, ValueError):
        return None


def _rates(book: PriceBook, pair: tuple[str, str]) -> object:
    """What decides the pair's costs: its cards' integer rates and the versions' constraints
    (not their names)."""
    pricing: ModelPricing | None = book.lookup(*pair)
    if pricing is None:
        return None
    return tuple(None if card is None else card.femto_rates() for card in pricing.cards), pricing.constraints
