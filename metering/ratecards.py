"""Rate cards: provider prices resolved once per (provider, model, price version).

Prices come from the snapshot bundled with `genai-prices` (never the network, never `UpdatePrices`)
plus a tenant's overrides. A `RateCard` holds exact `Decimal` rates for the four billable token
classes (DESIGN.md) and a per-request fee; `metering.prices` applies cards to whole columns.

Semantics mirror `genai_prices.types.ModelPrice.calc_price` for a `Usage` carrying only
`input_tokens`, `output_tokens`, `cache_read_tokens` and `cache_write_tokens`:

- A cache class the model does not price is billed as plain input (genai-prices only subtracts
  priced cache classes from `input_tokens`), so the card copies the input rate, tiers included.
  Tenant overrides that omit `cache_read` or `cache_write` get the same rule.
- A missing `input_mtok` or `output_mtok` costs nothing, as in genai-prices. A model with no
  token and no request price at all (free tiers, per-image or per-audio-hour models) is unpriced:
  we never price usage at zero silently.
- Context tiers are cliffs: once the request's input tokens (cache included) exceed a tier's
  start, the tier rate applies to every token of that class.
- `requests_kcount` (per 1000 requests) becomes a per-event fee. Units we do not meter (web
  searches, audio/image/video tokens, TTL-specific cache writes, reasoning priced apart) count
  zero, exactly as genai-prices does when the usage does not report them.
- Service-tier `price_variants` need a request context we do not have; the standard tier is used.

A rate must be a whole number of nano-units per million tokens (9 decimals) and at most
`MAX_TOKEN_RATE`, so that costs stay exact int64 arithmetic; anything else raises
`RateCardError` when the model is resolved. 23 snapshot models (openrouter's Gemini Flash family,
three huggingface_together models) carry float artifacts such as 0.0833333333333333: pricing
their events raises until the tenant overrides them.

Price versions: `genai-prices@<version>:base`, `...:<start date>` or `...:daily-HH:MM-HH:MMZ`
for the snapshot; `tenant:<hash of the effective rates>` for overrides. An override of a model
the snapshot knows also covers that model's aliases (gpt-4o-2024-08-06 for gpt-4o).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import numpy as np
from genai_prices import __version__ as GENAI_PRICES_VERSION
from genai_prices.data import providers as bundled_providers
from genai_prices.data_snapshot import DataSnapshot
from genai_prices.types import (
    ConditionalPrice,
    ModelInfo,
    ModelPrice,
    Provider,
    StartDateConstraint,
    TieredPrices,
    TimeOfDateConstraint,
)

from metering.money import parse_decimal
from metering.vocabulary import TOKEN_CLASSES

US_PER_DAY = 86_400 * 10**6
MAX_TOKEN_RATE = Decimal(2000)
"""Highest rate per million tokens we accept. It keeps the int64 arithmetic of `metering.prices`
exact for up to 10**12 tokens per class and event (o1-pro's $600 is the snapshot's highest)."""
MAX_REQUEST_FEE = Decimal(1000)
"""Highest fee per request we accept, for the same reason."""


class RateCardError(ValueError):
    """A price that cannot be applied exactly (too many decimals, too large, malformed)."""


@dataclass(frozen=True)
class Rate:
    """A price per unit with context tiers: `(start, price)` applies when input tokens > start."""

    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...] = ()

    def scaled(self, exponent: int, what: str) -> tuple[int, tuple[tuple[int, int], ...]]:
        """Integer prices scaled by 10**exponent; raises when that loses precision."""

        def exact(price: Decimal) -> int:
            scaled = price.scaleb(exponent)
            if price < 0 or scaled != scaled.to_integral_value():
                raise RateCardError(f"{what}: {price} is negative or has more than {exponent} decimals")
            return int(scaled)

        return exact(self.base), tuple((start, exact(price)) for start, price in self.tiers)

    @property
    def prices(self) -> tuple[Decimal, ...]:
        return (self.base, *(price for _, price in self.tiers))


ZERO = Rate(Decimal(0))


@dataclass(frozen=True)
class RateCard:
    """Exact prices of one model under one price version.

    Token rates are money per million tokens: `input` prices input tokens that are neither cache
    reads nor cache writes. `request` is money per request (per usage event).
    """

    price_version: str
    input: Rate
    cache_read: Rate
    cache_write: Rate
    output: Rate
    request: Rate = ZERO

    def __post_init__(self) -> None:
        # Fail at resolution time, naming the price, rather than mid-way through a batch.
        for name in TOKEN_CLASSES:
            rate: Rate = getattr(self, name)
            if max(rate.prices) > MAX_TOKEN_RATE:
                raise RateCardError(f"{self.price_version} {name}: above {MAX_TOKEN_RATE} per million tokens")
            rate.scaled(9, f"{self.price_version} {name} per million tokens")
        if max(self.request.prices) > MAX_REQUEST_FEE:
            raise RateCardError(f"{self.price_version} request: above {MAX_REQUEST_FEE} per request")
        self.request.scaled(15, f"{self.price_version} per request")

    def femto_rates(self) -> dict[str, tuple[int, tuple[tuple[int, int], ...]]]:
        """Integer rates in 1e-15 of the currency per unit: per token, and per request.

        A rate per million tokens in nano-units is the same number as a rate per token in
        femto-units, so per-token costs are exact integers in femto-units.
        """
        rates = {name: getattr(self, name).scaled(9, name) for name in TOKEN_CLASSES}
        rates["request"] = self.request.scaled(15, "request")
        return rates


Constraint = StartDateConstraint | TimeOfDateConstraint | None


@dataclass(frozen=True)
class ModelPricing:
    """The price versions of one model and the rule choosing one by event time."""

    provider_id: str
    model_id: str
    cards: tuple[RateCard | None, ...]
    """One per genai-prices `ConditionalPrice`, in its order; None when that version is unpriced."""
    constraints: tuple[Constraint, ...] = (None,)

    def variant_index(self, time_us: np.ndarray) -> np.ndarray:
        """Index into `cards` per event time, as `ModelInfo.get_prices`: the last active
        constraint wins; when none is active, the first price."""
        if len(self.cards) == 1:
            return np.zeros(len(time_us), dtype=np.intp)
        starts = self._sorted_start_us()
        if starts is not None:
            return np.maximum(np.searchsorted(starts, time_us, side="right") - 1, 0)
        index = np.zeros(len(time_us), dtype=np.intp)
        for i, constraint in enumerate(self.constraints):
            index = np.where(_active(constraint, time_us), i, index)
        return index

    def card_at(self, at: datetime) -> RateCard | None:
        return self.cards[int(self.variant_index(np.array([_datetime_us(at)]))[0])]

    def _sorted_start_us(self) -> np.ndarray | None:
        """Start times when every version starts on a date in ascending order, the common case;
        then the last active version is found by binary search."""
        starts = []
        for i, constraint in enumerate(self.constraints):
            if isinstance(constraint, StartDateConstraint):
                starts.append(_date_us(constraint.start_date))
            elif constraint is None and i == 0:
                starts.append(np.iinfo(np.int64).min)
            else:
                return None
        us = np.array(starts, dtype=np.int64)
        return us if bool(np.all(us[1:] >= us[:-1])) else None


def _active(constraint: Constraint, time_us: np.ndarray) -> np.ndarray | bool:
    if constraint is None:
        return True
    if isinstance(constraint, StartDateConstraint):
        # genai-prices compares the request's UTC date with the start date.
        return time_us >= _date_us(constraint.start_date)
    of_day = time_us % US_PER_DAY
    start, end = _time_of_day_us(constraint.start_time), _time_of_day_us(constraint.end_time)
    if end < start:  # the interval wraps past midnight
        return (of_day >= start) | (of_day < end)
    return (of_day >= start) & (of_day < end)


def _date_us(day: date) -> int:
    return _datetime_us(datetime(day.year, day.month, day.day, tzinfo=UTC))


def _datetime_us(at: datetime) -> int:
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _time_of_day_us(value: time) -> int:
    # Naive constraint times are UTC, as in genai-prices.
    if value.tzinfo is not None:
        value = datetime.combine(date(1970, 1, 1), value).astimezone(UTC).time()
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 10**6 + value.microsecond


def _rate(value: Decimal | TieredPrices | None, per_thousand: bool = False) -> Rate | None:
    shift = -3 if per_thousand else 0  # scaleb is exact where a division may round
    if value is None:
        return None
    if isinstance(value, TieredPrices):
        return Rate(value.base.scaleb(shift), tuple((t.start, t.price.scaleb(shift)) for t in value.tiers))
    return Rate(value.scaleb(shift))


def card_from_model_price(price: ModelPrice, price_version: str) -> RateCard | None:
    """The card of one genai-prices `ModelPrice`, or None when it prices nothing we meter."""
    input_rate = _rate(price.input_mtok)
    output_rate = _rate(price.output_mtok)
    request = _rate(price.requests_kcount, per_thousand=True)
    if input_rate is None and output_rate is None and request is None:
        return None
    input_rate = input_rate or ZERO
    return RateCard(
        price_version=price_version,
        input=input_rate,
        cache_read=_rate(price.cache_read_mtok) or input_rate,
        cache_write=_rate(price.cache_write_mtok) or input_rate,
        output=output_rate or ZERO,
        request=request or ZERO,
    )


def _version_label(constraint: Constraint) -> str:
    if constraint is None:
        return "base"
    if isinstance(constraint, StartDateConstraint):
        return constraint.start_date.isoformat()
    start, end = (_time_of_day_us(t) // 60_000_000 for t in (constraint.start_time, constraint.end_time))
    return f"daily-{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}Z"


def pricing_from_model(provider_id: str, model: ModelInfo) -> ModelPricing:
    conditional = model.prices if isinstance(model.prices, list) else [ConditionalPrice(prices=model.prices)]
    prefix = f"genai-prices@{GENAI_PRICES_VERSION}"
    return ModelPricing(
        provider_id=provider_id,
        model_id=model.id,
        cards=tuple(
            card_from_model_price(c.prices, f"{prefix}:{_version_label(c.constraint)}") for c in conditional
        ),
        constraints=tuple(c.constraint for c in conditional),
    )


_OVERRIDE_KEYS = {"provider", "model", "input", "output", "cache_read", "cache_write"}


@dataclass(frozen=True)
class TenantPrice:
    """A tenant's rates for one model, per million tokens. Omitted cache rates cost as input."""

    provider: str
    model: str
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object]) -> TenantPrice:
        unknown = set(raw) - _OVERRIDE_KEYS
        if unknown:
            raise RateCardError(f"unknown price keys: {', '.join(sorted(unknown))}")
        provider, model = raw.get("provider"), raw.get("model")
        if not isinstance(provider, str) or not isinstance(model, str) or not provider or not model:
            raise RateCardError("a price needs a provider and a model")
        rates = {}
        for key in TOKEN_CLASSES:
            if raw.get(key) is not None:
                try:
                    rates[key] = parse_decimal(raw[key])
                except ValueError as error:
                    raise RateCardError(f"{provider}/{model} {key}: {error}") from None
        if "input" not in rates or "output" not in rates:
            raise RateCardError(f"{provider}/{model}: input and output rates are required")
        return cls(provider=provider, model=model, **rates)

    def pricing(self) -> ModelPricing:
        rates = (
            self.input,
            self.cache_read if self.cache_read is not None else self.input,
            self.cache_write if self.cache_write is not None else self.input,
            self.output,
        )
        # The version names the effective rates: changed rates make a new version, and the
        # same rates written as "3" or "3.00" make the same one.
        digest = hashlib.sha256("|".join(f"{r.normalize():f}" for r in rates).encode()).hexdigest()[:12]
        card = RateCard(f"tenant:{digest}", *(Rate(r) for r in rates))
        return ModelPricing(provider_id=_norm(self.provider), model_id=_norm(self.model), cards=(card,))


def _norm(text: str) -> str:
    return text.strip().lower()


class PriceBook:
    """Resolves (provider, model) to its `ModelPricing`: tenant overrides first, then the
    genai-prices bundled snapshot (`providers` replaces it in tests). Lookups are cached per
    (provider, model) pair and cards per model; a lookup of None means unpriced."""

    def __init__(
        self,
        overrides: Iterable[TenantPrice | Mapping[str, object]] = (),
        *,
        providers: list[Provider] | None = None,
    ) -> None:
        # Our own DataSnapshot of the bundled data: genai-prices' global one may have been
        # replaced by UpdatePrices, and prices must not depend on the network.
        self._snapshot = DataSnapshot(
            providers=bundled_providers if providers is None else providers, from_auto_update=False
        )
        self._exact: dict[tuple[str, str], ModelPricing] = {}
        self._by_model: dict[tuple[str, str], ModelPricing] = {}
        self._lookups: dict[tuple[object, object], ModelPricing | None] = {}
        self.inexact: dict[tuple[str, str], str] = {}
        for raw in overrides:
            price = raw if isinstance(raw, TenantPrice) else TenantPrice.from_mapping(raw)
            key = (_norm(price.provider), _norm(price.model))
            if key in self._exact:
                raise RateCardError(f"duplicate price for {price.provider}/{price.model}")
            self._exact[key] = pricing = price.pricing()
            # An override of a known model also covers its aliases (gpt-4o-2024-08-06 for gpt-4o).
            if (found := self._find(*key)) is not None:
                self._by_model.setdefault((found[0].id, found[1].id), pricing)

    def lookup(self, provider: object, model: object) -> ModelPricing | None:
        key = (provider, model)
        if key not in self._lookups:
            self._lookups[key] = self._resolve(provider, model)
        return self._lookups[key]

    def _resolve(self, provider: object, model: object) -> ModelPricing | None:
        if not isinstance(provider, str) or not isinstance(model, str):
            return None
        if (exact := self._exact.get((_norm(provider), _norm(model)))) is not None:
            return exact
        if (found := self._find(provider, model)) is None:
            return None
        known_provider, info = found
        key = (known_provider.id, info.id)
        if key not in self._by_model:
            try:
                self._by_model[key] = pricing_from_model(known_provider.id, info)
            except RateCardError as exc:
                # A snapshot rate that is not exact (0.0833333333333333 per million) is not
                # approximated: the model stays unpriced until the tenant sets its price.
                self.inexact[key] = str(exc)
                return None
        pricing = self._by_model[key]
        return pricing if any(card is not None for card in pricing.cards) else None

    def _find(self, provider: str, model: str) -> tuple[Provider, ModelInfo] | None:
        try:
            return self._snapshot.find_provider_model(model, None, provider, None)
        except LookupError:
            return None
