"""OTLP JSON traces (GenAI spans) → taskmeter events."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from metering.adapters.otlp import OtlpResult, SpanMapping, decode_protobuf, spans_to_events

OTLP = Path(__file__).parents[1] / "fixtures" / "otlp"
TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
END = "1791192845360000000"  # 2026-10-05T09:34:05.360000Z
TIME = "2026-10-05T09:34:05.360000Z"


def load(name: str) -> dict[str, Any]:
    return json.loads((OTLP / f"{name}.json").read_text())


def value(v: Any) -> dict[str, Any]:
    """A Python value as an OTLP JSON AnyValue, the way the SDK encodes it (ints as strings)."""
    if isinstance(v, dict):
        return v
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": v}


def attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": value(v)} for k, v in values.items()]


def span(attrs: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    item = {
        "traceId": TRACE,
        "spanId": SPAN,
        "name": "chat gpt-4o",
        "kind": 3,
        "startTimeUnixNano": "1791192843270000000",
        "endTimeUnixNano": END,
        "attributes": attributes(attrs or {}),
        "status": {},
    } | fields
    return {k: v for k, v in item.items() if v is not None}


def request(*spans: dict[str, Any], resource: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": attributes(resource or {})},
                "scopeSpans": [{"scope": {"name": "test"}, "spans": list(spans)}],
            }
        ]
    }


CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 100,
    "gen_ai.usage.output_tokens": 20,
    "taskmeter.customer": "acme",
    "taskmeter.task": "t-1",
}


def convert(
    *spans: dict[str, Any], resource: dict[str, Any] | None = None, mapping: SpanMapping | None = None
) -> OtlpResult:
    return spans_to_events(request(*spans, resource=resource), mapping=mapping)


def one_event(result: OtlpResult) -> dict[str, Any]:
    assert result.rejected == []
    assert len(result.events) == 1
    return result.events[0]


def tokens(event: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (
        event["input_tokens"],
        event["output_tokens"],
        event["cache_read_tokens"],
        event["cache_write_tokens"],
        event["reasoning_tokens"],
    )


def errors(result: OtlpResult) -> list[dict[str, str]]:
    assert result.events == []
    assert len(result.rejected) == 1
    return [dict(e) for e in result.rejected[0]["errors"]]


def assert_ingestible(events: list[dict[str, Any]]) -> None:
    """Ingestion's own shape validation (written elsewhere, concurrently) accepts every event."""
    validate_items = getattr(pytest.importorskip("metering.events.ingest"), "validate_items", None)
    if validate_items is None:
        pytest.skip("metering.events.ingest.validate_items is not available")
    batch = validate_items(events)
    assert batch.rejected == []
    assert len(batch.events) == len(events)


def meta(trace: str, span_id: str, name: str, service: str, **attrs: str) -> dict[str, str]:
    return {
        "source": "otlp",
        "trace_id": trace,
        "span_id": span_id,
        "span_name": name,
        "service.name": service,
        **{k.replace("__", "."): v for k, v in attrs.items()},
    }


class TestRecordedTraces:
    def test_openai_agent_run(self) -> None:
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        result = spans_to_events(load("openai_agent"))
        chat = {"customer": "acme", "task": "ticket-4411", "task_type": "support_ticket"}
        assert result.events == [
            {
                "id": f"otel:{trace}:53995c3f42cd8ad8",
                "type": "usage",
                "time": "2026-10-05T09:34:05.360000Z",
                **chat,
                "metadata": meta(
                    trace,
                    "53995c3f42cd8ad8",
                    "chat gpt-4o",
                    "support-agent",
                    gen_ai__operation__name="chat",
                    gen_ai__provider__name="openai",
                ),
                "provider": "openai",
                "model": "gpt-4o-2024-08-06",
                "input_tokens": 2006,
                "output_tokens": 300,
                "cache_read_tokens": 1920,
                "cache_write_tokens": 0,
                "reasoning_tokens": 0,
            },
            {
                "id": f"otel:{trace}:2e7b10a3c4d5e6f7",
                "type": "usage",
                "time": "2026-10-05T09:34:13.120000Z",
                **chat,
                "metadata": meta(
                    trace,
                    "2e7b10a3c4d5e6f7",
                    "chat o4-mini",
                    "support-agent",
                    gen_ai__operation__name="chat",
                    gen_ai__provider__name="openai",
                ),
                "provider": "openai",
                "model": "o4-mini-2025-04-16",
                "input_tokens": 1117,
                "output_tokens": 1512,
                "cache_read_tokens": 1024,
                "cache_write_tokens": 0,
                "reasoning_tokens": 1216,
            },
            # The agent span's summed usage is not billed again; its outcome is.
            {
                "id": f"otel:{trace}:00f067aa0ba902b7:outcome",
                "type": "task.completed",
                "time": "2026-10-05T09:34:13.252000Z",
                **chat,
                "agent": "support-triage",  # gen_ai.agent.name, the agent span's own
                "metadata": meta(
                    trace,
                    "00f067aa0ba902b7",
                    "invoke_agent support-triage",
                    "support-agent",
                    gen_ai__agent__name="support-triage",
                    gen_ai__operation__name="invoke_agent",
                    gen_ai__provider__name="openai",
                ),
            },
        ]
        assert result.skipped == 2  # the tool span and the HTTP span
        assert result.rejected == []

    def test_anthropic_instrumentations(self) -> None:
        result = spans_to_events(load("anthropic_instrumentations"))
        legacy, current = result.events
        # Older instrumentation: prompt_tokens is Anthropic's input_tokens, without the cache.
        assert legacy == {
            "id": "otel:0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331",
            "type": "usage",
            "time": "2026-10-05T09:34:44.750000Z",
            "customer": "globex",
            "task": "0af7651916cd43dd8448eb211c80319c",
            "metadata": meta(
                "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "anthropic.chat", "review-bot"
            ),
            "provider": "anthropic",
            "model": "claude-opus-4-1-20250805",
            "input_tokens": 12 + 2150 + 248,
            "output_tokens": 1630,
            "cache_read_tokens": 2150,
            "cache_write_tokens": 248,
            "reasoning_tokens": 0,
        }
        # Current semconv: input_tokens already includes the cache.
        assert (current["task"], current["task_type"], current["time"]) == (
            "pr-812",
            "code_review",
            "2026-10-05T09:34:50.500000Z",
        )
        assert tokens(current) == (2168, 301, 0, 2150, 0)
        assert result.skipped == 0
        assert result.rejected == [
            {
                "path": "resourceSpans[0].scopeSpans[1].spans[1]",
                "trace_id": "2c19873b38ef65ffa66a0d433ea2531e",
                "span_id": "d9cf8d938b425553",
                "errors": [
                    {
                        "field": "taskmeter.customer",
                        "message": "missing: the customer billed for this span (set it on the span or resource)",
                    }
                ],
            }
        ]

    def test_google_two_resources(self) -> None:
        result = spans_to_events(load("google_two_resources"))
        assert [
            (
                e["id"],
                e["type"],
                e["customer"],
                e["task"],
                e.get("task_type"),
                e.get("provider"),
                e.get("model"),
            )
            for e in result.events
        ] == [
            (
                "otel:5b8efff798038103d269b633813fc60c:1111222233334444",
                "usage",
                "initech",
                "report-77",
                "research_report",
                "google",
                "gemini-2.5-pro",
            ),
            (
                "otel:6c9f00a8a9149214e37ac744924ad71d:5555666677778888",
                "usage",
                "initech-eu",
                "report-78",
                "research_report",
                "google",
                "gemini-2.5-flash",
            ),
            (
                "otel:7da011b9ba25a325f48bd855a35be82e:ddddeeeeffff0001",
                "usage",
                "umbrella",
                "batch-9",
                None,
                "google",
                "claude-sonnet-4-5@20250929",
            ),
            (
                "otel:7da011b9ba25a325f48bd855a35be82e:9999aaaabbbbcccc:outcome",
                "task.failed",
                "umbrella",
                "batch-9",
                None,
                None,
                None,
            ),
        ]
        pro, flash, vertex, outcome = result.events
        assert tokens(pro) == (10233, 512 + 1350, 8192, 0, 1350)  # thoughts reported outside the output
        assert tokens(flash) == (1514, 596, 0, 0, 500)  # thoughts already inside the output
        assert tokens(vertex) == (500, 80, 100, 0, 0)
        assert outcome["time"] == "2026-10-05T09:34:57.050000Z"
        assert "input_tokens" not in outcome
        assert (result.skipped, result.rejected) == (0, [])

    @pytest.mark.parametrize("name", ["openai_agent", "anthropic_instrumentations", "google_two_resources"])
    def test_replay_gives_the_same_events(self, name: str) -> None:
        first, second = spans_to_events(load(name)), spans_to_events(load(name))
        assert first.events == second.events
        assert len({e["id"] for e in first.events}) == len(first.events)

    @pytest.mark.parametrize("name", ["openai_agent", "anthropic_instrumentations", "google_two_resources"])
    def test_ingestion_accepts_the_events(self, name: str) -> None:
        assert_ingestible(spans_to_events(load(name)).events)


class TestInclusivity:
    def test_anthropic_cache_within_input_is_taken_as_inclusive(self) -> None:
        attrs = CHAT | {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "gen_ai.usage.input_tokens": 2168,
            "gen_ai.usage.cache_creation.input_tokens": 2150,
        }
        assert tokens(one_event(convert(span(attrs)))) == (2168, 20, 0, 2150, 0)

    def test_configured_exclusive_provider_always_adds_the_cache(self) -> None:
        attrs = CHAT | {
            "gen_ai.system": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "gen_ai.usage.input_tokens": 18,
            "gen_ai.usage.cache_read_input_tokens": 10,
        }
        del attrs["gen_ai.provider.name"]
        mapping = SpanMapping(exclusive_input_providers=frozenset({"anthropic"}))
        assert tokens(one_event(convert(span(attrs), mapping=mapping))) == (28, 20, 10, 0, 0)

    def test_claude_on_bedrock_with_cache_beyond_input_adds_it(self) -> None:
        attrs = CHAT | {
            "gen_ai.provider.name": "aws.bedrock",
            "gen_ai.request.model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "gen_ai.usage.input_tokens": 5,
            "gen_ai.usage.cache_read.input_tokens": 900,
        }
        event = one_event(convert(span(attrs)))
        assert (event["provider"], tokens(event)) == ("aws", (905, 20, 900, 0, 0))

    def test_cache_beyond_input_elsewhere_is_rejected(self) -> None:
        attrs = CHAT | {"gen_ai.usage.cache_read.input_tokens": 101}
        assert errors(convert(span(attrs))) == [
            {
                "field": "gen_ai.usage.cache_read.input_tokens",
                "message": "cache reads (101) and writes (0) exceed input_tokens (100), which includes them",
            }
        ]

    def test_google_reasoning_beyond_output_is_added(self) -> None:
        attrs = CHAT | {
            "gen_ai.provider.name": "gcp.vertex_ai",
            "gen_ai.request.model": "gemini-2.5-flash",
            "gen_ai.usage.reasoning.output_tokens": 30,
        }
        assert tokens(one_event(convert(span(attrs)))) == (100, 50, 0, 0, 30)

    def test_reasoning_beyond_output_elsewhere_is_rejected(self) -> None:
        attrs = CHAT | {"gen_ai.usage.reasoning.output_tokens": 21}
        assert errors(convert(span(attrs))) == [
            {
                "field": "gen_ai.usage.reasoning.output_tokens",
                "message": "21 exceeds output_tokens (20), which includes it",
            }
        ]

    def test_configured_exclusive_output_provider(self) -> None:
        attrs = CHAT | {
            "gen_ai.provider.name": "gcp.gemini",
            "gen_ai.request.model": "gemini-2.5-flash",
            "gen_ai.usage.reasoning.output_tokens": 5,
        }
        mapping = SpanMapping(exclusive_output_providers=frozenset({"gcp.gemini"}))
        assert tokens(one_event(convert(span(attrs), mapping=mapping))) == (100, 25, 0, 0, 5)

    @pytest.mark.parametrize(
        ("attrs", "expected"),
        [
            ({"gen_ai.usage.prompt_tokens": 100, "gen_ai.usage.completion_tokens": 20}, (100, 20, 0, 0, 0)),
            (
                {
                    "gen_ai.usage.input_tokens.cached": 40,
                    "gen_ai.usage.input_tokens.cache_write": 10,
                    "gen_ai.usage.output_tokens.reasoning": 5,
                },
                (100, 20, 40, 10, 5),
            ),
            (
                {
                    "gen_ai.usage.cache_read_input_tokens": 40,
                    "gen_ai.usage.cache_creation_input_tokens": 10,
                    "gen_ai.usage.reasoning_tokens": 5,
                },
                (100, 20, 40, 10, 5),
            ),
            (
                {"gen_ai.usage.cache_read.input_tokens": 40, "gen_ai.usage.cache_read_input_tokens": 99},
                (100, 20, 40, 0, 0),
            ),
        ],
    )
    def test_attribute_spellings(self, attrs: dict[str, Any], expected: tuple[int, ...]) -> None:
        base = (
            {k: v for k, v in CHAT.items() if not k.startswith("gen_ai.usage.")}
            if ("gen_ai.usage.prompt_tokens" in attrs)
            else CHAT
        )
        assert tokens(one_event(convert(span(base | attrs)))) == expected


class TestWhoAndWhat:
    def test_span_attributes_win_over_the_resource(self) -> None:
        event = one_event(
            convert(
                span(CHAT | {"taskmeter.task_type": "code_review"}),
                resource={
                    "taskmeter.customer": "globex",
                    "taskmeter.task": "r-1",
                    "taskmeter.task_type": "support_ticket",
                },
            )
        )
        assert (event["customer"], event["task"], event["task_type"]) == ("acme", "t-1", "code_review")

    def test_resource_fills_what_the_span_lacks(self) -> None:
        attrs = {k: v for k, v in CHAT.items() if not k.startswith("taskmeter.")}
        event = one_event(
            convert(
                span(attrs),
                resource={"taskmeter.customer": "globex", "taskmeter.task_type": "support_ticket"},
            )
        )
        assert (event["customer"], event["task"], event["task_type"]) == ("globex", TRACE, "support_ticket")

    def test_no_task_type_leaves_it_out(self) -> None:
        assert "task_type" not in one_event(convert(span(CHAT)))

    def test_custom_attribute_names(self) -> None:
        attrs = {k: v for k, v in CHAT.items() if not k.startswith("taskmeter.")} | {
            "enduser.id": "initech",
            "app.job.id": "job-7",
            "app.job.kind": "research_report",
        }
        mapping = SpanMapping(customer_key="enduser.id", task_key="app.job.id", task_type_key="app.job.kind")
        event = one_event(convert(span(attrs), mapping=mapping))
        assert (event["customer"], event["task"], event["task_type"]) == (
            "initech",
            "job-7",
            "research_report",
        )

    def test_numeric_customer_is_its_digits(self) -> None:
        assert one_event(convert(span(CHAT | {"taskmeter.customer": 4411})))["customer"] == "4411"

    def test_response_model_wins_and_provider_is_canonical(self) -> None:
        attrs = CHAT | {
            "gen_ai.provider.name": "azure.ai.openai",
            "gen_ai.response.model": "gpt-4o-2024-11-20",
        }
        event = one_event(convert(span(attrs)))
        assert (event["provider"], event["model"], event["metadata"]["gen_ai.provider.name"]) == (
            "azure",
            "gpt-4o-2024-11-20",
            "azure.ai.openai",
        )

    @pytest.mark.parametrize(
        ("name", "provider"),
        [
            ("gcp.gemini", "google"),
            ("aws.bedrock", "aws"),
            ("x_ai", "x-ai"),
            ("mistral_ai", "mistral"),
            ("OpenAI", "openai"),
            ("Anthropic", "anthropic"),
            ("deepseek", "deepseek"),
            ("acme-ai", "acme-ai"),
        ],
    )
    def test_provider_names(self, name: str, provider: str) -> None:
        attrs = CHAT | {"gen_ai.provider.name": name}
        assert one_event(convert(span(attrs)))["provider"] == provider

    def test_legacy_system_attribute(self) -> None:
        attrs = {k: v for k, v in CHAT.items() if k != "gen_ai.provider.name"} | {"gen_ai.system": "openai"}
        assert one_event(convert(span(attrs)))["provider"] == "openai"

    def test_provider_from_the_model_when_absent(self) -> None:
        attrs = {k: v for k, v in CHAT.items() if k != "gen_ai.provider.name"} | {
            "gen_ai.request.model": "claude-3-5-haiku-20241022"
        }
        assert one_event(convert(span(attrs)))["provider"] == "anthropic"

    def test_numeric_customer_as_json_number(self) -> None:
        assert (
            one_event(convert(span(CHAT | {"taskmeter.customer": {"intValue": 4411}})))["customer"] == "4411"
        )

    def test_unnamed_span(self) -> None:
        assert "span_name" not in one_event(convert(span(CHAT, name=None)))["metadata"]

    def test_long_span_name_is_truncated_in_metadata(self) -> None:
        event = one_event(convert(span(CHAT, name="x" * 5000)))
        assert event["metadata"]["span_name"] == "x" * 1024


class TestSkippedAndAggregates:
    def test_span_without_usage_is_skipped(self) -> None:
        result = convert(span({"http.request.method": "GET", "taskmeter.customer": "acme"}))
        assert (result.events, result.skipped, result.rejected) == ([], 1, [])

    def test_agent_span_usage_is_not_billed(self) -> None:
        result = convert(span(CHAT | {"gen_ai.operation.name": "invoke_agent"}))
        assert (result.events, result.skipped, result.rejected) == ([], 1, [])

    def test_aggregates_are_configurable(self) -> None:
        attrs = CHAT | {"gen_ai.operation.name": "invoke_agent"}
        result = convert(span(attrs), mapping=SpanMapping(aggregate_operations=frozenset()))
        assert tokens(one_event(result)) == (100, 20, 0, 0, 0)

    def test_empty_request(self) -> None:
        assert spans_to_events({}) == OtlpResult(events=[], skipped=0, rejected=[])


class TestOutcomes:
    @pytest.mark.parametrize("outcome", ["completed", "failed", "cancelled"])
    def test_outcome_event(self, outcome: str) -> None:
        attrs = {"taskmeter.customer": "acme", "taskmeter.task": "t-1", "taskmeter.outcome": outcome}
        assert one_event(convert(span(attrs, name="run"))) == {
            "id": f"otel:{TRACE}:{SPAN}:outcome",
            "type": f"task.{outcome}",
            "time": TIME,
            "customer": "acme",
            "task": "t-1",
            "metadata": {"source": "otlp", "trace_id": TRACE, "span_id": SPAN, "span_name": "run"},
        }

    def test_usage_and_outcome_on_one_span(self) -> None:
        result = convert(span(CHAT | {"taskmeter.outcome": "failed"}))
        assert [(e["id"], e["type"]) for e in result.events] == [
            (f"otel:{TRACE}:{SPAN}", "usage"),
            (f"otel:{TRACE}:{SPAN}:outcome", "task.failed"),
        ]

    def test_unknown_outcome_rejects_the_whole_span(self) -> None:
        assert errors(convert(span(CHAT | {"taskmeter.outcome": "done"}))) == [
            {
                "field": "taskmeter.outcome",
                "message": "must be one of completed, failed, cancelled, got 'done'",
            }
        ]

    def test_outcome_needs_a_customer(self) -> None:
        assert errors(convert(span({"taskmeter.outcome": "completed"})))[0]["field"] == "taskmeter.customer"


class TestRejections:
    @pytest.mark.parametrize(
        ("attrs", "error"),
        [
            (
                {"gen_ai.usage.output_tokens": "n/a"},
                {
                    "field": "gen_ai.usage.output_tokens",
                    "message": "expected an integer, got stringValue 'n/a'",
                },
            ),
            (
                {"gen_ai.usage.input_tokens": -5},
                {"field": "gen_ai.usage.input_tokens", "message": "must be >= 0, got -5"},
            ),
            (
                {"gen_ai.usage.input_tokens": {"doubleValue": 10.5}},
                {
                    "field": "gen_ai.usage.input_tokens",
                    "message": "expected an integer, got doubleValue '10.5'",
                },
            ),
            (
                {"gen_ai.usage.input_tokens": {"intValue": "12x"}},
                {
                    "field": "gen_ai.usage.input_tokens",
                    "message": "expected a non-negative integer, got str '12x'",
                },
            ),
            (
                {"gen_ai.usage.input_tokens": {}},
                {"field": "gen_ai.usage.input_tokens", "message": "expected an integer, got an empty value"},
            ),
            (
                {"gen_ai.request.model": {"boolValue": True}},
                {"field": "gen_ai.request.model", "message": "expected a string, got boolValue 'True'"},
            ),
            ({"taskmeter.customer": " "}, {"field": "taskmeter.customer", "message": "must not be empty"}),
        ],
    )
    def test_bad_attribute(self, attrs: dict[str, Any], error: dict[str, str]) -> None:
        assert errors(convert(span(CHAT | attrs))) == [error]

    def test_missing_model(self) -> None:
        attrs = {k: v for k, v in CHAT.items() if k != "gen_ai.request.model"}
        assert errors(convert(span(attrs))) == [
            {
                "field": "gen_ai.response.model",
                "message": "missing: neither gen_ai.response.model nor gen_ai.request.model",
            }
        ]

    def test_missing_provider_and_unknown_model(self) -> None:
        attrs = {k: v for k, v in CHAT.items() if k != "gen_ai.provider.name"} | {
            "gen_ai.request.model": "acme-l"
        }
        assert errors(convert(span(attrs))) == [
            {
                "field": "gen_ai.provider.name",
                "message": "missing, and the model 'acme-l' does not tell the provider",
            }
        ]

    @pytest.mark.parametrize(
        ("fields", "error"),
        [
            ({"traceId": "xyz"}, {"field": "traceId", "message": "expected 32 hex digits, got 'xyz'"}),
            ({"traceId": None}, {"field": "traceId", "message": "expected 32 hex digits, got 'None'"}),
            ({"spanId": "0000000000000000"}, {"field": "spanId", "message": "must not be all zeros"}),
            (
                {"endTimeUnixNano": None},
                {"field": "endTimeUnixNano", "message": "expected nanoseconds since the epoch, got 'None'"},
            ),
            ({"endTimeUnixNano": "0"}, {"field": "endTimeUnixNano", "message": "0 is not a time after 1970"}),
            (
                {"endTimeUnixNano": "99999999999999999999999"},
                {"field": "endTimeUnixNano", "message": "99999999999999999999999 is not a time after 1970"},
            ),
        ],
    )
    def test_bad_span_field(self, fields: dict[str, Any], error: dict[str, str]) -> None:
        assert errors(convert(span(CHAT, **fields))) == [error]

    def test_all_errors_of_a_span_are_listed(self) -> None:
        attrs = {k: v for k, v in CHAT.items() if k != "taskmeter.customer"} | {
            "gen_ai.usage.input_tokens": -1
        }
        result = convert(span(attrs, spanId="bad"))
        assert result.rejected == [
            {
                "path": "resourceSpans[0].scopeSpans[0].spans[0]",
                "trace_id": TRACE,
                "span_id": None,
                "errors": [
                    {"field": "spanId", "message": "expected 16 hex digits, got 'bad'"},
                    {
                        "field": "taskmeter.customer",
                        "message": "missing: the customer billed for this span (set it on the span or resource)",
                    },
                    {"field": "gen_ai.usage.input_tokens", "message": "must be >= 0, got -1"},
                ],
            }
        ]

    def test_one_bad_span_does_not_stop_the_others(self) -> None:
        good = span(CHAT, spanId="1111111111111111")
        bad = span(CHAT | {"gen_ai.usage.input_tokens": -1}, spanId="2222222222222222")
        result = convert(bad, good)
        assert [e["id"] for e in result.events] == [f"otel:{TRACE}:1111111111111111"]
        assert [r["path"] for r in result.rejected] == ["resourceSpans[0].scopeSpans[0].spans[0]"]

    def test_malformed_attributes_with_unreadable_ids(self) -> None:
        result = convert(span(CHAT, traceId="?", spanId=None) | {"attributes": "x"})
        assert result.rejected == [
            {
                "path": "resourceSpans[0].scopeSpans[0].spans[0]",
                "trace_id": None,
                "span_id": None,
                "errors": [{"field": "attributes", "message": "must be an array"}],
            }
        ]

    @pytest.mark.parametrize(
        ("attrs", "error"),
        [
            (
                [{"value": {"intValue": "5"}}],
                {"field": "attributes[0]", "message": "must be an object with a string key"},
            ),
            ({"gen_ai.usage.input_tokens": 5}, {"field": "attributes", "message": "must be an array"}),
        ],
    )
    def test_malformed_span_attributes_reject_only_that_span(self, attrs: Any, error: dict[str, str]) -> None:
        bad = span(CHAT, spanId="2222222222222222") | {"attributes": attrs}
        result = convert(bad, span(CHAT, spanId="1111111111111111"))
        assert [e["id"] for e in result.events] == [f"otel:{TRACE}:1111111111111111"]
        assert result.rejected == [
            {
                "path": "resourceSpans[0].scopeSpans[0].spans[0]",
                "trace_id": TRACE,
                "span_id": "2222222222222222",
                "errors": [error],
            }
        ]


class TestValueEncodings:
    def test_int_value_as_json_number(self) -> None:
        attrs = CHAT | {"gen_ai.usage.input_tokens": {"intValue": 100}}
        assert tokens(one_event(convert(span(attrs)))) == (100, 20, 0, 0, 0)

    def test_integral_double(self) -> None:
        attrs = CHAT | {"gen_ai.usage.output_tokens": {"doubleValue": 20.0}}
        assert tokens(one_event(convert(span(attrs)))) == (100, 20, 0, 0, 0)

    def test_end_time_as_json_number(self) -> None:
        assert one_event(convert(span(CHAT, endTimeUnixNano=int(END))))["time"] == TIME

    def test_nanoseconds_are_truncated_to_microseconds(self) -> None:
        assert one_event(convert(span(CHAT, endTimeUnixNano="1791192845000000999")))["time"] == (
            "2026-10-05T09:34:05.000000Z"
        )

    def test_ids_are_lowercased(self) -> None:
        event = one_event(convert(span(CHAT, traceId=TRACE.upper(), spanId=SPAN.upper())))
        assert event["id"] == f"otel:{TRACE}:{SPAN}"

    def test_base64_ids_from_plain_protobuf_json(self) -> None:
        encoded = {
            "traceId": base64.b64encode(bytes.fromhex(TRACE)).decode(),
            "spanId": base64.b64encode(bytes.fromhex(SPAN)).decode(),
        }
        assert one_event(convert(span(CHAT, **encoded)))["id"] == f"otel:{TRACE}:{SPAN}"

    def test_last_duplicate_attribute_wins(self) -> None:
        item = span(CHAT)
        item["attributes"].append({"key": "gen_ai.usage.input_tokens", "value": {"intValue": "150"}})
        assert tokens(one_event(convert(item))) == (150, 20, 0, 0, 0)

    def test_unrelated_odd_attributes_are_ignored(self) -> None:
        attrs = CHAT | {"app.weird": {"kvlistValue": {"values": []}}, "app.bytes": {"bytesValue": "AAE="}}
        assert tokens(one_event(convert(span(attrs)))) == (100, 20, 0, 0, 0)


class TestMalformedRequest:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ([], "an ExportTraceServiceRequest must be a JSON object"),
            ({"resourceSpans": {}}, "resourceSpans must be an array"),
            ({"resourceSpans": [1]}, "resourceSpans[0] must be an object"),
            (
                {"resourceSpans": [{"scopeSpans": [{"spans": "x"}]}]},
                "resourceSpans[0].scopeSpans[0].spans must be an array",
            ),
            (
                {"resourceSpans": [{"scopeSpans": [{"spans": [None]}]}]},
                "resourceSpans[0].scopeSpans[0].spans[0] must be an object",
            ),
            (
                {"resourceSpans": [{"resource": {"attributes": [{"value": {}}]}}]},
                "resourceSpans[0].resource.attributes[0] must be an object with a string key",
            ),
            (
                {"resourceSpans": [{"resource": {"attributes": {}}}]},
                "resourceSpans[0].resource.attributes must be an array",
            ),
        ],
    )
    def test_structure_errors(self, body: Any, message: str) -> None:
        with pytest.raises(ValueError) as info:
            spans_to_events(body)
        assert str(info.value) == message


class TestProtobuf:
    @pytest.mark.parametrize("name", ["openai_agent", "anthropic_instrumentations", "google_two_resources"])
    def test_same_shape_as_otlp_json(self, name: str) -> None:
        pytest.importorskip("opentelemetry.proto")
        assert decode_protobuf((OTLP / f"{name}.pb").read_bytes()) == load(name)

    def test_link_ids_are_hex(self) -> None:
        pytest.importorskip("opentelemetry.proto")
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

        link = Span.Link(
            trace_id=bytes.fromhex("0af7651916cd43dd8448eb211c80319c"),
            span_id=bytes.fromhex("b7ad6b7169203331"),
        )
        item = Span(
            trace_id=bytes.fromhex(TRACE),
            span_id=bytes.fromhex(SPAN),
            name="chat",
            links=[link],
            end_time_unix_nano=int(END),
        )
        body = ExportTraceServiceRequest(
            resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[item])])]
        )
        decoded = decode_protobuf(body.SerializeToString())
        assert decoded == {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": TRACE,
                                    "spanId": SPAN,
                                    "name": "chat",
                                    "endTimeUnixNano": END,
                                    "links": [
                                        {
                                            "traceId": "0af7651916cd43dd8448eb211c80319c",
                                            "spanId": "b7ad6b7169203331",
                                        }
                                    ],
                                }
                            ]
                        }
                    ]
                }
            ]
        }

    def test_not_a_request(self) -> None:
        pytest.importorskip("opentelemetry.proto")
        with pytest.raises(ValueError, match=r"^not an OTLP ExportTraceServiceRequest"):
            decode_protobuf(b"\xff\xff\xff")


class TestOneHourCacheWrites:
    def test_anthropic_1h_cache_writes_attribute(self) -> None:
        attrs = CHAT | {"gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-sonnet-4",
                        "gen_ai.usage.input_tokens": 79_000, "gen_ai.usage.cache_creation.input_tokens": 9_000,
                        "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": 9_000}  # fmt: skip
        event = one_event(convert(span(attrs)))
        assert (event["cache_write_tokens"], event["cache_write_1h_tokens"]) == (9_000, 9_000)
        assert_ingestible([event])

    def test_more_1h_writes_than_writes_are_rejected(self) -> None:
        attrs = CHAT | {
            "gen_ai.usage.cache_creation.input_tokens": 1,
            "taskmeter.usage.cache_write_1h_tokens": 2,
        }
        assert [e["field"] for e in errors(convert(span(attrs)))] == [
            "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens"
        ]
