"""The config file's whole prices (tiers, 1-hour cache writes, dated versions) and model aliases:
validated with paths, stored, and applied by the rollup (exact costs, both databases)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from metering.core.db import unit_of_work
from metering.core.errors import InvalidInput
from metering.core.tables import events, task_usage, tenant_model_aliases
from metering.costs.prices import exact_cost
from metering.events.ingest import ingest_events
from tests.pricing.conftest import PRICES, Billing, at, usage

NOW = at("2026-11-15T12:00:00Z")
SONNET_4 = {
    "provider": "anthropic", "model": "claude-sonnet-4",
    "input": "3.00", "output": "15.00", "cache_read": "0.30", "cache_write": "3.75", "cache_write_1h": "6.00",
    "tiers": [{"above": 200_000, "input": "6.00", "output": "22.50", "cache_read": "0.60", "cache_write": "7.50", "cache_write_1h": "12.00"}],
}  # fmt: skip


def cost_of(billing: Billing, task: str) -> Decimal:
    with billing.engine.connect() as connection:
        row = connection.execute(
            select(task_usage.c.cost_nanos, task_usage.c.cost_rem).where(
                task_usage.c.tenant_id == billing.tenant.id, task_usage.c.task == task
            )
        ).one()
    return exact_cost(row.cost_nanos, row.cost_rem)


def problems(billing: Billing, config: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(InvalidInput) as caught:
        billing.config(config, now=NOW)
    return list(caught.value.detail)


class TestValidation:
    def test_tier_problems_name_their_path(self, billing: Billing) -> None:
        bad = SONNET_4 | {
            "tiers": [{"above": 200_000, "input": "6"}, {"above": 100_000, "input": "-1"}, {"above": 300_000}]
        }
        assert problems(billing, {"prices": [bad]}) == [
            {"field": "prices[0].tiers[1].input", "message": "must not be negative"}
        ]
        ordered = SONNET_4 | {
            "tiers": [{"above": 200_000, "input": "6"}, {"above": 100_000, "input": "7"}, {"above": 300_000}]
        }
        assert [d["field"] for d in problems(billing, {"prices": [ordered]})] == [
            "prices[0].tiers[1].above",
            "prices[0].tiers[2]",
        ]

    def test_unknown_keys_and_bad_aliases(self, billing: Billing) -> None:
        config = {
            "prices": [SONNET_4 | {"speed": "fast"}],
            "models": [{"match": "x*", "provider": "openai"}, {"match": "", "provider": "a", "model": "b"}],
        }
        assert [d["field"] for d in problems(billing, config)] == [
            "prices[0].speed",
            "models[0].model",
            "models[1].match",
        ]

    def test_the_same_model_twice_needs_different_start_dates(self, billing: Billing) -> None:
        twice = [PRICES[0], PRICES[0] | {"input": "2.00"}]
        assert [d["field"] for d in problems(billing, {"prices": twice})] == ["prices[1]"]
        dated = [PRICES[0], PRICES[0] | {"input": "2.00", "start_date": "2026-11-10"}]
        assert billing.config({"prices": dated}, now=NOW)["prices"] == {
            "added": 0,
            "changed": 1,
            "removed": 0,
            "unchanged": 0,
        }


class TestApplied:
    def test_a_tier_the_snapshot_lacks_prices_200001_tokens(self, billing: Billing) -> None:
        billing.config({"prices": [*PRICES, SONNET_4]}, now=NOW)
        common = {"provider": "anthropic", "model": "claude-sonnet-4", "output_tokens": 1_000}
        billing.send(usage("at", "2026-11-02T10:00:00Z", input_tokens=200_000) | common,
                     usage("above", "2026-11-02T10:00:00Z", input_tokens=200_001) | common)  # fmt: skip
        billing.rollup(now=NOW)
        assert (cost_of(billing, "at"), cost_of(billing, "above")) == (Decimal("0.615"), Decimal("1.222506"))

    def test_1h_cache_writes_are_stored_and_priced(self, billing: Billing) -> None:
        billing.config({"prices": [*PRICES, SONNET_4]}, now=NOW)
        sample = {"provider": "anthropic", "model": "claude-sonnet-4", "cache_read_tokens": 50_000, "cache_write_tokens": 9_000,
                  "cache_write_1h_tokens": 9_000, "output_tokens": 2_000}  # fmt: skip
        billing.send(usage("sample", "2026-11-02T10:00:00Z", input_tokens=79_000) | sample)
        billing.rollup(now=NOW)
        assert cost_of(billing, "sample") == Decimal("0.159")
        with billing.engine.connect() as connection:
            assert connection.execute(select(events.c.cache_write_1h_tokens)).scalar_one() == 9_000
            assert connection.execute(select(task_usage.c.cache_write_1h_tokens)).scalar_one() == 9_000

    def test_more_1h_writes_than_writes_are_rejected_at_ingest(self, billing: Billing) -> None:
        bad = usage("t", "2026-11-02T10:00:00Z", cache_write_tokens=10, cache_write_1h_tokens=11)
        with unit_of_work(billing.engine) as session:
            result = ingest_events(session, billing.tenant.id, [bad], now=NOW)
        assert [e.field for e in result.rejected[0].errors] == ["cache_write_1h_tokens"]

    def test_aliases_price_the_names_providers_send_and_events_keep_them(self, billing: Billing) -> None:
        aliases = [
            {"match": "anthropic.claude-sonnet-4*", "provider": "anthropic", "model": "claude-sonnet-4"}
        ]
        billing.config({"prices": [*PRICES, SONNET_4], "models": aliases}, now=NOW)
        bedrock = {
            "provider": "aws",
            "model": "anthropic.claude-sonnet-4-20250514-v1:0",
            "output_tokens": 1_000,
        }
        billing.send(usage("bedrock", "2026-11-02T10:00:00Z", input_tokens=200_001) | bedrock)
        billing.rollup(now=NOW)
        assert cost_of(billing, "bedrock") == Decimal("1.222506")
        with billing.engine.connect() as connection:
            assert (
                connection.execute(select(events.c.model)).scalar_one()
                == "anthropic.claude-sonnet-4-20250514-v1:0"
            )
            assert (
                connection.execute(select(tenant_model_aliases.c.match)).scalar_one()
                == "anthropic.claude-sonnet-4*"
            )
        # Removing the alias re-prices: the snapshot's regional Bedrock price has no tier.
        assert billing.config({"models": []}, now=NOW)["models"] == {"aliases": 0, "changed": 1}
        billing.rollup(now=NOW)
        assert cost_of(billing, "bedrock") != Decimal("1.222506")
