"""CloudEvents 1.0 (structured and batch JSON) → taskmeter events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from metering.adapters.cloudevents import CloudEventsResult, from_batch, from_body, from_structured

CLOUDEVENTS = Path(__file__).parents[1] / "fixtures" / "cloudevents"
RECEIVED = datetime(2026, 10, 5, 9, 35, 0, 123456, tzinfo=UTC)


def load(name: str) -> Any:
    return json.loads((CLOUDEVENTS / f"{name}.json").read_text())


def cloudevent(data: dict[str, Any] | None = None, **attributes: Any) -> dict[str, Any]:
    item = {
        "specversion": "1.0",
        "type": "usage",
        "source": "support-agent",
        "id": "evt-1",
        "time": "2026-10-05T09:31:00Z",
        "subject": "acme",
        "data": {
            "task": "t-1",
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 100,
            "output_tokens": 20,
        }
        if data is None
        else data,
    } | attributes
    return {k: v for k, v in item.items() if v is not None}


def one_event(item: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    result = from_batch([item], **kwargs)
    assert result.rejected == []
    assert result.positions == [0]
    return result.events[0]


def errors(item: Any, **kwargs: Any) -> list[dict[str, str]]:
    result = from_batch([item], **kwargs)
    assert (result.events, result.positions) == ([], [])
    assert len(result.rejected) == 1
    return [dict(e) for e in result.rejected[0]["errors"]]


def tokens(event: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (
        event["input_tokens"],
        event["output_tokens"],
        event["cache_read_tokens"],
        event["cache_write_tokens"],
        event["reasoning_tokens"],
    )


def meta(source: str, ce_type: str, **extra: str) -> dict[str, str]:
    return {**extra, "source": "cloudevents", "ce.source": source, "ce.type": ce_type}


def zero_tokens(**counts: int) -> dict[str, int]:
    return {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
    } | counts


def assert_ingestible(events: list[dict[str, Any]]) -> None:
    """Ingestion's own shape validation (written elsewhere, concurrently) accepts every event."""
    validate_items = getattr(pytest.importorskip("metering.events.ingest"), "validate_items", None)
    if validate_items is None:
        pytest.skip("metering.events.ingest.validate_items is not available")
    batch = validate_items(events)
    assert batch.rejected == []
    assert len(batch.events) == len(events)


class TestRecorded:
    def test_structured_usage_event(self) -> None:
        assert from_structured(load("structured_usage")) == CloudEventsResult(
            events=[
                {
                    "id": "evt_01J9Z3K7Q8M2N4P6R8T0V2X4Z6",
                    "type": "usage",
                    "time": "2026-10-05T11:34:05.360+02:00",
                    "customer": "acme",
                    "task": "ticket-4411",
                    "task_type": "support_ticket",
                    "provider": "anthropic",
                    "model": "claude-sonnet-4-5-20250929",
                    **zero_tokens(input_tokens=2168, output_tokens=301, cache_write_tokens=2150),
                    "metadata": meta(
                        "https://agents.acme.example/support",
                        "usage",
                        agent="support-triage",
                        runtime="claude-agent-sdk 0.9",
                    ),
                }
            ],
            positions=[0],
            rejected=[],
        )

    def test_mixed_batch(self) -> None:
        result = from_batch(load("batch_mixed"))
        task = {"customer": "acme", "task": "ticket-4411"}
        assert result.events == [
            {
                "id": "ticket-4411:started",
                "type": "task.started",
                "time": "2026-10-05T09:30:00Z",
                **task,
                "task_type": "support_ticket",
                "metadata": meta("support-agent", "task.started"),
            },
            # OpenMeter's one-count-per-event form, the count a string as in its examples.
            {
                "id": "00001",
                "type": "usage",
                "time": "2026-10-05T09:31:00.001Z",
                **task,
                "provider": "openai",
                "model": "gpt-4o",
                **zero_tokens(input_tokens=123456),
                "metadata": meta("chat-app", "prompt"),
            },
            {
                "id": "00002",
                "type": "usage",
                "time": "2026-10-05T09:31:00.002Z",
                **task,
                "provider": "openai",
                "model": "gpt-4o",
                **zero_tokens(output_tokens=2048),
                "metadata": meta("chat-app", "prompt"),
            },
            # OpenAI-style names; total_tokens and cost are ignored.
            {
                "id": "chatcmpl-CQ7eQ4hG8rZ2dN6pXk1sT9vB3yW7m",
                "type": "usage",
                "time": "2026-10-05T09:32:10Z",
                **task,
                "provider": "openai",
                "model": "o4-mini-2025-04-16",
                **zero_tokens(input_tokens=1117, output_tokens=1512),
                "metadata": meta("litellm", "litellm_tokens"),
            },
            # A raw Anthropic usage object, normalized: the cache is added back to the input.
            {
                "id": "msg_01Ht7vPqZ3nK8mW2xR5cJ9bL",
                "type": "usage",
                "time": "2026-10-05T09:33:00Z",
                **task,
                "provider": "anthropic",
                "model": "claude-opus-4-1-20250805",
                **zero_tokens(
                    input_tokens=12 + 248 + 2150,
                    output_tokens=1630,
                    cache_read_tokens=2150,
                    cache_write_tokens=248,
                    reasoning_tokens=1218,
                ),
                "metadata": meta("support-agent", "com.example.agent.llm.usage"),
            },
            {
                "id": "ticket-4411:completed",
                "type": "task.completed",
                "time": "2026-10-05T09:34:13.252Z",
                **task,
                "metadata": meta("support-agent", "com.acme.task.completed"),
            },
        ]
        assert result.positions == [0, 1, 2, 3, 4, 7]
        assert result.rejected == [
            {
                "index": 5,
                "id": "old-1",
                "errors": [{"field": "specversion", "message": "must be '1.0', got '0.3'"}],
            },
            {
                "index": 6,
                "id": "no-subject-1",
                "errors": [
                    {"field": "subject", "message": "is required: the customer billed for this event"}
                ],
            },
        ]

    @pytest.mark.parametrize("name", ["structured_usage", "batch_mixed"])
    def test_ingestion_accepts_the_events(self, name: str) -> None:
        payload = load(name)
        result = from_batch(payload if isinstance(payload, list) else [payload])
        assert_ingestible(result.events)


class TestTypes:
    @pytest.mark.parametrize(
        ("ce_type", "event_type"),
        [
            ("task.started", "task.started"),
            ("task.completed", "task.completed"),
            ("task.failed", "task.failed"),
            ("task.cancelled", "task.cancelled"),
            ("com.acme.agent.task.failed", "task.failed"),
            ("usage", "usage"),
            ("prompt", "usage"),
            ("tokens", "usage"),
            ("llm.usage", "usage"),
            ("subtask.completed", "usage"),
            ("task.succeeded", "usage"),
        ],
    )
    def test_type_mapping(self, ce_type: str, event_type: str) -> None:
        data = (
            {"task": "t-1", "provider": "openai", "model": "gpt-4o"}
            if event_type == "usage"
            else {"task": "t-1"}
        )
        assert one_event(cloudevent(data, type=ce_type))["type"] == event_type

    def test_task_event_without_tokens(self) -> None:
        assert one_event(cloudevent({"task": "t-1", "task_type": "code_review"}, type="task.failed")) == {
            "id": "evt-1",
            "type": "task.failed",
            "time": "2026-10-05T09:31:00Z",
            "customer": "acme",
            "task": "t-1",
            "task_type": "code_review",
            "metadata": meta("support-agent", "task.failed"),
        }

    def test_tokens_on_a_task_event_are_rejected(self) -> None:
        assert errors(cloudevent({"task": "t-1", "input_tokens": 5}, type="task.completed")) == [
            {"field": "data.input_tokens", "message": "token counts are only allowed on usage events"}
        ]


class TestEnvelope:
    @pytest.mark.parametrize(
        ("attributes", "error"),
        [
            ({"specversion": None}, {"field": "specversion", "message": "is required (CloudEvents 1.0)"}),
            ({"specversion": 1.0}, {"field": "specversion", "message": "must be '1.0', got 1.0"}),
            ({"specversion": "1.0.2"}, {"field": "specversion", "message": "must be '1.0', got '1.0.2'"}),
            ({"id": None}, {"field": "id", "message": "is required"}),
            ({"id": ""}, {"field": "id", "message": "must be a non-empty string"}),
            ({"source": None}, {"field": "source", "message": "is required"}),
            ({"type": 7}, {"field": "type", "message": "must be a non-empty string"}),
            (
                {"subject": None},
                {"field": "subject", "message": "is required: the customer billed for this event"},
            ),
            ({"time": 1791192843}, {"field": "time", "message": "must be an RFC 3339 string"}),
            (
                {"datacontenttype": "text/plain"},
                {"field": "datacontenttype", "message": "must be application/json, got 'text/plain'"},
            ),
            (
                {"data_base64": "eyJ0YXNrIjoidC0xIn0="},
                {
                    "field": "data_base64",
                    "message": "binary data is not supported; send data as a JSON object",
                },
            ),
        ],
    )
    def test_rejected(self, attributes: dict[str, Any], error: dict[str, str]) -> None:
        item = cloudevent(**{k: v for k, v in attributes.items() if v is not None})
        for key in (k for k, v in attributes.items() if v is None):
            del item[key]
        assert errors(item) == [error]

    @pytest.mark.parametrize(
        "content_type",
        ["application/json", "application/json; charset=utf-8", "application/vnd.acme.usage+json"],
    )
    def test_json_data_content_types(self, content_type: str) -> None:
        assert one_event(cloudevent(datacontenttype=content_type))["id"] == "evt-1"

    def test_not_an_object(self) -> None:
        result = from_batch(["evt-1", cloudevent()])
        assert result.rejected == [
            {
                "index": 0,
                "id": None,
                "errors": [{"field": "event", "message": "each CloudEvent must be a JSON object"}],
            }
        ]
        assert result.positions == [1]

    def test_absent_data(self) -> None:
        item = cloudevent(type="task.started")
        del item["data"]
        assert errors(item) == [
            {"field": "data.task", "message": "is required: the task (job) this event belongs to"}
        ]

    def test_content_type_must_be_a_string(self) -> None:
        assert errors(cloudevent(datacontenttype=["application/json"])) == [
            {"field": "datacontenttype", "message": "must be application/json, got ['application/json']"}
        ]

    def test_data_must_be_an_object(self) -> None:
        assert errors(cloudevent(data="tokens=5"))[0] == {"field": "data", "message": "must be a JSON object"}

    def test_every_reason_is_listed(self) -> None:
        item = cloudevent({"provider": "openai", "input_tokens": -1}, specversion="2.0")
        del item["subject"]
        assert errors(item) == [
            {"field": "specversion", "message": "must be '1.0', got '2.0'"},
            {"field": "subject", "message": "is required: the customer billed for this event"},
            {"field": "data.task", "message": "is required: the task (job) this event belongs to"},
            {"field": "data.model", "message": "is required on usage events"},
            {"field": "data.input_tokens", "message": "must be >= 0, got -1"},
        ]

    def test_missing_time_is_the_receipt_time(self) -> None:
        item = cloudevent()
        del item["time"]
        assert one_event(item, received_at=RECEIVED)["time"] == "2026-10-05T09:35:00.123456Z"

    def test_receipt_time_is_written_in_utc(self) -> None:
        item = cloudevent()
        del item["time"]
        berlin = RECEIVED.astimezone(timezone(timedelta(hours=2)))
        assert one_event(item, received_at=berlin)["time"] == "2026-10-05T09:35:00.123456Z"

    def test_missing_time_without_receipt_time(self) -> None:
        item = cloudevent()
        del item["time"]
        assert errors(item) == [{"field": "time", "message": "is required"}]

    def test_naive_receipt_time(self) -> None:
        with pytest.raises(ValueError, match="received_at must be timezone-aware"):
            from_batch([], received_at=datetime(2026, 10, 5, 9, 35))


class TestData:
    def test_task_is_required(self) -> None:
        assert errors(cloudevent({"provider": "openai", "model": "gpt-4o"})) == [
            {"field": "data.task", "message": "is required: the task (job) this event belongs to"}
        ]

    def test_usage_needs_provider_and_model(self) -> None:
        assert errors(cloudevent({"task": "t-1", "input_tokens": 5})) == [
            {"field": "data.provider", "message": "is required on usage events"},
            {"field": "data.model", "message": "is required on usage events"},
        ]

    def test_all_token_fields(self) -> None:
        data = {
            "task": "t-1",
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 100,
            "output_tokens": 20,
            "cache_read_tokens": 60,
            "cache_write_tokens": 10,
            "reasoning_tokens": 5,
        }
        assert tokens(one_event(cloudevent(data))) == (100, 20, 60, 10, 5)

    def test_openai_names(self) -> None:
        data = {
            "task": "t-1",
            "provider": "openai",
            "model": "gpt-4o",
            "prompt_tokens": 100,
            "completion_tokens": 20,
        }
        assert tokens(one_event(cloudevent(data))) == (100, 20, 0, 0, 0)

    def test_two_names_for_one_count(self) -> None:
        data = {
            "task": "t-1",
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 100,
            "prompt_tokens": 100,
        }
        assert errors(cloudevent(data)) == [
            {
                "field": "data.prompt_tokens",
                "message": "give data.input_tokens or data.prompt_tokens, not both",
            }
        ]

    @pytest.mark.parametrize(
        ("direction", "expected"),
        [
            ("input", (7, 0)),
            ("system", (7, 0)),
            ("prompt", (7, 0)),
            ("output", (0, 7)),
            ("completion", (0, 7)),
        ],
    )
    def test_openmeter_tokens(self, direction: str, expected: tuple[int, int]) -> None:
        data = {"task": "t-1", "provider": "openai", "model": "gpt-4o", "tokens": "7", "type": direction}
        assert tokens(one_event(cloudevent(data)))[:2] == expected

    def test_openmeter_tokens_need_a_direction(self) -> None:
        data = {"task": "t-1", "provider": "openai", "model": "gpt-4o", "tokens": 7}
        assert errors(cloudevent(data)) == [
            {
                "field": "data.type",
                "message": "with data.tokens, must be one of input, prompt, system, output, completion; got None",
            }
        ]

    def test_openmeter_tokens_and_the_same_count_twice(self) -> None:
        data = {
            "task": "t-1",
            "provider": "openai",
            "model": "gpt-4o",
            "tokens": 7,
            "type": "output",
            "output_tokens": 7,
        }
        assert errors(cloudevent(data)) == [
            {"field": "data.tokens", "message": "give data.tokens or data.output_tokens, not both"}
        ]

    @pytest.mark.parametrize(
        ("count", "message"),
        [
            (-1, "must be >= 0, got -1"),
            (1.5, "expected a non-negative integer, got float 1.5"),
            ("12.5", "expected a non-negative integer, got str '12.5'"),
            ("-3", "expected a non-negative integer, got str '-3'"),
            (True, "expected a non-negative integer, got bool True"),
        ],
    )
    def test_bad_counts(self, count: Any, message: str) -> None:
        data = {
            "task": "t-1",
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 100,
            "output_tokens": count,
        }
        assert errors(cloudevent(data)) == [{"field": "data.output_tokens", "message": message}]

    def test_null_count_is_zero(self) -> None:
        data = {
            "task": "t-1",
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 100,
            "output_tokens": None,
        }
        assert tokens(one_event(cloudevent(data))) == (100, 0, 0, 0, 0)

    def test_subsets_beyond_totals(self) -> None:
        data = {
            "task": "t-1",
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 10,
            "cache_read_tokens": 11,
        }
        assert errors(cloudevent(data)) == [
            {
                "field": "data.cache_read_tokens",
                "message": "cache reads (11) and writes (0) exceed input_tokens (10), which includes them",
            }
        ]

    def test_raw_gemini_usage(self) -> None:
        data = {
            "task": "t-1",
            "model": "gemini-2.5-pro",
            "usage_metadata": {
                "prompt_token_count": 100,
                "candidates_token_count": 20,
                "thoughts_token_count": 30,
                "cached_content_token_count": 64,
            },
        }
        event = one_event(cloudevent(data))
        assert (event["provider"], event["model"], tokens(event)) == (
            "google",
            "gemini-2.5-pro",
            (100, 50, 64, 0, 30),
        )

    def test_raw_usage_with_an_explicit_provider(self) -> None:
        data = {
            "task": "t-1",
            "provider": "groq",
            "model": "llama-3.3-70b-versatile",
            "usage": {"prompt_tokens": 100, "completion_tokens": 20},
        }
        assert one_event(cloudevent(data))["provider"] == "groq"

    def test_raw_usage_errors_name_the_data_field(self) -> None:
        data = {"task": "t-1", "model": "gpt-4o", "usage": {"prompt_tokens": -2, "completion_tokens": 20}}
        assert errors(cloudevent(data)) == [
            {"field": "data.usage.prompt_tokens", "message": "must be >= 0, got -2"}
        ]

    def test_raw_usage_and_token_fields_together(self) -> None:
        data = {"task": "t-1", "model": "gpt-4o", "usage": {"prompt_tokens": 2}, "input_tokens": 2}
        assert errors(cloudevent(data)) == [
            {"field": "data.input_tokens", "message": "give either data.usage or token fields, not both"}
        ]

    def test_metadata_must_be_strings(self) -> None:
        data = {"task": "t-1", "task_type": "support_ticket", "metadata": {"attempt": 2}}
        assert errors(cloudevent(data, type="task.started")) == [
            {"field": "data.metadata", "message": "must be an object of strings"}
        ]

    def test_our_metadata_keys_win(self) -> None:
        data = {"task": "t-1", "metadata": {"source": "spoofed", "agent": "triage"}}
        assert one_event(cloudevent(data, type="task.started"))["metadata"] == meta(
            "support-agent", "task.started", agent="triage"
        )

    def test_task_type_must_be_text(self) -> None:
        assert errors(cloudevent({"task": "t-1", "task_type": 3}, type="task.started")) == [
            {"field": "data.task_type", "message": "must be a non-empty string"}
        ]


class TestMediaTypes:
    def test_structured(self) -> None:
        result = from_body(cloudevent(), "application/cloudevents+json; charset=UTF-8")
        assert result.positions == [0]

    def test_batch(self) -> None:
        result = from_body([cloudevent(), cloudevent(id="evt-2")], "application/cloudevents-batch+json")
        assert [e["id"] for e in result.events] == ["evt-1", "evt-2"]

    def test_empty_batch(self) -> None:
        assert from_batch([]) == CloudEventsResult(events=[], positions=[], rejected=[])

    def test_structured_missing_specversion_is_rejected_not_raised(self) -> None:
        item = cloudevent()
        del item["specversion"]
        assert from_structured(item).rejected == [
            {
                "index": 0,
                "id": "evt-1",
                "errors": [{"field": "specversion", "message": "is required (CloudEvents 1.0)"}],
            }
        ]

    @pytest.mark.parametrize(
        ("payload", "content_type", "message"),
        [
            (
                [cloudevent()],
                "application/cloudevents+json",
                "a structured CloudEvent is one JSON object; send arrays as application/cloudevents-batch+json",
            ),
            (
                cloudevent(),
                "application/cloudevents-batch+json",
                "a CloudEvents batch is a JSON array of CloudEvents",
            ),
            (
                cloudevent(),
                "application/json",
                "expected application/cloudevents+json or application/cloudevents-batch+json, got 'application/json'",
            ),
        ],
    )
    def test_wrong_body(self, payload: Any, content_type: str, message: str) -> None:
        with pytest.raises(ValueError) as info:
            from_body(payload, content_type)
        assert str(info.value) == message
