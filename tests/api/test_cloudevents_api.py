"""CloudEvents on POST /v1/events through real HTTP: structured and batch mode, as OpenMeter takes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, select

from metering.core.tables import events

CLOUDEVENTS = Path(__file__).parents[1] / "fixtures" / "cloudevents"
STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json; charset=utf-8"}


def fixture(name: str) -> bytes:
    return (CLOUDEVENTS / f"{name}.json").read_bytes()


def stored(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(events).order_by(events.c.seq)))


def cloudevent(event_id: str = "ce-1", **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0", "type": "usage", "source": "agent", "id": event_id, "time": "2026-10-05T09:31:00Z",
        "subject": "acme",
        "data": {"task": "t-1", "provider": "openai", "model": "gpt-4o", "input_tokens": 100, "output_tokens": 20} | data,
    }  # fmt: skip


class TestStructured:
    def test_one_cloudevent_is_stored(self, api: httpx.Client, engine: Engine) -> None:
        response = api.post("/v1/events", content=fixture("structured_usage"), headers=STRUCTURED)
        assert response.status_code == 200
        assert response.json() == {"accepted": 1, "duplicates": 0, "conflicts": 0, "rejected": []}
        [row] = stored(engine)
        assert (row.event_id, row.customer, row.task, row.task_type) == (
            "evt_01J9Z3K7Q8M2N4P6R8T0V2X4Z6", "acme", "ticket-4411", "support_ticket",
        )  # fmt: skip
        assert (row.provider, row.input_tokens, row.cache_write_tokens, row.output_tokens) == ("anthropic", 2168, 2150, 301)
        assert json.loads(row.metadata)["ce.source"] == "https://agents.acme.example/support"
        assert api.get("/v1/events/evt_01J9Z3K7Q8M2N4P6R8T0V2X4Z6").json()["time"] == "2026-10-05T09:34:05.360000Z"

    def test_a_replay_is_a_duplicate(self, api: httpx.Client) -> None:
        api.post("/v1/events", content=fixture("structured_usage"), headers=STRUCTURED)
        again = api.post("/v1/events", content=fixture("structured_usage"), headers=STRUCTURED).json()
        assert (again["accepted"], again["duplicates"]) == (0, 1)

    def test_an_array_is_not_a_structured_event(self, api: httpx.Client) -> None:
        response = api.post("/v1/events", json=[cloudevent()], headers=STRUCTURED)
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == "body"

    def test_an_invalid_cloudevent_is_rejected_with_its_reasons(self, api: httpx.Client, engine: Engine) -> None:
        item = cloudevent() | {"specversion": "0.3"}
        body = api.post("/v1/events", content=orjson.dumps(item), headers=STRUCTURED).json()
        assert body["rejected"] == [
            {"index": 0, "id": "ce-1", "errors": [{"field": "specversion", "message": "must be '1.0', got '0.3'"}]}
        ]
        assert stored(engine) == []

    def test_a_missing_time_is_the_time_received(self, api: httpx.Client, engine: Engine) -> None:
        item = {k: v for k, v in cloudevent().items() if k != "time"}
        assert api.post("/v1/events", content=orjson.dumps(item), headers=STRUCTURED).json()["accepted"] == 1
        assert stored(engine)[0].time_us > 1_790_000_000_000_000

    def test_malformed_json_is_400(self, api: httpx.Client) -> None:
        response = api.post("/v1/events", content=b'{"id": ', headers=STRUCTURED)
        assert response.status_code == 400 and response.json()["detail"]["line"] == 1


class TestBatch:
    def test_a_mixed_batch_reports_rejections_at_their_positions(self, api: httpx.Client, engine: Engine) -> None:
        body = api.post("/v1/events", content=fixture("batch_mixed"), headers=BATCH).json()
        assert (body["accepted"], body["duplicates"], body["conflicts"]) == (6, 0, 0)
        assert [(r["index"], r["id"], r["errors"][0]["field"]) for r in body["rejected"]] == [
            (5, "old-1", "specversion"), (6, "no-subject-1", "subject"),
        ]  # fmt: skip
        rows = stored(engine)
        assert [r.type for r in rows] == ["task.started", "usage", "usage", "usage", "usage", "task.completed"]
        assert [r.input_tokens for r in rows if r.type == "usage"] == [123456, 0, 1117, 12 + 248 + 2150]

    def test_ingestion_rejections_map_back_to_the_batch(self, api: httpx.Client, engine: Engine) -> None:
        items = [
            cloudevent("ok-1"),
            {"specversion": "1.0", "id": "bad-adapter", "source": "agent", "type": "usage"},
            cloudevent("bad-model", model="m" * 200),
            cloudevent("ok-2"),
            cloudevent("future") | {"time": "2099-01-01T00:00:00Z"},
        ]
        body = api.post("/v1/events", json=items, headers=BATCH).json()
        assert body["accepted"] == 2
        assert [(r["index"], r["id"], r["errors"][0]["field"]) for r in body["rejected"]] == [
            (1, "bad-adapter", "subject"), (2, "bad-model", "model"), (4, "future", "time"),
        ]  # fmt: skip
        assert [r.event_id for r in stored(engine)] == ["ok-1", "ok-2"]

    def test_atomic_stores_nothing_when_one_is_rejected(self, api: httpx.Client, engine: Engine) -> None:
        items = [cloudevent("ok-1"), {"specversion": "1.0", "id": "bad", "source": "agent", "type": "usage"}]
        response = api.post("/v1/events?atomic=true", json=items, headers=BATCH)
        assert response.status_code == 422
        assert response.json()["detail"][0]["index"] == 1
        assert stored(engine) == []

    def test_an_object_is_not_a_batch(self, api: httpx.Client) -> None:
        response = api.post("/v1/events", json=cloudevent(), headers=BATCH)
        assert response.status_code == 422
        assert "JSON array" in response.json()["message"]

    def test_too_many_events_is_413(self, api: httpx.Client) -> None:
        response = api.post("/v1/events", json=[cloudevent(f"e{i}") for i in range(10_001)], headers=BATCH)
        assert response.status_code == 413

    def test_plain_json_arrays_still_mean_taskmeter_events(self, api: httpx.Client) -> None:
        response = api.post("/v1/events", json=[cloudevent()])
        assert response.status_code == 200
        messages = {e["message"] for e in response.json()["rejected"][0]["errors"]}
        assert "is not a known event field" in messages
