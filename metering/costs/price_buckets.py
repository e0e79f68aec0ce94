"""Price buckets: what of a usage event decides its price besides its model and token counts.

Once its rate card and its context tier are fixed, an event's exact cost is linear in its token
counts (femto-units: tokens x rate, plus the per-request fee). The card is chosen by
(provider, model) and by the event's time: dated versions (a tenant's `start_date`,
genai-prices' `StartDateConstraint`) start at a UTC midnight, and genai-prices' time-of-day prices
(`TimeOfDateConstraint`) switch at given UTC times of day. The tier is a cliff on the event's
input tokens. So the rollup keeps token sums per detail row and per bucket:

- `utc_shift`: the event's UTC date minus its tenant-local day (-1, 0 or 1);
- `period`: how many of the scheme's time-of-day cutpoints the event's UTC time of day reached;
- `band`: how many of the scheme's tier thresholds the event's input tokens exceed;

and `metering.rollup.reprice` recomputes costs from those sums exactly, with no event read, for any
price book whose tier starts and time-of-day switches are among the scheme's. The scheme
(`BucketScheme`) is fixed when a tenant's rollup is rebuilt from its events: genai-prices'
own thresholds and switches, and the tenant's tier thresholds at that time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any

import numpy as np
from genai_prices.data import providers as bundled_providers
from genai_prices.types import ConditionalPrice, TieredPrices, TimeOfDateConstraint

from metering.costs.ratecards import US_PER_DAY, RateCardError, TenantPrice, _time_of_day_us

BUCKET_KEYS = ("utc_shift", "period", "band")
"""The bucket's keys beside a detail row's (`metering.rollup.summary.DETAIL_KEYS`)."""


@dataclass(frozen=True)
class BucketScheme:
    """Tier thresholds (input tokens, ascending) and time-of-day cutpoints (microseconds after
    UTC midnight, ascending) that the buckets separate."""

    thresholds: tuple[int, ...] = ()
    cutpoints: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        """The stored form (`rollup_state.price_buckets`), which `parse` reads back."""
        return "tiers=" + ",".join(map(str, self.thresholds)) + ";periods=" + ",".join(map(str, self.cutpoints))

    @classmethod
    def parse(cls, text: str | None) -> BucketScheme | None:
        """None for a tenant whose rollup has no buckets yet (rolled up before they existed)."""
        if not text:
            return None
        parts = dict(part.split("=", 1) for part in text.split(";"))
        numbers = {name: tuple(int(n) for n in value.split(",") if n) for name, value in parts.items()}
        return cls(numbers["tiers"], numbers["periods"])

    def covers(self, other: BucketScheme) -> bool:
        """Whether these buckets separate every event that `other`'s would."""
        return set(other.thresholds) <= set(self.thresholds) and set(other.cutpoints) <= set(self.cutpoints)

    def band(self, input_tokens: np.ndarray) -> np.ndarray:
        """How many thresholds each input exceeds (a tier applies when input > its start)."""
        return np.searchsorted(np.array(self.thresholds, dtype=np.int64), input_tokens, side="left")

    def period(self, time_us: np.ndarray) -> np.ndarray:
        """How many cutpoints each time of day has reached."""
        return np.searchsorted(np.array(self.cutpoints, dtype=np.int64), np.asarray(time_us) % US_PER_DAY, side="right")

    def tier_input(self, band: np.ndarray) -> np.ndarray:
        """An input count of each band: it exceeds exactly the band's thresholds."""
        above = np.array((-1, *self.thresholds), dtype=np.int64)
        return above[np.asarray(band, dtype=np.int64)] + 1

    def time_of_day(self, period: np.ndarray) -> np.ndarray:
        """A time of day (microseconds after UTC midnight) of each period."""
        return np.array((0, *self.cutpoints), dtype=np.int64)[np.asarray(period, dtype=np.int64)]


def scheme_for(overrides: Iterable[Mapping[str, Any]]) -> BucketScheme:
    """The buckets that the snapshot's prices and the tenant's `overrides` need."""
    thresholds, cutpoints = _snapshot_needs()
    tenant: set[int] = set()
    for raw in overrides:
        if "match" in raw:  # an alias: its target's price is the snapshot's or the tenant's
            continue
        try:
            price = TenantPrice.from_mapping(raw)
        except RateCardError:  # the rollup reports it when it prices; no threshold to keep
            continue
        tenant.update(tier.above for version in price.versions for tier in version.tiers)
    return BucketScheme(tuple(sorted(thresholds | tenant)), tuple(sorted(cutpoints)))


@lru_cache(maxsize=1)
def _snapshot_needs() -> tuple[frozenset[int], frozenset[int]]:
    """Every tier start and time-of-day switch in genai-prices' bundled snapshot."""
    thresholds: set[int] = set()
    cutpoints: set[int] = set()
    for provider in bundled_providers:
        for model in provider.models:
            prices = model.prices if isinstance(model.prices, list) else [ConditionalPrice(prices=model.prices)]
            for conditional in prices:
                if isinstance(conditional.constraint, TimeOfDateConstraint):
                    cutpoints.update(_time_of_day_us(t) for t in (conditional.constraint.start_time, conditional.constraint.end_time))
                for value in vars(conditional.prices).values():
                    if isinstance(value, TieredPrices):
                        thresholds.update(tier.start for tier in value.tiers)
    return frozenset(thresholds), frozenset(cutpoints)


def representative_us(day: np.ndarray, utc_shift: np.ndarray, period: np.ndarray, scheme: BucketScheme) -> np.ndarray:
    """An instant of each bucket (`day` as days since 1970-01-01): every event of the bucket has
    the same price version as this instant."""
    utc_day = np.asarray(day, dtype=np.int64) + np.asarray(utc_shift, dtype=np.int64)
    return utc_day * US_PER_DAY + scheme.time_of_day(period)


def days_since_epoch(days: Iterable[date | datetime | str] | np.ndarray) -> np.ndarray:
    """Dates (as the database returns them, or a datetime64 column) as days since 1970-01-01."""
    values = np.asarray(days)
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[D]").astype(np.int64)
    return np.array(list(days), dtype="datetime64[D]").astype(np.int64)

