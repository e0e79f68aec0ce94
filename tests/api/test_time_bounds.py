"""Event times and time query parameters within bounds every layer can represent (issue 15):
refused at the door with a 422 naming the field and the window, in every ingestion path and on
every read that takes a time, a day or a month; never a 500, never a number read as a time."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from freezegun import freeze_time
from sqlalchemy import Engine, select

from api.settings import Settings
from metering.core.tables import events
from metering.rollup.pipeline import rollup_tenant
from tests.conftest import LiveServer
from tests.factories import make_event

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)
OUTSIDE = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "1600-06-01T00:00:00Z", "1969-12-31T23:59:59Z",
           "1999-12-31T23:59:59Z", "9999-12-31T23:59:59-12:00", "2026-11-09T12:00:01Z"]  # fmt: skip


def stored_ids(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(select(events.c.event_id)).scalars())


@pytest.fixture
def frozen() -> Any:
    with freeze_time(NOW):
        yield


class TestIngestion:
    @pytest.mark.parametrize("time", OUTSIDE)
    def test_the_batch_refuses_times_outside_the_window(self, frozen: Any, api: httpx.Client, engine: Engine, time: str) -> None:
        response = api.post("/v1/events", json=[make_event(id="out", time=time), make_event(id="in", time="2026-10-15T12:00:00Z")])
        assert response.status_code == 200
        [rejected] = response.json()["rejected"]
        [error] = rejected["errors"]
        assert rejected["id"] == "out" and error["field"] == "time"
        assert "events are accepted from 2000-01-01T00:00:00Z to 7 days after now" in error["message"]
        assert stored_ids(engine) == ["in"]

    def test_the_edges_of_the_window_are_accepted(self, frozen: Any, api: httpx.Client, engine: Engine) -> None:
        edges = [make_event(id="first", time="2000-01-01T00:00:00Z"), make_event(id="last", time="2026-11-09T12:00:00Z")]
        assert api.post("/v1/events", json=edges).json()["accepted"] == 2

    def test_the_earliest_time_is_a_setting(self, settings: Settings, engine: Engine, tenant: Any, make_key: Callable[..., str]) -> None:
        settings = settings.model_copy(update={"earliest_event_time": datetime(1990, 1, 1, tzinfo=UTC)})
        with LiveServer(settings, engine) as server, server.client(make_key(tenant)) as api:
            response = api.post("/v1/events", json=[make_event(id="old", time="1995-06-01T00:00:00Z")])
            assert response.json()["accepted"] == 1
            refused = api.post("/v1/events", json=[make_event(id="older", time="1989-12-31T23:59:59Z")]).json()["rejected"]
            assert "from 1990-01-01T00:00:00Z" in refused[0]["errors"][0]["message"]

    @pytest.mark.parametrize("value", ["1969-06-01T00:00:00Z", "2262-06-01T00:00:00Z"])
    def test_the_setting_must_stay_representable(self, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TASKMETER_EARLIEST_EVENT_TIME", value)
        with pytest.raises(ValueError, match="earliest event time"):
            Settings()

    def test_cloudevents_are_held_to_the_window(self, frozen: Any, api: httpx.Client, engine: Engine) -> None:
        cloudevent = {
            "specversion": "1.0", "type": "usage", "source": "agent", "id": "ce-old", "time": "0001-01-01T00:00:00+14:00",
            "subject": "acme", "data": {"task": "t-1", "provider": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1},
        }  # fmt: skip
        response = api.post("/v1/events", content=json.dumps(cloudevent), headers={"content-type": "application/cloudevents+json"})
        assert response.status_code == 200
        assert response.json()["rejected"][0]["errors"][0]["field"] == "time"
        assert stored_ids(engine) == []

    def test_otlp_spans_are_held_to_the_window(self, frozen: Any, api: httpx.Client, engine: Engine) -> None:
        attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                      "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 20, "taskmeter.task": "t-1"}  # fmt: skip
        span = {
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "051581bf3cb55c13", "name": "chat", "kind": 3,
            "startTimeUnixNano": "1000000000", "endTimeUnixNano": "2000000000",  # 1970-01-01
            "attributes": [{"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}}
                           for k, v in attributes.items()],
        }  # fmt: skip
        resource = {"attributes": [{"key": "taskmeter.customer", "value": {"stringValue": "acme"}}]}
        body = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {"name": "t"}, "spans": [span]}]}]}
        response = api.post("/v1/otlp/v1/traces", json=body)
        assert response.status_code == 200
        assert stored_ids(engine) == []

    def test_jsonl_files_are_held_to_the_window(self, frozen: Any, engine: Engine, tmp_path: Path, run_cli: Callable[..., Any]) -> None:
        run_cli("tenants", "create", "acme-ai")
        path = tmp_path / "events.jsonl"
        path.write_text(json.dumps(make_event(id="old", time="1600-01-01T00:00:00Z")) + "\n" + json.dumps(make_event(id="ok")) + "\n")
        code, out, _ = run_cli("ingest", str(path), "--tenant", "acme-ai")
        assert code == 0 and (out["accepted"], out["rejected"]) == (1, 1)
        [rejected] = [json.loads(line) for line in (tmp_path / "events.rejected.jsonl").read_text().splitlines()]
        assert rejected["errors"][0]["field"] == "time" and "2000-01-01T00:00:00Z" in rejected["errors"][0]["message"]


class TestQueryParameters:
    @pytest.mark.parametrize(
        ("at", "message"),
        [
            ("0001-01-01T00:00:00+14:00", "is not between 1970-01-02T00:00:00Z and 2262-01-01T00:00:00Z"),
            ("9999-12-31T23:59:59-12:00", "is not between"),
            ("1700000000", "is not an RFC 3339 time with an offset"),
            ("2026-10-05T12:00:00", "is not an RFC 3339 time with an offset"),
            ("2026-10-05", "is not an RFC 3339 time with an offset"),
            ("2026-02-30T00:00:00Z", "is not a valid time"),
        ],
    )
    def test_at_is_rfc3339_with_offset_within_bounds(self, api: httpx.Client, at: str, message: str) -> None:
        api.post("/v1/events", json=[make_event(time=(datetime.now(UTC) - timedelta(hours=1)).isoformat())])
        response = api.get("/v1/customers/acme/usage/current", params={"at": at})
        assert response.status_code == 422
        [detail] = response.json()["detail"]
        assert detail["field"] == "query.at" and message in detail["message"]

    def test_a_good_at_still_works(self, api: httpx.Client, engine: Engine, tenant: Any) -> None:
        api.post("/v1/events", json=[make_event(time="2026-10-15T12:00:00Z")])
        rollup_tenant(engine, tenant, now=datetime.now(UTC))
        response = api.get("/v1/customers/acme/usage/current", params={"at": "2026-10-20T00:00:00+02:00"})
        assert response.status_code == 200 and response.json()["month"] == "2026-10"

    @pytest.mark.parametrize("name", ["from", "to"])
    @pytest.mark.parametrize("value", ["20261001", "1759276800", "2026-10-01T00:00:00Z", "0000-01-01", "9999-12-31", "2026-13-01"])
    def test_days_are_yyyy_mm_dd_within_bounds(self, api: httpx.Client, name: str, value: str) -> None:
        response = api.get("/v1/usage", params={name: value})
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == f"query.{name}"

    def test_good_days_still_work(self, api: httpx.Client) -> None:
        response = api.get("/v1/usage", params={"from": "2026-10-01", "to": "2026-11-01"})
        assert response.status_code == 200 and response.json()["from"] == "2026-10-01"

    @pytest.mark.parametrize("month", ["0000-01", "1969-12", "2262-01", "9999-12", "202610", "2026-10-01", "1700000000"])
    def test_months_everywhere(self, api: httpx.Client, month: str) -> None:
        for path, params in (
            ("/v1/customers/acme/invoices/upcoming", {"month": month}),
            (f"/v1/reports/{month}/customers.csv", {}),
            ("/v1/customers/acme/compare", {"month": month}),
        ):
            response = api.get(path, params=params)
            assert response.status_code in (404, 422), (path, response.status_code, response.text)  # 404: no customer yet
        report = api.get(f"/v1/reports/{month}/customers.csv")
        assert report.status_code == 422 and report.json()["detail"][0]["field"] == "month"

    def test_the_quote_time_is_text(self, api: httpx.Client) -> None:
        response = api.post("/v1/quotes", json={"usage": [], "at": 1700000000})
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"].endswith("at")
