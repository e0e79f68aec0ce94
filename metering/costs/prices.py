"""Provider cost of usage events, vectorized and exact.

`price_usage` prices a DataFrame of usage events with the rate cards of a `PriceBook`
(`metering.costs.ratecards`): one lookup per distinct (provider, model), the price version chosen per
event time with numpy, context tiers with vectorized comparisons, whole int64 columns multiplied.

A per-event cost is not a whole number of nano-units ($0.0375 per million tokens is 37.5 nanos a
token), so each event's exact cost is returned as `cost_nanos` (floor, in 1e-9) plus `cost_rem`
(the rest, in 1e-15, 0 <= rem < 10**6). Both columns sum exactly; `settle_nanos` rounds a sum
once, half up, to whole nano-units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from functools import lru_cache
from itertools import count as count_from
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from taskmeter_client.extract import MAX_TOKENS

from metering.core.errors import UsageTooLarge
from metering.core.vocabulary import ONE_HOUR_FIELD, PRICED_TOKEN_FIELDS, RATE_CARD_CLASSES
from metering.costs.ratecards import PriceBook, RateCard

EVENT_COLUMNS = ("provider", "model", "time_us", *PRICED_TOKEN_FIELDS)
OPTIONAL_COLUMNS = (ONE_HOUR_FIELD,)
"""Columns an events frame may leave out (zero throughout)."""
RESULT_COLUMNS = ("priced", "price_version", "cost_nanos", "cost_rem")
REM_PER_NANO = 10**6
"""`cost_rem` units (1e-15 of the currency) per nano-unit; also tokens per million."""
# MAX_TOKENS (the event contract's limit, from the SDK) bounds each token count: with rates capped
# (`ratecards.MAX_TOKEN_RATE`) every intermediate product stays below 2**63.

Amount = TypeVar("Amount", int, np.ndarray, pd.Series)


def price_usage(events: pd.DataFrame, book: PriceBook) -> pd.DataFrame:
    """Price usage events; returns `RESULT_COLUMNS` on the events' index.

    `events` has `EVENT_COLUMNS`: provider and model strings, `time_us` (int64 microseconds since
    the epoch, UTC) and int64 token counts where input includes cache reads and writes, and cache
    writes include the 1-hour ones (`cache_write_1h_tokens`, optional). Unpriced events (unknown
    model) have `priced` False, cost 0 and no price version.
    """
    counts = {
        name: _int64(events, name) if name in events or name not in OPTIONAL_COLUMNS else np.zeros(len(events), dtype=np.int64)
        for name in PRICED_TOKEN_FIELDS
    }
    card_of_row, cards, nanos, femtos = _price(events["provider"], events["model"], _int64(events, "time_us"), counts, book)
    versions = [card.price_version for card in cards]
    categories = list(dict.fromkeys(versions))
    version_code = np.array([categories.index(v) for v in versions] + [-1], dtype=np.int64)
    return pd.DataFrame(
        {
            "priced": card_of_row >= 0,
            "price_version": pd.Categorical.from_codes(version_code[card_of_row], categories=categories),
            "cost_nanos": nanos,
            "cost_rem": femtos,
        },
        index=events.index,
    )


def price_arrays(
    provider: Sequence[object], model: Sequence[object], time_us: np.ndarray, counts: Mapping[str, np.ndarray], book: PriceBook
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`price_usage` over plain columns, without a frame: (priced, cost_nanos, cost_rem) per
    event. `counts` has `PRICED_TOKEN_FIELDS` as int64 arrays (`cache_write_1h_tokens` may be
    left out). For callers pricing small batches, where building frames costs more than pricing."""
    full = {name: counts[name] if name in counts else np.zeros(len(time_us), dtype=np.int64) for name in PRICED_TOKEN_FIELDS}
    card_of_row, _, nanos, femtos = _price(provider, model, time_us, full, book)
    return card_of_row >= 0, nanos, femtos


def _price(
    provider: Sequence[object] | pd.Series, model: Sequence[object] | pd.Series, time_us: np.ndarray,
    counts: dict[str, np.ndarray], book: PriceBook,
) -> tuple[np.ndarray, list[RateCard], np.ndarray, np.ndarray]:  # fmt: skip
    _check_counts(counts)
    card_of_row, cards = _card_per_row(provider, model, time_us, book)
    rates = _rate_table(tuple(cards)).rates(card_of_row, counts["input_tokens"])
    nanos, femtos = _cost(billable_classes(counts), rates)
    return card_of_row, cards, nanos, femtos


def billable_classes(counts: Mapping[str, Amount]) -> dict[str, Amount]:
    """Reported token counts (`PRICED_TOKEN_FIELDS`) as the classes a rate card prices
    (`RATE_CARD_CLASSES`): billable input without the cache reads and writes, cache writes without
    the 1-hour ones. Ints, arrays or Series alike."""
    return {
        "input": counts["input_tokens"] - counts["cache_read_tokens"] - counts["cache_write_tokens"],
        "cache_read": counts["cache_read_tokens"],
        "cache_write": counts["cache_write_tokens"] - counts["cache_write_1h_tokens"],
        "cache_write_1h": counts["cache_write_1h_tokens"],
        "output": counts["output_tokens"],
    }


def _cost(billable: dict[str, np.ndarray], rates: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact cost per row as (nanos, rem): tokens x femto-per-token, plus the request fee."""
    fee = rates["request"]
    # Whole products in one int64 where the largest tokens x largest rate of each class cannot
    # reach 2**63 (any real batch): one division at the end.
    bounds = {name: int(tokens.max(initial=0)) * int(rates[name].max(initial=0)) for name, tokens in billable.items()}
    if sum(bounds.values()) + int(fee.max(initial=0)) < 2**63:
        femtos = fee.copy()
        for name, tokens in billable.items():
            if bounds[name]:  # no tokens of the class, or no rate for it: nothing to add
                femtos += tokens * rates[name]
        return np.divmod(femtos, REM_PER_NANO)
    # Otherwise split tokens = q·10**6 + r: q·rate (nanos) and r·rate (femtos, < 10**6 · rate)
    # each fit int64 (`MAX_TOKENS` and the rate caps see to it).
    nanos, femtos = np.divmod(fee, REM_PER_NANO)
    for name, tokens in billable.items():
        whole, part = np.divmod(tokens, REM_PER_NANO)
        nanos += whole * rates[name]
        femtos += part * rates[name]
    nanos += femtos // REM_PER_NANO
    return nanos, femtos % REM_PER_NANO


def settle_nanos(nanos: Amount, rem: Amount) -> Amount:
    """Summed (cost_nanos, cost_rem) to whole nano-units, rounded once, half up.

    Works on ints, numpy arrays and Series alike; equals
    `decimal_to_nanos(quantize(exact_cost(nanos, rem), 9))` for the non-negative costs we make.
    """
    return nanos + rem // REM_PER_NANO + (rem % REM_PER_NANO >= REM_PER_NANO // 2)


def exact_cost(nanos: int, rem: int) -> Decimal:
    """The exact amount of a (cost_nanos, cost_rem) pair, for reports that round it themselves."""
    return Decimal(int(nanos) * REM_PER_NANO + int(rem)).scaleb(-15)


def _int64(events: pd.DataFrame, name: str) -> np.ndarray:
    column = events[name]
    if not pd.api.types.is_integer_dtype(column.dtype):
        raise TypeError(f"{name} must be an integer column, not {column.dtype}")
    return column.to_numpy(dtype=np.int64)


def _check_counts(counts: dict[str, np.ndarray]) -> None:
    # Cheap whole-column checks: a bad count would give a negative or overflowing cost.
    for name, values in counts.items():
        if len(values) and (values.min() < 0 or values.max() > MAX_TOKENS):
            raise ValueError(f"{name} must be between 0 and {MAX_TOKENS}")
    cached = counts["cache_read_tokens"] + counts["cache_write_tokens"]
    if bool(np.any(cached > counts["input_tokens"])):
        raise ValueError("cache_read_tokens + cache_write_tokens exceed input_tokens")
    if bool(np.any(counts["cache_write_1h_tokens"] > counts["cache_write_tokens"])):
        raise ValueError("cache_write_1h_tokens exceed cache_write_tokens")


def _card_per_row(
    provider: Sequence[object] | pd.Series, model: Sequence[object] | pd.Series, time_us: np.ndarray, book: PriceBook
) -> tuple[np.ndarray, list[RateCard]]:
    """Index of each event's rate card in the returned list; -1 when unpriced."""
    pair_of_row, pairs = _factorize_pairs(provider, model)
    cards: dict[RateCard, int] = {}
    card_of_pair = np.full(len(pairs), -1, dtype=np.int64)
    by_time = []
    for pair, (provider, model) in enumerate(pairs):
        pricing = book.lookup(provider, model)
        if pricing is None:
            continue
        ids = np.array([-1 if c is None else cards.setdefault(c, len(cards)) for c in pricing.cards])
        card_of_pair[pair] = ids[0]
        if len(ids) > 1:
            by_time.append((pair, pricing, ids))
    card_of_row = card_of_pair[pair_of_row]
    for pair, pricing, ids in by_time:
        rows = np.flatnonzero(pair_of_row == pair)
        card_of_row[rows] = ids[pricing.variant_index(time_us[rows])]
    return card_of_row, list(cards)


def _factorize_pairs(
    provider: Sequence[object] | pd.Series, model: Sequence[object] | pd.Series
) -> tuple[np.ndarray, list[tuple[object, object]]]:
    if isinstance(provider, list) and isinstance(model, list):
        # A small batch's plain lists (spend counting): one dict pass over the pairs costs less
        # than three factorizations and two object arrays; the same codes, in order of first
        # appearance, as `pd.factorize` gives.
        seen: dict[tuple[object, object], int] = {}
        first_row = np.fromiter(map(seen.setdefault, zip(provider, model, strict=True), count_from()), dtype=np.int64, count=len(provider))
        rank = np.zeros(len(provider), dtype=np.int64)
        rank[np.fromiter(seen.values(), dtype=np.int64, count=len(seen))] = np.arange(len(seen))
        return rank[first_row], list(seen)
    # Factorizing each string column then the combined int codes is much cheaper than hashing
    # string pairs, and free for categorical columns.
    provider_codes, providers = pd.factorize(_values(provider), use_na_sentinel=False)
    model_codes, models = pd.factorize(_values(model), use_na_sentinel=False)
    combined = provider_codes.astype(np.int64) * len(models) + model_codes
    pair_of_row, uniques = pd.factorize(combined)
    pairs = [(providers[code // len(models)], models[code % len(models)]) for code in uniques.tolist()]
    return pair_of_row, pairs


def _values(column: Sequence[object] | pd.Series) -> Any:
    return column if isinstance(column, pd.Series | np.ndarray) else np.array(column, dtype=object)


@lru_cache(maxsize=64)
def _rate_table(cards: tuple[RateCard, ...]) -> _RateTable:
    """`_RateTable` of these cards, kept: batches of one price book price with the same few
    cards (equal cards have equal rates, so sharing one table is exact)."""
    return _RateTable(list(cards))


class _RateTable:
    """Integer rates of the cards in play, one array per class and tier level, ready to gather.

    Each array has one extra zero entry at the end, so index -1 (unpriced) gathers rate 0.
    Missing tier levels start at int64 max, which no input count exceeds.
    """

    def __init__(self, cards: list[RateCard]) -> None:
        femto = [card.femto_rates() for card in cards]
        self.base: dict[str, np.ndarray] = {}
        self.tiers: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for name in (*RATE_CARD_CLASSES, "request"):
            rates = [f[name] for f in femto]
            self.base[name] = np.array([base for base, _ in rates] + [0], dtype=np.int64)
            levels = max((len(tiers) for _, tiers in rates), default=0)
            self.tiers[name] = [
                (
                    np.array(
                        [t[i][0] if i < len(t) else _NEVER for _, t in rates] + [_NEVER], dtype=np.int64
                    ),
                    np.array([t[i][1] if i < len(t) else 0 for _, t in rates] + [0], dtype=np.int64),
                )
                for i in range(levels)
            ]
        self.tiered = np.array([any(tiers for _, tiers in f.values()) for f in femto] + [False], dtype=bool)

    def rates(self, card_of_row: np.ndarray, input_tokens: np.ndarray) -> dict[str, np.ndarray]:
        """Each class's rate per row (femtos per token; per request for `request`)."""
        out = {name: base[card_of_row] for name, base in self.base.items()}
        tiered = np.flatnonzero(self.tiered[card_of_row])  # tier tests only for rows that can have one
        if len(tiered):
            cards, inputs = card_of_row[tiered], input_tokens[tiered]
            for name, levels in self.tiers.items():
                rate = out[name][tiered]
                # Ascending levels: the highest tier whose start the input exceeds wins, for all tokens.
                for starts, prices in levels:
                    rate = np.where(inputs > starts[cards], prices[cards], rate)
                out[name][tiered] = rate
        return out


_NEVER = np.iinfo(np.int64).max


SUM_COLUMNS = ("provider", "model", "time_us", "tier_input", "usage_events", *PRICED_TOKEN_FIELDS)


def price_sums(sums: pd.DataFrame, book: PriceBook) -> pd.DataFrame:
    """The exact cost of summed usage; returns `priced`, `cost_nanos` and `cost_rem` (carried:
    `cost_rem` < 10**6) on the rows' index.

    Each row of `sums` (`SUM_COLUMNS`) stands for `usage_events` events of one provider and model
    that all have the price version in force at `time_us` and the context tier of `tier_input`
    input tokens, with these token sums. Version and tier fixed, an event's cost is linear in its
    counts, so the row's cost is exactly the sum of its events' costs as `price_usage` prices them
    one by one.
    """
    counts = {name: _int64(sums, name) for name in PRICED_TOKEN_FIELDS}
    card_of_row, cards = _card_per_row(sums["provider"], sums["model"], _int64(sums, "time_us"), book)
    rates = _rate_table(tuple(cards)).rates(card_of_row, _int64(sums, "tier_input"))
    billable = {**billable_classes(counts), "request": _int64(sums, "usage_events")}
    nanos, rem = _summed_cost([(billable[name], rates[name]) for name in billable])
    return pd.DataFrame({"priced": card_of_row >= 0, "cost_nanos": nanos, "cost_rem": rem}, index=sums.index)


def _summed_cost(terms: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Σ amount x rate (femto-units) as carried (nanos, rem). Amount a = a1·10**6 + a0 and rate
    r = r1·10**6 + r0 make a·r = (a·r1 + a1·r0)·10**6 + a0·r0: int64 throughout while the nanos fit
    (checked with Python ints first); otherwise Python ints, refused past int64 (`UsageTooLarge`)."""
    bound = sum(int(a.max(initial=0)) * (int(r.max(initial=0)) // REM_PER_NANO + 1) for a, r in terms)
    exact = bound >= 2**62
    nanos: np.ndarray = np.zeros(len(terms[0][0]), dtype=object if exact else np.int64)
    femtos = nanos.copy()
    for amount, rate in terms:
        if exact:
            amount, rate = amount.astype(object), rate.astype(object)
        a1, a0 = amount // REM_PER_NANO, amount % REM_PER_NANO
        r1, r0 = rate // REM_PER_NANO, rate % REM_PER_NANO
        nanos += amount * r1 + a1 * r0
        femtos += a0 * r0
    nanos += femtos // REM_PER_NANO
    femtos %= REM_PER_NANO
    if exact:
        if len(nanos) and max(nanos.tolist()) >= 2**63:
            raise UsageTooLarge(
                "a re-priced cost exceeds what the rollup holds exactly (2**63 - 1 nano-units)",
                detail={"limit": str(2**63 - 1)},
            )
        return nanos.astype(np.int64), femtos.astype(np.int64)
    return nanos, femtos
