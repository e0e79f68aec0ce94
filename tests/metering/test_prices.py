"""Provider cost: `metering.costs.prices` against genai-prices' own `calc_price`, exactly."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.core.money import decimal_to_nanos, quantize
from metering.costs.prices import MAX_TOKENS, exact_cost, price_usage, settle_nanos
from metering.costs.ratecards import GENAI_PRICES_VERSION, PriceBook, RateCardError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SNAPSHOT = PriceBook()
VERSION = f"genai-prices@{GENAI_PRICES_VERSION}"


def us(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def event(
    provider: str = "openai",
    model: str = "gpt-4o",
    at: datetime = datetime(2025, 10, 1, 12, tzinfo=UTC),
    input: int = 0,
    output: int = 0,
    cache_read: int = 0,
    cache_write: int = 0,
    task: str = "t1",
) -> dict[str, object]:
    return {
        "task": task, "provider": provider, "model": model, "time_us": us(at), "input_tokens": input,
        "output_tokens": output, "cache_read_tokens": cache_read, "cache_write_tokens": cache_write,
    }  # fmt: skip


def frame(*events: dict[str, object]) -> pd.DataFrame:
    columns = ["task", "provider", "model", "time_us", "input_tokens", "output_tokens",
               "cache_read_tokens", "cache_write_tokens"]  # fmt: skip
    df = pd.DataFrame(list(events), columns=columns)
    return df.astype({c: np.int64 for c in columns[3:]})


def costs(book: PriceBook, *events: dict[str, object]) -> list[Decimal | None]:
    """Each event's exact cost, None when unpriced."""
    out = price_usage(frame(*events), book)
    return [
        exact_cost(n, r) if p else None
        for p, n, r in zip(out.priced, out.cost_nanos, out.cost_rem, strict=True)
    ]


def reference(e: dict[str, object]) -> Decimal:
    """genai-prices' own price of one event, as exact Decimal."""
    usage = Usage(
        input_tokens=e["input_tokens"], output_tokens=e["output_tokens"],
        cache_read_tokens=e["cache_read_tokens"], cache_write_tokens=e["cache_write_tokens"],
    )  # fmt: skip
    at = EPOCH + timedelta(microseconds=int(e["time_us"]))
    return calc_price(usage, e["model"], provider_id=e["provider"], genai_request_timestamp=at).total_price


# Cache reads (OpenAI), cache writes and reads (Anthropic), context tiers (Gemini 2.5 Pro,
# Claude Sonnet 4.5), price history (o3, Gemini 3 Pro, Claude Opus 4.6), time-of-day prices
# (DeepSeek; v4-flash mixes start dates and times of day) and a per-request fee (Perplexity).
MODELS = [
    ("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("openai", "gpt-4o-2024-08-06"), ("openai", "o3"),
    ("anthropic", "claude-3-5-sonnet-latest"), ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-opus-4-6"), ("google", "gemini-2.5-pro"), ("google", "gemini-3-pro-preview"),
    ("deepseek", "deepseek-chat"), ("deepseek", "deepseek-v4-flash"), ("perplexity", "sonar"),
    ("openai", "o1-pro"),
]  # fmt: skip


@st.composite
def usage_events(draw: st.DrawFn) -> dict[str, object]:
    provider, model = draw(st.sampled_from(MODELS))
    input_tokens = draw(
        st.one_of(
            st.integers(0, 300_000),
            st.sampled_from([199_999, 200_000, 200_001]),  # the Gemini/Claude 200k tier boundary
            st.integers(0, MAX_TOKENS),
        )
    )
    cache_read = draw(st.one_of(st.just(0), st.integers(0, input_tokens)))
    cache_write = draw(st.one_of(st.just(0), st.integers(0, input_tokens - cache_read)))
    at = draw(st.datetimes(datetime(2024, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)))
    return event(
        provider, model, at, input_tokens, draw(st.integers(0, MAX_TOKENS) | st.integers(0, 20_000)),
        cache_read, cache_write, task=draw(st.sampled_from(["t1", "t2", "t3"])),
    )  # fmt: skip


class TestAgainstGenaiPrices:
    @settings(max_examples=150, deadline=None)
    @given(st.lists(usage_events(), min_size=1, max_size=25))
    def test_event_and_task_costs_equal_calc_price(self, events: list[dict[str, object]]) -> None:
        df = frame(*events)
        out = price_usage(df, SNAPSHOT)
        assert out.priced.all()
        assert (out.cost_rem >= 0).all() and (out.cost_rem < 10**6).all()

        expected_by_task: dict[str, Decimal] = defaultdict(Decimal)
        for e, nanos, rem in zip(events, out.cost_nanos, out.cost_rem, strict=True):
            assert exact_cost(nanos, rem) == reference(e)
            expected_by_task[e["task"]] += reference(e)

        sums = out[["cost_nanos", "cost_rem"]].groupby(df.task).sum()
        for task, row in sums.iterrows():
            expected = decimal_to_nanos(quantize(expected_by_task[task], 9))
            assert settle_nanos(int(row.cost_nanos), int(row.cost_rem)) == expected
        settled = settle_nanos(sums.cost_nanos, sums.cost_rem)  # the vectorized form agrees
        assert settled.tolist() == [decimal_to_nanos(quantize(expected_by_task[t], 9)) for t in sums.index]


class TestCacheTokens:
    def test_cache_reads_and_writes_are_billed_once(self) -> None:
        # claude-3-5-sonnet: input $3, cache read $0.30, cache write $3.75 per million.
        e = event("anthropic", "claude-3-5-sonnet-latest", input=1000, cache_read=600, cache_write=300)
        assert costs(SNAPSHOT, e) == [Decimal("0.001605")]  # 100 x 3 + 600 x 0.3 + 300 x 3.75
        assert reference(e) == Decimal("0.001605")

    def test_only_cache_reads_cost_only_the_cache_rate(self) -> None:
        e = event("openai", "gpt-4o-mini", input=1_000_000, cache_read=1_000_000)
        assert costs(SNAPSHOT, e) == [Decimal("0.075")]

    def test_a_cache_class_without_a_price_costs_as_input(self) -> None:
        # gpt-4o has no cache-write price: genai-prices bills those tokens as plain input.
        written, plain = event(input=1000, cache_write=1000), event(input=1000)
        assert costs(SNAPSHOT, written, plain) == [Decimal("0.0025")] * 2
        assert reference(written) == Decimal("0.0025")


class TestContextTiers:
    # gemini-2.5-pro: input $1.25 / output $10, above 200k input tokens $2.50 / $15, for all tokens.
    def test_the_tier_starts_strictly_above_its_threshold(self) -> None:
        at, above = (
            event("google", "gemini-2.5-pro", input=200_000, output=1000),
            event("google", "gemini-2.5-pro", input=200_001, output=1000),
        )
        assert costs(SNAPSHOT, at, above) == [Decimal("0.26"), Decimal("0.5150025")]
        assert [reference(at), reference(above)] == [Decimal("0.26"), Decimal("0.5150025")]

    def test_cache_tokens_count_toward_the_tier(self) -> None:
        e = event("google", "gemini-2.5-pro", input=200_001, cache_read=200_001)
        assert costs(SNAPSHOT, e) == [Decimal("0.05000025")] == [reference(e)]  # $0.25 tier rate


class TestPriceHistory:
    def test_o3_price_cut_applies_from_its_start_date_utc(self) -> None:
        before = event("openai", "o3", datetime(2025, 6, 9, 23, 59, 59, 999999, tzinfo=UTC), 1000, 1000)
        after = event("openai", "o3", datetime(2025, 6, 10, tzinfo=UTC), 1000, 1000)
        out = price_usage(frame(before, after), SNAPSHOT)
        assert [exact_cost(n, r) for n, r in zip(out.cost_nanos, out.cost_rem, strict=True)] == [
            Decimal("0.05"), Decimal("0.01"),  # $10/$40 then $2/$8 per million
        ]  # fmt: skip
        assert out.price_version.tolist() == [f"{VERSION}:base", f"{VERSION}:2025-06-10"]
        assert [reference(before), reference(after)] == [Decimal("0.05"), Decimal("0.01")]

    @pytest.mark.parametrize(
        ("hour", "minute", "second", "version"),
        [(0, 29, 59, "base"), (0, 30, 0, "daily-00:30-16:30Z"), (16, 29, 59, "daily-00:30-16:30Z"),
         (16, 30, 0, "base")],
    )  # fmt: skip
    def test_deepseek_time_of_day_prices(self, hour: int, minute: int, second: int, version: str) -> None:
        e = event(
            "deepseek", "deepseek-chat", datetime(2025, 3, 1, hour, minute, second, tzinfo=UTC), 1000, 1000
        )
        out = price_usage(frame(e), SNAPSHOT)
        assert out.price_version.tolist() == [f"{VERSION}:{version}"]
        assert exact_cost(out.cost_nanos[0], out.cost_rem[0]) == reference(e)


class TestPriceBook:
    def test_a_card_per_price_version(self) -> None:
        o3 = SNAPSHOT.lookup("openai", "o3")
        assert o3 is not None and o3 is SNAPSHOT.lookup("openai", "o3")  # resolved once
        before, after = (o3.card_at(datetime(2025, 6, d, tzinfo=UTC)) for d in (9, 10))
        assert before is not None and (before.input.base, before.output.base) == (Decimal(10), Decimal(40))
        assert after is not None and (after.input.base, after.price_version) == (
            Decimal(2),
            f"{VERSION}:2025-06-10",
        )

    def test_tiers_and_unpriced_cache_classes_on_the_card(self) -> None:
        gemini = SNAPSHOT.lookup("google", "gemini-2.5-pro")
        assert gemini is not None and gemini.cards[0] is not None
        card = gemini.cards[0]
        assert card.input.tiers == ((200_000, Decimal("2.5")),)
        assert card.cache_write == card.input  # no cache-write price: billed as input


class TestUnpriced:
    def test_an_unknown_model_is_unpriced_until_the_tenant_prices_it(self) -> None:
        e = event("acme-ai", "acme-large", input=1000, output=100)
        out = price_usage(frame(e), SNAPSHOT)
        assert not out.priced[0] and out.cost_nanos[0] == 0 and pd.isna(out.price_version[0])

        book = PriceBook([{"provider": "acme-ai", "model": "acme-large", "input": "3.00", "output": "15.00"}])
        out = price_usage(frame(e), book)
        assert out.priced[0] and out.price_version[0].startswith("tenant:")
        assert exact_cost(out.cost_nanos[0], out.cost_rem[0]) == Decimal("0.0045")

    @pytest.mark.parametrize(
        ("provider", "model"),
        [("openai", "no-such-model"), ("no-such-provider", "gpt-4o"), ("github-copilot", "gpt-4o")],
    )
    def test_unknown_models_and_models_without_token_prices_are_unpriced(
        self, provider: str, model: str
    ) -> None:
        # github-copilot's gpt-4o is in the snapshot with no prices: not silently free.
        assert costs(SNAPSHOT, event(provider, model, input=10, output=10)) == [None]

    def test_a_missing_provider_is_unpriced(self) -> None:
        df = frame(event(input=10), event(input=10))
        df.loc[1, "provider"] = None
        assert price_usage(df, SNAPSHOT).priced.tolist() == [True, False]

    def test_a_priced_event_next_to_an_unpriced_one(self) -> None:
        assert costs(SNAPSHOT, event(model="mystery", input=10), event(input=1000)) == [
            None,
            Decimal("0.0025"),
        ]


class TestTenantOverrides:
    GPT_4O = {"provider": "openai", "model": "gpt-4o", "input": "1.00", "output": "4.00"}

    def test_an_override_wins_over_the_snapshot_and_covers_its_aliases(self) -> None:
        book = PriceBook([self.GPT_4O])
        events = [event("openai", "gpt-4o", input=10**6), event("OpenAI", "GPT-4o", input=10**6),
                  event("openai", "gpt-4o-2024-08-06", input=10**6), event("openai", "gpt-4o-mini", input=10**6)]  # fmt: skip
        assert costs(book, *events) == [Decimal(1), Decimal(1), Decimal(1), Decimal("0.15")]

    def test_omitted_cache_rates_cost_as_input(self) -> None:
        book = PriceBook([self.GPT_4O])
        assert costs(book, event(input=10**6, cache_read=400_000, cache_write=600_000)) == [Decimal(1)]

    def test_the_version_names_the_rates(self) -> None:
        def version(**rates: str) -> str:
            book = PriceBook([{"provider": "x", "model": "y", **rates}])
            return str(price_usage(frame(event("x", "y")), book).price_version[0])

        assert version(input="3", output="15") == version(input="3.00", output="15.0")
        assert version(input="3", output="15") != version(input="3", output="16")
        assert version(input="3", output="15") == version(input="3", output="15", cache_read="3")

    @pytest.mark.parametrize(
        "override",
        [
            {"provider": "x", "model": "y", "input": "1", "output": "1", "cache": "1"},
            {"provider": "x", "model": "y", "input": "0.0000000001", "output": "1"},
            {"provider": "x", "model": "y", "input": "-1", "output": "1"},
            {"provider": "x", "model": "y", "input": 1.5, "output": "1"},
            {"provider": "x", "model": "y", "input": "1"},
            {"provider": "x", "input": "1", "output": "1"},
            {"provider": "x", "model": "y", "input": "1", "output": "2001"},
        ],
    )
    def test_invalid_overrides_are_refused_when_the_book_is_built(self, override: dict[str, object]) -> None:
        with pytest.raises(RateCardError):
            PriceBook([override])

    def test_duplicate_overrides_are_refused(self) -> None:
        with pytest.raises(RateCardError, match="duplicate"):
            PriceBook([self.GPT_4O, {**self.GPT_4O, "model": "GPT-4o"}])


class TestExactness:
    def test_sub_nano_costs_keep_their_remainder_until_settled(self) -> None:
        book = PriceBook([{"provider": "x", "model": "y", "input": "0.0375", "output": "0"}])
        out = price_usage(frame(event("x", "y", input=1), event("x", "y", input=3)), book)
        assert out[["cost_nanos", "cost_rem"]].values.tolist() == [[37, 500_000], [112, 500_000]]
        assert settle_nanos(37, 500_000) == 38 and settle_nanos(37, 499_999) == 37
        assert settle_nanos(int(out.cost_nanos.sum()), int(out.cost_rem.sum())) == 150

    @pytest.mark.parametrize(("provider", "model"), [("openai", "o1-pro"), ("anthropic", "claude-opus-4-6")])
    def test_a_trillion_tokens_of_each_class_do_not_overflow(self, provider: str, model: str) -> None:
        e = event(provider, model, input=MAX_TOKENS, output=MAX_TOKENS, cache_read=MAX_TOKENS // 2,
                  cache_write=MAX_TOKENS // 2 - 1)  # fmt: skip
        assert costs(SNAPSHOT, e) == [reference(e)]

    def test_a_huge_event_in_a_batch_leaves_the_others_costs_alone(self) -> None:
        # One event large enough that whole-batch products could overflow int64 sends the
        # batch down the split (q·10**6 + r) path: every event still costs what it costs alone.
        small = [event("openai", "o1-pro", input=n, output=n // 3, cache_read=n // 4) for n in (1, 999_999, 1_000_001, 123_456_789)]
        huge = event("openai", "o1-pro", input=MAX_TOKENS, output=MAX_TOKENS)
        alone = [costs(SNAPSHOT, e)[0] for e in small]
        assert costs(SNAPSHOT, *small, huge) == [*alone, reference(huge)]
        assert alone == [reference(e) for e in small]

    @given(st.integers(0, 2**62), st.integers(0, 2**40))
    def test_settle_rounds_once_half_up(self, nanos: int, rem: int) -> None:
        assert settle_nanos(nanos, rem) == decimal_to_nanos(quantize(exact_cost(nanos, rem), 9))

    def test_a_snapshot_rate_finer_than_a_nano_per_million_leaves_the_model_unpriced(self) -> None:
        # openrouter's gemini-2.5-flash cache write is 0.0833333333333333 per million in the snapshot:
        # not approximated, never priced at zero; unpriced until the tenant sets a price.
        e = event("openrouter", "google/gemini-2.5-flash", input=10)
        book = PriceBook()
        assert price_usage(frame(e), book)["priced"].tolist() == [False]
        assert any("decimals" in reason for reason in book.inexact.values())
        book = PriceBook([{"provider": "openrouter", "model": "google/gemini-2.5-flash", "input": "0.3",
                           "output": "2.5"}])  # fmt: skip
        assert costs(book, e) == [Decimal("0.000003")]


class TestInputs:
    def test_categorical_and_string_columns_price_alike(self) -> None:
        df = frame(event(input=1000), event("google", "gemini-2.5-pro", input=300_000), event(model="nope"))
        as_categories = df.astype({"provider": "category", "model": "category"})
        pd.testing.assert_frame_equal(price_usage(df, SNAPSHOT), price_usage(as_categories, SNAPSHOT), check_exact=True)

    def test_the_result_keeps_the_events_index_and_types(self) -> None:
        df = frame(event(input=1000), event(model="nope")).set_axis([10, 20])
        out = price_usage(df, SNAPSHOT)
        assert out.index.tolist() == [10, 20]
        assert out.dtypes.astype(str).to_dict() == {
            "priced": "bool", "price_version": "category", "cost_nanos": "int64", "cost_rem": "int64",
        }  # fmt: skip

    def test_no_events(self) -> None:
        out = price_usage(frame(), SNAPSHOT)
        assert out.empty and list(out.columns) == ["priced", "price_version", "cost_nanos", "cost_rem"]

    @pytest.mark.parametrize(
        "bad",
        [event(input=10, cache_read=6, cache_write=5), event(input=-1), event(output=MAX_TOKENS + 1)],
    )
    def test_impossible_counts_are_refused(self, bad: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            price_usage(frame(bad), SNAPSHOT)

    def test_float_counts_are_refused(self) -> None:
        with pytest.raises(TypeError):
            price_usage(frame(event(input=10)).astype({"input_tokens": float}), SNAPSHOT)
