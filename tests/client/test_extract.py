"""Provider usage → taskmeter token fields, on recorded responses and SDK-like objects."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from genai_prices import data_snapshot
from pydantic import BaseModel
from taskmeter_client.extract import TokenUsage, UsageFieldError, extract_usage, provider_from_model

PROVIDERS = Path(__file__).parents[1] / "fixtures" / "providers"


def load(name: str) -> dict[str, Any]:
    return json.loads((PROVIDERS / f"{name}.json").read_text())


def usage(provider: str, model: str, i: int, o: int, cr: int = 0, cw: int = 0, r: int = 0) -> TokenUsage:
    return TokenUsage(
        provider,
        model,
        input_tokens=i,
        output_tokens=o,
        cache_read_tokens=cr,
        cache_write_tokens=cw,
        reasoning_tokens=r,
    )


RECORDED = {
    "openai_chat_basic": usage("openai", "gpt-4o-mini-2024-07-18", 412, 23),
    "openai_chat_cached": usage("openai", "gpt-4o-2024-08-06", 2006, 300, cr=1920),
    "openai_chat_reasoning": usage("openai", "o4-mini-2025-04-16", 1117, 1512, cr=1024, r=1216),
    "openai_chat_cache_write": usage("openai", "gpt-5.6", 2600, 150, cr=2000, cw=400, r=64),
    "openai_chat_legacy": usage("openai", "gpt-3.5-turbo-0125", 57, 2),
    "openai_chat_sdk_dump": usage("openai", "o4-mini-2025-04-16", 1117, 1512, cr=1024, r=1216),
    "openai_responses_reasoning": usage("openai", "o4-mini-2025-04-16", 328, 1186, r=1024),
    "openai_responses_cached": usage("openai", "gpt-5.6", 9216, 431, cr=8192, cw=768),
    "openai_responses_sdk_dump": usage("openai", "gpt-5.6", 9216, 431, cr=8192, cw=768),
    # Anthropic: input_tokens excludes the cache, so input = input + cache read + cache write.
    "anthropic_message_basic": usage("anthropic", "claude-sonnet-4-5-20250929", 1342, 187),
    "anthropic_message_cache_write": usage(
        "anthropic", "claude-sonnet-4-5-20250929", 18 + 2150, 301, cw=2150
    ),
    "anthropic_message_cache_read_thinking": usage(
        "anthropic", "claude-opus-4-1-20250805", 12 + 2150 + 248, 1630, cr=2150, cw=248, r=1218
    ),
    "anthropic_message_sdk_dump": usage(
        "anthropic", "claude-opus-4-1-20250805", 12 + 2150 + 248, 1630, cr=2150, cw=248, r=1218
    ),
    "anthropic_message_legacy": usage("anthropic", "claude-3-haiku-20240307", 96, 7),
    # Gemini: thoughts are outside the candidates, tool-use prompt tokens outside the prompt.
    "gemini_rest_basic": usage("google", "gemini-2.0-flash", 538, 14),
    "gemini_rest_thinking_cached": usage("google", "gemini-2.5-pro", 10233, 512 + 1350, cr=8192, r=1350),
    "gemini_sdk_dump_tool_use": usage("google", "gemini-2.5-flash", 1204 + 310, 96 + 500, r=500),
}


class TestRecordedResponses:
    @pytest.mark.parametrize("name", sorted(RECORDED))
    def test_exact_token_fields(self, name: str) -> None:
        assert extract_usage(load(name)) == RECORDED[name]

    def test_every_fixture_is_covered(self) -> None:
        assert sorted(path.stem for path in PROVIDERS.glob("*.json")) == sorted(RECORDED)

    @pytest.mark.parametrize("name", sorted(RECORDED))
    def test_bare_usage_object_gives_the_same_counts(self, name: str) -> None:
        response = load(name)
        bare = response.get("usage") or response.get("usage_metadata") or response["usageMetadata"]
        expected = RECORDED[name]
        assert extract_usage(bare, provider=expected.provider, model=expected.model) == expected

    def test_gemini_total_is_prompt_candidates_tool_use_and_thoughts(self) -> None:
        metadata = load("gemini_sdk_dump_tool_use")["usage_metadata"]
        result = extract_usage(metadata, model="gemini-2.5-flash")
        assert result.input_tokens + result.output_tokens == metadata["total_token_count"]


GENAI_PRICES_FLAVOR = {
    "openai_chat": ("openai", "chat"),
    "openai_responses": ("openai", "responses"),
    "anthropic_message": ("anthropic", "default"),
    "gemini_rest": ("google", "default"),
}


class TestAgreesWithGenaiPrices:
    """genai-prices' extractors use the same conventions; it reads Gemini's REST camelCase only."""

    @pytest.mark.parametrize("name", sorted(n for n in RECORDED if not n.startswith("gemini_sdk")))
    def test_same_counts(self, name: str) -> None:
        provider_id, flavor = next(v for prefix, v in GENAI_PRICES_FLAVOR.items() if name.startswith(prefix))
        provider = data_snapshot.find_provider_by_id(data_snapshot.get_snapshot().providers, provider_id)
        assert provider is not None
        model, theirs = provider.extract_usage(load(name), api_flavor=flavor)
        ours = extract_usage(load(name))
        assert model == ours.model
        assert (
            ours.input_tokens,
            ours.output_tokens,
            ours.cache_read_tokens,
            ours.cache_write_tokens,
            ours.reasoning_tokens,
        ) == (
            theirs.input_tokens,
            theirs.output_tokens,
            theirs.cache_read_tokens,
            theirs.cache_write_tokens,
            theirs.output_reasoning_tokens,
        )


class PromptDetails(BaseModel):
    cached_tokens: int | None = None
    audio_tokens: int | None = None


class CompletionDetails(BaseModel):
    reasoning_tokens: int | None = None


class CompletionUsage(BaseModel):
    """Like openai.types.CompletionUsage: optional details, read by attribute."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails | None = None
    completion_tokens_details: CompletionDetails | None = None


class ChatCompletion(BaseModel):
    id: str
    object: str
    model: str
    usage: CompletionUsage | None = None


class AnthropicUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class TestSdkObjects:
    def test_pydantic_response_read_by_attribute(self) -> None:
        completion = ChatCompletion.model_validate(load("openai_chat_reasoning"))
        assert extract_usage(completion) == RECORDED["openai_chat_reasoning"]

    def test_none_details_count_as_zero(self) -> None:
        completion = ChatCompletion(
            id="chatcmpl-1",
            object="chat.completion",
            model="gpt-4o",
            usage=CompletionUsage(
                prompt_tokens=10,
                completion_tokens=5,
                total_tokens=15,
                prompt_tokens_details=PromptDetails(cached_tokens=None),
            ),
        )
        assert extract_usage(completion) == usage("openai", "gpt-4o", 10, 5)

    def test_anthropic_sdk_usage_with_null_cache_fields(self) -> None:
        bare = AnthropicUsage(input_tokens=40, output_tokens=9)
        assert extract_usage(bare, model="claude-3-5-haiku-20241022") == usage(
            "anthropic", "claude-3-5-haiku-20241022", 40, 9
        )

    def test_plain_attribute_objects(self) -> None:
        metadata = SimpleNamespace(
            prompt_token_count=100,
            candidates_token_count=20,
            thoughts_token_count=7,
            cached_content_token_count=None,
        )
        response = SimpleNamespace(usage_metadata=metadata, model_version="gemini-2.5-flash")
        assert extract_usage(response) == usage("google", "gemini-2.5-flash", 100, 27, r=7)


class TestShapeAndProvider:
    def test_input_output_alone_is_ambiguous(self) -> None:
        with pytest.raises(UsageFieldError) as info:
            extract_usage({"input_tokens": 10, "output_tokens": 2}, model="acme-large")
        assert info.value.field == "usage"
        assert "pass provider=" in info.value.message

    def test_explicit_anthropic_adds_cache_back(self) -> None:
        bare = {"input_tokens": 10, "output_tokens": 2}
        assert extract_usage(bare, provider="anthropic", model="acme") == usage("anthropic", "acme", 10, 2)

    def test_claude_model_picks_anthropic(self) -> None:
        assert extract_usage(
            {"input_tokens": 10, "output_tokens": 2}, model="claude-sonnet-4-5"
        ).provider == ("anthropic")

    def test_gpt_model_picks_openai_responses(self) -> None:
        assert extract_usage({"input_tokens": 10, "output_tokens": 2}, model="gpt-5").provider == "openai"

    def test_message_type_picks_anthropic(self) -> None:
        response = {
            "type": "message",
            "model": "acme-large",
            "usage": {"input_tokens": 10, "output_tokens": 2},
        }
        assert extract_usage(response).provider == "anthropic"

    def test_response_object_picks_openai(self) -> None:
        response = {
            "object": "response",
            "model": "acme-large",
            "usage": {"input_tokens": 10, "output_tokens": 2},
        }
        assert extract_usage(response).provider == "openai"

    def test_explicit_provider_labels_an_openai_compatible_gateway(self) -> None:
        response = load("openai_chat_basic") | {"model": "llama-3.3-70b-versatile"}
        assert extract_usage(response, provider="groq") == usage("groq", "llama-3.3-70b-versatile", 412, 23)

    def test_unknown_model_on_openai_shape_is_labelled_openai(self) -> None:
        response = load("openai_chat_basic") | {"model": "acme-large-2026"}
        assert extract_usage(response).provider == "openai"

    def test_model_family_labels_an_openai_compatible_endpoint(self) -> None:
        response = load("openai_chat_basic") | {"model": "gemini-2.5-flash"}
        assert extract_usage(response).provider == "google"

    def test_explicit_model_overrides_the_response(self) -> None:
        assert extract_usage(load("openai_chat_basic"), model="my-deployment").model == "my-deployment"

    @pytest.mark.parametrize(
        ("model", "provider"),
        [
            ("claude-sonnet-4-5-20250929", "anthropic"),
            ("anthropic/claude-3-haiku", "anthropic"),
            ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", "anthropic"),
            ("gemini-2.5-pro", "google"),
            ("models/gemini-2.0-flash", "google"),
            ("gpt-4o-mini", "openai"),
            ("o4-mini-2025-04-16", "openai"),
            ("chatgpt-4o-latest", "openai"),
            ("llama-3.3-70b", None),
            ("", None),
            (None, None),
        ],
    )
    def test_provider_from_model(self, model: str | None, provider: str | None) -> None:
        assert provider_from_model(model) == provider


def broken(name: str, path: str, value: object) -> dict[str, Any]:
    response = copy.deepcopy(load(name))
    *parents, last = path.split(".")
    target = response
    for key in parents:
        target = target[key]
    target[last] = value
    return response


class TestMissingAndInvalid:
    def test_missing_totals_are_zero(self) -> None:
        response = {"model": "gpt-4o", "usage": {"prompt_tokens": 12}}
        assert extract_usage(response) == usage("openai", "gpt-4o", 12, 0)

    def test_null_counts_are_zero(self) -> None:
        response = broken("anthropic_message_basic", "usage.cache_read_input_tokens", None)
        assert extract_usage(response) == RECORDED["anthropic_message_basic"]

    @pytest.mark.parametrize(
        ("name", "path", "value", "field", "message"),
        [
            (
                "openai_chat_cached",
                "usage.prompt_tokens_details.cached_tokens",
                -1,
                "usage.prompt_tokens_details.cached_tokens",
                "must be >= 0, got -1",
            ),
            (
                "openai_chat_basic",
                "usage.prompt_tokens",
                412.0,
                "usage.prompt_tokens",
                "expected a non-negative integer, got float 412.0",
            ),
            (
                "openai_responses_reasoning",
                "usage.output_tokens",
                "1186",
                "usage.output_tokens",
                "expected a non-negative integer, got str '1186'",
            ),
            (
                "anthropic_message_basic",
                "usage.cache_creation_input_tokens",
                True,
                "usage.cache_creation_input_tokens",
                "expected a non-negative integer, got bool True",
            ),
            (
                "gemini_rest_basic",
                "usageMetadata.candidatesTokenCount",
                -14,
                "usage_metadata.candidates_token_count",
                "must be >= 0, got -14",
            ),
        ],
    )
    def test_bad_count_names_the_field(
        self, name: str, path: str, value: object, field: str, message: str
    ) -> None:
        with pytest.raises(UsageFieldError) as info:
            extract_usage(broken(name, path, value))
        assert (info.value.field, info.value.message) == (field, message)
        assert str(info.value) == f"{field}: {message}"

    def test_cache_beyond_input_is_refused(self) -> None:
        with pytest.raises(UsageFieldError) as info:
            extract_usage(broken("openai_chat_cached", "usage.prompt_tokens_details.cached_tokens", 3000))
        assert info.value.field == "cache_read_tokens"
        assert info.value.message == (
            "cache reads (3000) and writes (0) exceed input_tokens (2006), which includes them"
        )

    def test_reasoning_beyond_output_is_refused(self) -> None:
        with pytest.raises(UsageFieldError) as info:
            extract_usage(
                broken("openai_responses_reasoning", "usage.output_tokens_details.reasoning_tokens", 2000)
            )
        assert info.value.field == "reasoning_tokens"

    def test_response_without_usage(self) -> None:
        with pytest.raises(UsageFieldError) as info:
            extract_usage(
                {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o", "usage": None}
            )
        assert (info.value.field, info.value.message) == ("usage", "the response carries no usage (None)")

    def test_none(self) -> None:
        with pytest.raises(UsageFieldError, match=r"^usage: expected a provider response"):
            extract_usage(None)

    def test_unknown_shape(self) -> None:
        with pytest.raises(UsageFieldError) as info:
            extract_usage({"model": "acme", "usage": {"tokens": 12}})
        assert (info.value.field, info.value.message) == (
            "usage",
            "no token counts of a known provider shape found",
        )

    def test_bare_usage_needs_a_model(self) -> None:
        with pytest.raises(UsageFieldError) as info:
            extract_usage({"prompt_tokens": 1, "completion_tokens": 1})
        assert (info.value.field, info.value.message) == ("model", "not found in the response; pass model=")


class TestTokenUsage:
    def test_event_fields(self) -> None:
        assert RECORDED["anthropic_message_cache_read_thinking"].event_fields() == {
            "provider": "anthropic",
            "model": "claude-opus-4-1-20250805",
            "input_tokens": 2410,
            "output_tokens": 1630,
            "cache_read_tokens": 2150,
            "cache_write_tokens": 248,
            "reasoning_tokens": 1218,
        }

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"provider": ""}, "provider"),
            ({"model": None}, "model"),
            ({"input_tokens": -1}, "input_tokens"),
            ({"output_tokens": 1.5}, "output_tokens"),
            ({"cache_write_tokens": 11}, "cache_read_tokens"),
            ({"reasoning_tokens": 6}, "reasoning_tokens"),
        ],
    )
    def test_invalid(self, kwargs: dict[str, Any], field: str) -> None:
        fields: dict[str, Any] = {
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 10,
            "output_tokens": 5,
        }
        with pytest.raises(UsageFieldError) as info:
            TokenUsage(**(fields | kwargs))
        assert info.value.field == field

    def test_field_error_for_reports(self) -> None:
        error = UsageFieldError("input_tokens", "must be >= 0, got -1")
        assert error.as_field_error("data.") == {
            "field": "data.input_tokens",
            "message": "must be >= 0, got -1",
        }


class TestOneHourCacheWrites:
    MESSAGE = {
        "type": "message", "model": "claude-sonnet-4-20250514",
        "usage": {"input_tokens": 20_000, "cache_read_input_tokens": 50_000, "cache_creation_input_tokens": 9_000,
                  "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 9_000}, "output_tokens": 2_000},
    }  # fmt: skip

    def test_anthropic_1h_writes_are_a_subset_of_the_writes(self) -> None:
        found = extract_usage(self.MESSAGE)
        assert (found.input_tokens, found.cache_write_tokens, found.cache_write_1h_tokens) == (
            79_000,
            9_000,
            9_000,
        )
        assert found.event_fields()["cache_write_1h_tokens"] == 9_000

    def test_no_1h_writes_leave_the_event_as_before(self) -> None:
        five_minutes = copy.deepcopy(self.MESSAGE)
        five_minutes["usage"]["cache_creation"] = {
            "ephemeral_5m_input_tokens": 9_000,
            "ephemeral_1h_input_tokens": 0,
        }  # type: ignore[index]
        assert "cache_write_1h_tokens" not in extract_usage(five_minutes).event_fields()

    def test_more_1h_writes_than_writes_is_an_error(self) -> None:
        with pytest.raises(UsageFieldError) as caught:
            TokenUsage(
                "anthropic",
                "claude-sonnet-4",
                input_tokens=10,
                output_tokens=0,
                cache_write_tokens=1,
                cache_write_1h_tokens=2,
            )
        assert caught.value.field == "cache_write_1h_tokens"
