"""Rate cards: provider prices resolved once per (provider, model, price version).

Prices come from the snapshot bundled with `genai-prices` (never the network, never `UpdatePrices`)
plus a tenant's overrides. A `RateCard` holds exact `Decimal` rates for the four billable token
classes (DESIGN.md) and a per-request fee; `metering.costs.prices` applies cards to whole columns.

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
  searches, audio/image/video tokens, reasoning priced apart) count zero, exactly as
  genai-prices does when the usage does not report them.
- 1-hour cache writes (`cache_write_1h_tokens`, a subset of `cache_write_tokens`) cost
  `cache_write_1h_mtok` when the model has it, else the cache-write rate, as genai-prices
  decomposes them: the other cache writes cost `cache_write_mtok`.
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

import fnmatch
import hashlib
import re
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

from metering.core.money import parse_decimal
from metering.core.vocabulary import RATE_CARD_CLASSES

US_PER_DAY = 86_400 * 10**6
MAX_TOKEN_RATE = Decimal(2000)
"""Highest rate per million tokens we accept. It keeps the int64 arithmetic of `metering.costs.prices`
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
    reads nor cache writes. `cache_write_1h` (default: the `cache_write` rate) prices 1-hour
    cache writes. `request` is money per request (per usage event).
    """

    price_version: str
    input: Rate
    cache_read: Rate
    cache_write: Rate
    output: Rate
    request: Rate = ZERO
    cache_write_1h: Rate | None = None

    def __post_init__(self) -> None:
        if self.cache_write_1h is None:
            object.__setattr__(self, "cache_write_1h", self.cache_write)
        # Fail at resolution time, naming the price, rather than mid-way through a batch.
        for name in RATE_CARD_CLASSES:
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
        rates = {name: getattr(self, name).scaled(9, name) for name in RATE_CARD_CLASSES}
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
    cache_write = _rate(price.cache_write_mtok) or input_rate
    return RateCard(
        price_version=price_version,
        input=input_rate,
        cache_read=_rate(price.cache_read_mtok) or input_rate,
        cache_write=cache_write,
        cache_write_1h=_rate(price.cache_write_1h_mtok) or cache_write,
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


RATE_KEYS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "request")
"""A tenant price's rates: per million tokens, and `request` per request (usage event)."""
TIER_KEYS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")
_VERSION_KEYS = {*RATE_KEYS, "tiers", "start_date"}


@dataclass(frozen=True)
class TenantTier:
    """A context tier: when a request's input tokens (cache included) exceed `above`, the rates
    it gives apply to every token of their class (a cliff, as genai-prices' `TieredPrices`).
    A class the tier does not name keeps its rate of the level below."""

    above: int
    rates: tuple[tuple[str, Decimal], ...]

    def rate(self, name: str) -> Decimal | None:
        return dict(self.rates).get(name)


@dataclass(frozen=True)
class TenantRates:
    """One version of a tenant's price: in force from `start_date` (UTC date, as genai-prices'
    `StartDateConstraint`; None: since always). Omitted cache rates cost as input (tiers
    included); an omitted `cache_write_1h` costs as `cache_write`."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    request: Decimal | None = None
    tiers: tuple[TenantTier, ...] = ()
    start_date: date | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object], what: str) -> TenantRates:
        unknown = set(raw) - _VERSION_KEYS
        if unknown:
            raise RateCardError(f"{what}: unknown price keys: {', '.join(sorted(unknown))}")
        rates = {key: _decimal(raw[key], f"{what} {key}") for key in RATE_KEYS if raw.get(key) is not None}
        if "input" not in rates or "output" not in rates:
            raise RateCardError(f"{what}: input and output rates are required")
        tiers: list[TenantTier] = []
        raw_tiers = raw.get("tiers") or ()
        if not isinstance(raw_tiers, list | tuple):
            raise RateCardError(f"{what} tiers: must be a list")
        for index, tier in enumerate(raw_tiers):
            where = f"{what} tiers[{index}]"
            if not isinstance(tier, Mapping) or set(tier) - {"above", *TIER_KEYS}:
                raise RateCardError(f"{where}: a tier has `above` and rates among {', '.join(TIER_KEYS)}")
            above = tier.get("above")
            if type(above) is not int or above < 0:
                raise RateCardError(f"{where}.above: must be a whole number of input tokens >= 0")
            if tiers and above <= tiers[-1].above:
                raise RateCardError(f"{where}.above: tiers must be in increasing order of `above`")
            given = tuple(
                (k, _decimal(tier[k], f"{where}.{k}")) for k in TIER_KEYS if tier.get(k) is not None
            )
            if not given:
                raise RateCardError(f"{where}: a tier needs at least one rate")
            for key, _ in given:
                if key in ("cache_read", "cache_write") and key not in rates:
                    raise RateCardError(
                        f"{where}.{key}: set {key} on the price to tier it (it costs as input)"
                    )
            tiers.append(TenantTier(above, given))
        start = raw.get("start_date")
        if isinstance(start, str):
            try:
                start = date.fromisoformat(start)
            except ValueError:
                raise RateCardError(f"{what} start_date: must be a date such as 2026-11-01") from None
        if start is not None and type(start) is not date:
            raise RateCardError(f"{what} start_date: must be a date such as 2026-11-01")
        return cls(**rates, tiers=tuple(tiers), start_date=start)

    def as_mapping(self) -> dict[str, object]:
        """The stored form (decimal strings), which `from_mapping` reads back."""
        out: dict[str, object] = {k: f"{v:f}" for k in RATE_KEYS if (v := getattr(self, k)) is not None}
        if self.tiers:
            out["tiers"] = [{"above": t.above, **{k: f"{v:f}" for k, v in t.rates}} for t in self.tiers]
        if self.start_date is not None:
            out["start_date"] = self.start_date.isoformat()
        return out

    def card(self) -> RateCard:
        def tiered(name: str, base: Decimal, follows: Rate | None = None) -> Rate:
            steps = tuple((t.above, rate) for t in self.tiers if (rate := t.rate(name)) is not None)
            if follows is not None and not steps:
                return follows
            return Rate(base, steps)

        input_rate = tiered("input", self.input)
        cache_read = tiered("cache_read", self.cache_read) if self.cache_read is not None else input_rate
        cache_write = tiered("cache_write", self.cache_write) if self.cache_write is not None else input_rate
        cache_write_1h = (
            tiered("cache_write_1h", self.cache_write_1h)
            if self.cache_write_1h is not None
            else tiered("cache_write_1h", cache_write.base, follows=cache_write)
        )
        rates = {
            "input": input_rate, "cache_read": cache_read, "cache_write": cache_write,
            "cache_write_1h": cache_write_1h, "output": tiered("output", self.output),
            "request": Rate(self.request if self.request is not None else Decimal(0)),
        }  # fmt: skip
        # The version names the effective rates: changed rates make a new version, and the
        # same rates written as "3" or "3.00" make the same one.
        text = "|".join(
            ";".join(f"{price.normalize():f}@{start}" for start, price in ((-1, rate.base), *rate.tiers))
            for rate in rates.values()
        )
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return RateCard(f"tenant:{digest}", **rates)


def _decimal(value: object, what: str) -> Decimal:
    try:
        return parse_decimal(value)
    except ValueError as error:
        raise RateCardError(f"{what}: {error}") from None


@dataclass(frozen=True)
class TenantPrice:
    """A tenant's price for one model: one or more versions by start date (per million tokens)."""

    provider: str
    model: str
    versions: tuple[TenantRates, ...]

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object]) -> TenantPrice:
        """A price from a mapping: its rates inline (one version), or `versions` (a list of
        rate mappings, each with an optional `start_date`)."""
        provider, model = raw.get("provider"), raw.get("model")
        if not isinstance(provider, str) or not isinstance(model, str) or not provider or not model:
            raise RateCardError("a price needs a provider and a model")
        what = f"{provider}/{model}"
        body = {k: v for k, v in raw.items() if k not in ("provider", "model")}
        if "versions" in body:
            if set(body) != {"versions"} or not isinstance(body["versions"], list) or not body["versions"]:
                raise RateCardError(f"{what}: `versions` is a non-empty list and replaces inline rates")
            versions = [TenantRates.from_mapping(v if isinstance(v, Mapping) else {}, f"{what} versions[{i}]")
                        for i, v in enumerate(body["versions"])]  # fmt: skip
        else:
            versions = [TenantRates.from_mapping(body, what)]
        versions.sort(key=lambda v: (v.start_date is not None, v.start_date or date.min))
        starts = [v.start_date for v in versions]
        if len(set(starts)) != len(starts):
            raise RateCardError(f"{what}: two versions start on the same date")
        return cls(provider=provider, model=model, versions=tuple(versions))

    def as_mapping(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "model": self.model,
            "versions": [v.as_mapping() for v in self.versions],
        }

    def normal_form(self) -> dict[str, object]:
        """`as_mapping` with its default left out: a price of one version in force since always
        has its rates inline (as `from_mapping` also reads it, and as prices were written before
        they had versions). The same price, however written or stored, has one normal form."""
        first = self.versions[0]
        if len(self.versions) == 1 and first.start_date is None:
            return {"provider": self.provider, "model": self.model, **first.as_mapping()}
        return self.as_mapping()

    def pricing(self) -> ModelPricing:
        cards = tuple(version.card() for version in self.versions)
        constraints: tuple[Constraint, ...] = tuple(
            None if v.start_date is None else StartDateConstraint(start_date=v.start_date)
            for v in self.versions
        )
        return ModelPricing(
            provider_id=_norm(self.provider), model_id=_norm(self.model), cards=cards, constraints=constraints
        )


@dataclass(frozen=True)
class ModelAlias:
    """A tenant's name for a model: events whose model matches the glob `match` (case-insensitive)
    are priced as `provider`/`model`. The first alias that matches wins."""

    match: str
    provider: str
    model: str

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(_norm(model), _norm(self.match))


# Names as providers' APIs and clouds send them, and the name genai-prices knows them by.
_GEMINI_PATH = re.compile(r"^(?:projects/[^/]+/locations/[^/]+/publishers/google/)?models/")
_BEDROCK = re.compile(
    r"^(?:(?:us|eu|apac|ap|global|jp|au|ca|us-gov)\.)?(?P<vendor>anthropic|meta|mistral|amazon|cohere|deepseek|openai)\.(?P<model>.+?)(?:-v\d+(?::\d+)?)?$"
)
_BEDROCK_PROVIDER = {"anthropic": "anthropic", "meta": "meta", "mistral": "mistral", "amazon": "aws",
                     "cohere": "cohere", "deepseek": "deepseek", "openai": "openai"}  # fmt: skip


def normalized_name(provider: str, model: str) -> tuple[str, str] | None:
    """The common provider spellings of a model name, as (provider, model), or None when the
    name has none: `models/gemini-2.5-pro` (Gemini API, Vertex paths), Bedrock's
    `anthropic.claude-sonnet-4-5-20250929-v1:0` and its cross-region `us.`/`eu.`/`global.`
    forms. Azure deployment names are the customer's own: only a tenant alias maps them."""
    name = model.strip()
    if (stripped := _GEMINI_PATH.sub("", name)) != name:
        return provider, stripped
    if (found := _BEDROCK.match(name.lower())) is not None:
        return _BEDROCK_PROVIDER[found["vendor"]], found["model"]
    return None


@dataclass(frozen=True)
class Resolution:
    """How a (provider, model) as sent was priced: `source` is `tenant`, `snapshot` or
    `unpriced`; `priced_as` the (provider, model) looked up after an alias or a normalized name."""

    pricing: ModelPricing | None
    source: str
    priced_as: tuple[str, str]
    alias: str | None = None  # the matching alias's `match`
    normalized: bool = False


def _norm(text: str) -> str:
    return text.strip().lower()


class PriceBook:
    """Resolves (provider, model) to its `ModelPricing`: a tenant alias first (the model name it
    maps to), then tenant overrides, then the genai-prices bundled snapshot (`providers` replaces
    it in tests), then the same with the name's provider prefix normalized (`normalized_name`).
    Lookups are cached per (provider, model) pair and cards per model; None means unpriced.

    `overrides` holds prices (`TenantPrice` or its mapping) and aliases (`ModelAlias` or a mapping
    with `match`), in the tenant's order: the rollup passes them as one picklable list."""

    def __init__(
        self,
        overrides: Iterable[TenantPrice | ModelAlias | Mapping[str, object]] = (),
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
        self._overridden: set[tuple[str, str]] = set()
        self._lookups: dict[tuple[object, object], Resolution] = {}
        self.aliases: list[ModelAlias] = []
        self.inexact: dict[tuple[str, str], str] = {}
        for raw in overrides:
            if isinstance(raw, ModelAlias) or (isinstance(raw, Mapping) and "match" in raw):
                self.aliases.append(raw if isinstance(raw, ModelAlias) else _alias(raw))
                continue
            price = raw if isinstance(raw, TenantPrice) else TenantPrice.from_mapping(raw)
            key = (_norm(price.provider), _norm(price.model))
            if key in self._exact:
                raise RateCardError(f"duplicate price for {price.provider}/{price.model}")
            self._exact[key] = pricing = price.pricing()
            # An override of a known model also covers its aliases (gpt-4o-2024-08-06 for gpt-4o).
            if (found := self._find(*key)) is not None:
                self._by_model.setdefault((found[0].id, found[1].id), pricing)
                self._overridden.add((found[0].id, found[1].id))

    def lookup(self, provider: object, model: object) -> ModelPricing | None:
        return self.resolve(provider, model).pricing

    def resolve(self, provider: object, model: object) -> Resolution:
        key = (provider, model)
        if key not in self._lookups:
            self._lookups[key] = self._resolve_named(provider, model)
        return self._lookups[key]

    def _resolve_named(self, provider: object, model: object) -> Resolution:
        if not isinstance(provider, str) or not isinstance(model, str):
            return Resolution(None, "unpriced", (str(provider), str(model)))
        for alias in self.aliases:
            if alias.matches(model):
                pricing, source = self._resolve(alias.provider, alias.model)
                return Resolution(pricing, source, (alias.provider, alias.model), alias=alias.match)
        pricing, source = self._resolve(provider, model)
        if pricing is None and (normalized := normalized_name(provider, model)) is not None:
            found, found_source = self._resolve(*normalized)
            if found is not None:
                return Resolution(found, found_source, normalized, normalized=True)
        return Resolution(pricing, source, (provider, model))

    def _resolve(self, provider: str, model: str) -> tuple[ModelPricing | None, str]:
        if (exact := self._exact.get((_norm(provider), _norm(model)))) is not None:
            return exact, "tenant"
        if (found := self._find(provider, model)) is None:
            return None, "unpriced"
        known_provider, info = found
        key = (known_provider.id, info.id)
        if key not in self._by_model:
            try:
                self._by_model[key] = pricing_from_model(known_provider.id, info)
            except RateCardError as exc:
                # A snapshot rate that is not exact (0.0833333333333333 per million) is not
                # approximated: the model stays unpriced until the tenant sets its price.
                self.inexact[key] = str(exc)
                return None, "unpriced"
        pricing = self._by_model[key]
        if not any(card is not None for card in pricing.cards):
            return None, "unpriced"
        return pricing, "tenant" if key in self._overridden else "snapshot"

    def _find(self, provider: str, model: str) -> tuple[Provider, ModelInfo] | None:
        try:
            return self._snapshot.find_provider_model(model, None, provider, None)
        except LookupError:
            return None


def _alias(raw: Mapping[str, object]) -> ModelAlias:
    values = [raw.get(key) for key in ("match", "provider", "model")]
    if set(raw) != {"match", "provider", "model"} or not all(isinstance(v, str) and v for v in values):
        raise RateCardError("a model alias has `match`, `provider` and `model`, all non-empty text")
    return ModelAlias(*values)  # type: ignore[arg-type]
