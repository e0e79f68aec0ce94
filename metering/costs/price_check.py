"""`taskmeter prices check`: the models a tenant's usage names, where each one's price comes from,
and what the prices installed now would change against those its rollup used.

Read from the rollup's `usage_daily` (one row per customer, day and model), not from events. A
model's cost under today's prices is recomputed exactly from those token sums when its price is
linear in them (one price version, no context tiers: a tier depends on each request's size, which
the sums no longer hold); otherwise it is null until `taskmeter rollup` re-prices the events.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select

from metering.core.money import TOKENS_PER_MILLION, display_cost, quantize
from metering.core.tables import rollup_state, usage_daily
from metering.core.vocabulary import RATE_CARD_CLASSES
from metering.costs.prices import billable_classes
from metering.costs.ratecards import GENAI_PRICES_VERSION, PriceBook, RateCard, Resolution
from metering.costs.tenant_prices import stored_price_settings

_SUMS = ("usage_events", "unpriced_events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
         "cache_write_1h_tokens", "cost_nanos", "cost_rem")  # fmt: skip


def check_prices(connection: Connection, tenant_id: int, current_version: str) -> dict[str, Any]:
    """The report (see the module); `current_version` is the rollup's name for the prices in
    force now (`metering.rollup.pipeline.price_version`)."""
    settings = stored_price_settings(connection, tenant_id)
    book = PriceBook(settings)
    rolled = connection.execute(
        select(rollup_state.c.price_version).where(rollup_state.c.tenant_id == tenant_id)
    ).scalar()
    rows = connection.execute(
        select(
            usage_daily.c.provider,
            usage_daily.c.model,
            *[func.sum(usage_daily.c[name]).label(name) for name in _SUMS],
        )
        .where(usage_daily.c.tenant_id == tenant_id)
        .group_by(usage_daily.c.provider, usage_daily.c.model)
    ).all()
    models = [_model(row, book.resolve(row.provider, row.model)) for row in rows]
    models.sort(
        key=lambda m: (m["source"] != "unpriced", m["unpriced_events"] == 0, m["provider"], m["model"])
    )
    rolled_snapshot = rolled.split("+", 1)[0] if rolled else None
    installed = f"genai-prices@{GENAI_PRICES_VERSION}"
    return {
        "rolled_up_with": rolled or None,
        "prices_now": current_version,
        "up_to_date": rolled == current_version,
        "snapshot": {
            "rolled_up_with": rolled_snapshot,
            "installed": installed,
            "changed": rolled_snapshot not in (None, installed),
        },
        "aliases": [s for s in settings if "match" in s],
        "unpriced_models": sum(1 for m in models if m["source"] == "unpriced"),
        "models": models,
    }


def _model(row: Any, found: Resolution) -> dict[str, Any]:
    sums = {name: int(getattr(row, name) or 0) for name in _SUMS}
    stored = display_cost(sums["cost_nanos"], sums["cost_rem"])
    pricing = found.pricing
    cards = [] if pricing is None else [card for card in pricing.cards if card is not None]
    now: Decimal | None = None
    if len(cards) == 1 and pricing is not None and len(pricing.cards) == 1 and not _tiered(cards[0]):
        now = quantize(_linear_cost(cards[0], sums), 6)
    return {
        "provider": row.provider,
        "model": row.model,
        "source": found.source,  # tenant, snapshot or unpriced
        "priced_as": None if pricing is None else f"{found.priced_as[0]}/{found.priced_as[1]}",
        "alias": found.alias,
        "normalized": found.normalized,
        "price_versions": [card.price_version for card in cards],
        "usage_events": sums["usage_events"],
        "unpriced_events": sums["unpriced_events"],
        "provider_cost": stored,
        "provider_cost_now": now,
        "change": None if now is None else now - stored,
    }


def _tiered(card: RateCard) -> bool:
    return any(getattr(card, name).tiers for name in (*RATE_CARD_CLASSES, "request"))


def _linear_cost(card: RateCard, sums: dict[str, int]) -> Decimal:
    billable = billable_classes(sums)
    tokens = sum((Decimal(count) * getattr(card, name).base for name, count in billable.items()), Decimal(0))
    return tokens / TOKENS_PER_MILLION + Decimal(sums["usage_events"]) * card.request.base
