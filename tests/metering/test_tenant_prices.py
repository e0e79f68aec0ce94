"""Tenant prices with everything the snapshot expresses (context tiers, 1-hour cache writes,
dated versions), model aliases and provider prefixes: exact costs, no database."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import orjson
import pandas as pd
import pytest
from genai_prices import Usage
from genai_prices.data import providers

from metering.costs.book import price_version
from metering.costs.prices import exact_cost, price_usage
from metering.costs.ratecards import PriceBook, RateCardError, TenantPrice, normalized_name
from tests.metering.test_prices import SNAPSHOT, costs, event, frame

SONNET_4 = {
    "provider": "anthropic", "model": "claude-sonnet-4",
    "input": "3.00", "output": "15.00", "cache_read": "0.30", "cache_write": "3.75", "cache_write_1h": "6.00",
    "tiers": [{"above": 200_000, "input": "6.00", "output": "22.50", "cache_read": "0.60", "cache_write": "7.50",
               "cache_write_1h": "12.00"}],
}  # fmt: skip


def with_1h(one_hour: int, **kwargs: object) -> dict[str, object]:
    return {**event(**kwargs), "cache_write_1h_tokens": one_hour}  # type: ignore[arg-type]


def priced(book: PriceBook, *events: dict[str, object]) -> list[Decimal | None]:
    columns = [*frame(event()).columns, "cache_write_1h_tokens"]
    rows = [{"cache_write_1h_tokens": 0, **e} for e in events]
    df = pd.DataFrame(rows, columns=columns).astype({c: np.int64 for c in columns[3:]})
    out = price_usage(df, book)
    return [
        exact_cost(n, r) if p else None
        for p, n, r in zip(out.priced, out.cost_nanos, out.cost_rem, strict=True)
    ]


class TestContextTiers:
    def test_claude_sonnet_4_above_200k_input_tokens_per_request(self) -> None:
        book = PriceBook([SONNET_4])
        at_limit = event("anthropic", "claude-sonnet-4", input=200_000, output=1_000)
        above = event("anthropic", "claude-sonnet-4", input=200_001, output=1_000)
        # 200,000 x $3 + 1,000 x $15 per million; then every token at the tier's rates.
        assert costs(book, at_limit, above) == [Decimal("0.615"), Decimal("1.222506")]

    def test_cache_tokens_count_toward_the_tier_and_take_its_rates(self) -> None:
        book = PriceBook([SONNET_4])
        over = with_1h(
            50_000,
            provider="anthropic",
            model="claude-sonnet-4",
            input=200_001,
            cache_read=100_000,
            cache_write=100_000,
        )
        # 1 x $6 + 100,000 x $0.60 + 50,000 x $7.50 + 50,000 x $12.00, per million.
        assert priced(book, over) == [Decimal("1.035006")]

    def test_a_tier_that_omits_a_class_keeps_its_base_rate(self) -> None:
        price = {
            "provider": "x",
            "model": "y",
            "input": "1",
            "output": "2",
            "tiers": [{"above": 10, "input": "5"}],
        }
        assert costs(PriceBook([price]), event("x", "y", input=11, output=1_000_000)) == [Decimal("2.000055")]

    def test_the_snapshot_lacks_the_tier_the_tenant_adds(self) -> None:
        above = event("anthropic", "claude-sonnet-4", input=200_001)
        assert costs(SNAPSHOT, above) == [Decimal("0.600003")]
        assert costs(PriceBook([SONNET_4]), above) == [Decimal("1.200006")]

    @pytest.mark.parametrize(
        ("tiers", "reason"),
        [
            ([{"above": 10, "input": "2"}, {"above": 10, "input": "3"}], "increasing"),
            ([{"above": 10}], "at least one rate"),
            ([{"above": -1, "input": "2"}], "whole number"),
            ([{"above": 10, "cache_read": "2"}], "set cache_read"),
            ([{"above": 10, "input": "2", "speed": "fast"}], "a tier has"),
        ],
    )
    def test_bad_tiers_are_refused(self, tiers: list[dict[str, object]], reason: str) -> None:
        with pytest.raises(RateCardError, match=reason):
            PriceBook([{"provider": "x", "model": "y", "input": "1", "output": "1", "tiers": tiers}])


class TestOneHourCacheWrites:
    # The sample: every cache write a 1-hour one. Priced at the 5-minute rate it came
    # to $0.138750, 12.7% under.
    SAMPLE = {"input": 79_000, "cache_read": 50_000, "cache_write": 9_000, "output": 2_000}

    def test_the_sample_costs_the_1h_rate_exactly_as_genai_prices(self) -> None:
        sample = with_1h(
            9_000,
            provider="anthropic",
            model="claude-sonnet-4-20250514",
            at=datetime(2025, 10, 1, tzinfo=UTC),
            **self.SAMPLE,
        )  # type: ignore[arg-type]
        [cost] = priced(SNAPSHOT, sample)
        assert cost == Decimal("0.159")
        info = next(
            m for p in providers if p.id == "anthropic" for m in p.models if m.id == "claude-sonnet-4-0"
        )
        usage = Usage(
            input_tokens=79_000,
            cache_read_tokens=50_000,
            cache_write_tokens=9_000,
            cache_write_1h_tokens=9_000,
            output_tokens=2_000,
        )
        assert info.prices.calc_price(usage)["total_price"] == cost  # type: ignore[union-attr]

    def test_without_1h_writes_all_writes_cost_the_write_rate(self) -> None:
        sample = event("anthropic", "claude-sonnet-4-20250514", **self.SAMPLE)  # type: ignore[arg-type]
        assert costs(SNAPSHOT, sample) == [Decimal("0.13875")]

    def test_a_price_without_a_1h_rate_charges_the_write_rate(self) -> None:
        price = {"provider": "x", "model": "y", "input": "1", "output": "1", "cache_write": "2"}
        assert priced(
            PriceBook([price]),
            with_1h(1_000_000, provider="x", model="y", input=2_000_000, cache_write=2_000_000),
        ) == [Decimal(4)]

    def test_a_tenant_1h_rate_prices_the_1h_writes(self) -> None:
        price = {
            "provider": "x",
            "model": "y",
            "input": "1",
            "output": "1",
            "cache_write": "2",
            "cache_write_1h": "3",
        }
        assert priced(
            PriceBook([price]),
            with_1h(1_000_000, provider="x", model="y", input=2_000_000, cache_write=2_000_000),
        ) == [Decimal(5)]

    def test_more_1h_writes_than_writes_are_refused(self) -> None:
        with pytest.raises(ValueError, match="cache_write_1h_tokens"):
            priced(
                SNAPSHOT, with_1h(2, provider="anthropic", model="claude-sonnet-4", input=5, cache_write=1)
            )


class TestVersions:
    PRICE = {
        "provider": "acme-ai", "model": "acme-large",
        "versions": [{"input": "2", "output": "2"}, {"start_date": "2026-11-01", "input": "1", "output": "1"}],
    }  # fmt: skip

    def test_a_version_applies_from_its_utc_start_date(self) -> None:
        book = PriceBook([self.PRICE])
        before = event(
            "acme-ai", "acme-large", at=datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), input=10**6
        )
        after = event("acme-ai", "acme-large", at=datetime(2026, 11, 1, tzinfo=UTC), input=10**6)
        assert costs(book, before, after) == [Decimal(2), Decimal(1)]
        versions = price_usage(frame(before, after), book)["price_version"].tolist()
        assert versions[0] != versions[1] and all(v.startswith("tenant:") for v in versions)

    def test_two_versions_on_one_day_are_refused(self) -> None:
        same = {**self.PRICE, "versions": [{"start_date": "2026-11-01", "input": "1", "output": "1"}] * 2}
        with pytest.raises(RateCardError, match="same date"):
            PriceBook([same])


class TestModelNames:
    @pytest.mark.parametrize(
        ("provider", "model", "expected"),
        [
            ("google", "models/gemini-2.5-pro", ("google", "gemini-2.5-pro")),
            (
                "anthropic",
                "anthropic.claude-sonnet-4-5-20250929-v1:0",
                ("anthropic", "claude-sonnet-4-5-20250929"),
            ),
            ("aws", "us.anthropic.claude-sonnet-4-20250514-v1:0", ("anthropic", "claude-sonnet-4-20250514")),
            ("azure", "prod-gpt4o-eastus", None),  # a deployment name: only an alias maps it
            ("openai", "gpt-4o", None),
        ],
    )
    def test_common_provider_prefixes(
        self, provider: str, model: str, expected: tuple[str, str] | None
    ) -> None:
        assert normalized_name(provider, model) == expected

    def test_prefixed_names_cost_as_the_model(self) -> None:
        plain = costs(SNAPSHOT, event("google", "gemini-2.5-pro", input=10**6))
        assert costs(SNAPSHOT, event("google", "models/gemini-2.5-pro", input=10**6)) == plain
        resolution = SNAPSHOT.resolve("anthropic", "anthropic.claude-sonnet-4-5-20250929-v1:0")
        assert (resolution.source, resolution.priced_as, resolution.normalized) == (
            "snapshot",
            ("anthropic", "claude-sonnet-4-5-20250929"),
            True,
        )

    def test_the_first_matching_alias_wins(self) -> None:
        aliases = [
            {"match": "prod-gpt4o-*", "provider": "openai", "model": "gpt-4o"},
            {"match": "prod-*", "provider": "openai", "model": "gpt-4o-mini"},
            {"match": "anthropic.claude-sonnet-4-5*", "provider": "anthropic", "model": "claude-sonnet-4-5"},
        ]
        book = PriceBook(aliases)
        events = [event("azure", "PROD-gpt4o-eastus", input=10**5), event("azure", "prod-mini", input=10**5),
                  event("aws", "anthropic.claude-sonnet-4-5-v2", input=10**5)]  # fmt: skip
        assert costs(book, *events) == [Decimal("0.25"), Decimal("0.015"), Decimal("0.3")]
        resolution = book.resolve("azure", "prod-gpt4o-eastus")
        assert (resolution.alias, resolution.priced_as, resolution.source) == (
            "prod-gpt4o-*",
            ("openai", "gpt-4o"),
            "snapshot",
        )

    def test_an_alias_to_a_tenant_price(self) -> None:
        book = PriceBook([{"match": "ft:acme-*", "provider": "acme-ai", "model": "acme-large"},
                          {"provider": "acme-ai", "model": "acme-large", "input": "1", "output": "1"}])  # fmt: skip
        assert costs(book, event("openai", "ft:acme-2026", input=10**6)) == [Decimal(1)]
        assert book.resolve("openai", "ft:acme-2026").source == "tenant"

    def test_a_malformed_alias_is_refused(self) -> None:
        with pytest.raises(RateCardError, match="alias"):
            PriceBook([{"match": "x*", "provider": "openai"}])


class TestPriceVersion:
    """The rollup rebuilds a tenant when the digest of its prices changes: the same prices,
    however stored, must digest the same, and prices stored before they had versions must
    digest as they did then (else the upgrade rebuilds every tenant with prices)."""

    FLAT = [
        {"provider": "acme-ai", "model": "acme-large", "input": "3", "output": "15.00", "cache_read": "0.30"},
        {"provider": "openai", "model": "gpt-4o", "input": "2.5", "output": "10", "cache_read": "1.25", "cache_write": "0"},
    ]  # fmt: skip
    # price_version(FLAT) computed by the release before prices had tiers and versions (ead178f).
    BEFORE_VERSIONS = "49cfdee55d42"

    @staticmethod
    def digest(overrides: list[dict[str, object]]) -> str:
        return price_version(overrides).rsplit("+tenant:", 1)[1]

    @staticmethod
    def stored_spec(entry: dict[str, object]) -> dict[str, object]:
        """The `spec` column as the config load writes it (`TenantPrice.as_mapping`, sorted keys)."""
        return orjson.loads(orjson.dumps(TenantPrice.from_mapping(entry).as_mapping(), option=orjson.OPT_SORT_KEYS))

    def test_flat_prices_digest_as_before_versions_in_either_stored_form(self) -> None:
        assert self.digest(self.FLAT) == self.BEFORE_VERSIONS  # rows stored before the spec column
        specs = [self.stored_spec(entry) for entry in self.FLAT]
        assert specs[0] == {"model": "acme-large", "provider": "acme-ai",
                            "versions": [{"cache_read": "0.30", "input": "3", "output": "15.00"}]}  # fmt: skip
        assert self.digest(specs) == self.BEFORE_VERSIONS

    @pytest.mark.parametrize("change", [
        {"output": "15.01"}, {"cache_write_1h": "6"}, {"request": "0.01"},
        {"tiers": [{"above": 200000, "input": "6"}]},
    ])  # fmt: skip
    def test_any_change_to_a_price_changes_the_digest(self, change: dict[str, object]) -> None:
        changed = [{**self.FLAT[0], **change}, self.FLAT[1]]
        assert self.digest(changed) != self.BEFORE_VERSIONS
        assert self.digest([self.stored_spec(entry) for entry in changed]) == self.digest(changed)

    def test_a_dated_version_is_not_the_flat_price(self) -> None:
        dated = {"provider": "acme-ai", "model": "acme-large",
                 "versions": [{"input": "3", "output": "15.00", "cache_read": "0.30", "start_date": "2026-11-01"}]}  # fmt: skip
        assert self.digest([dated, self.FLAT[1]]) != self.BEFORE_VERSIONS

    def test_aliases_and_their_order_are_digested(self) -> None:
        first, second = ({"match": m, "provider": "openai", "model": "gpt-4o"} for m in ("my-gpt*", "azure-*"))
        with_aliases = self.digest([*self.FLAT, first, second])
        assert with_aliases not in (self.BEFORE_VERSIONS, self.digest([*self.FLAT, second, first]))
