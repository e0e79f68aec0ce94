"""Text with a NUL character, which PostgreSQL cannot store (SQLite could), is refused alike on
both databases with a 422 naming where it was, never a 500: in any path or query (every route
of the route table), in events (their metadata too, by every way events come in), plan and
customer names, and credit note reasons."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from metering.core.tables import events
from metering.core.tenants import Tenant
from tests.conftest import LiveServer
from tests.security.conftest import World, flat_routes, throwaway_app

NUL = "\x00"
ROUTES = sorted(
    (method, route.path)
    for route in flat_routes(throwaway_app())
    for method in route.methods - {"HEAD"}
)


@pytest.fixture
def api(live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str]) -> Iterator[httpx.Client]:
    with live_server.client(make_key(tenant)) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_paths_and_queries(api: httpx.Client, method: str, path: str) -> None:
    filled = re.sub(r"{(\w+)(?::\w+)?}", "a%00b", path)
    answers = [api.request(method, filled + "?month=a%00b&customer=x")] if filled != path else []
    answers.append(api.request(method, re.sub(r"{(\w+)(?::\w+)?}", "x", path), params={"customer": f"a{NUL}b"}))
    for response in answers:
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["message"] == "must not contain NUL characters"


def test_events(api: httpx.Client) -> None:
    event = {"id": "e1", "type": "usage", "time": "2026-11-20T10:00:00Z", "customer": "c", "task": "t",
             "task_type": "x", "provider": "acme-ai", "model": "acme-large", "input_tokens": 1, "output_tokens": 1}  # fmt: skip
    batch = [event | {"id": f"n-{field}", field: f"a{NUL}"} for field in ("customer", "task", "task_type", "provider", "model")]
    batch.append(event | {"id": f"e{NUL}"})
    result = api.post("/v1/events", json=[*batch, event]).json()
    assert result["accepted"] == 1
    assert [(r["index"], [e["field"] for e in r["errors"]]) for r in result["rejected"]] == [
        (0, ["customer"]), (1, ["task"]), (2, ["task_type"]), (3, ["provider"]), (4, ["model"]), (5, ["id"]),
    ]  # fmt: skip
    assert {e["message"] for r in result["rejected"] for e in r["errors"]} == {"must not contain NUL characters"}


EVENT = {"id": "m1", "type": "usage", "time": "2026-11-20T10:00:00Z", "customer": "c", "task": "t",
         "provider": "acme-ai", "model": "acme-large", "input_tokens": 1, "output_tokens": 1}  # fmt: skip
BAD_METADATA = [
    ({"runtime": f"py{NUL}"}, "metadata.runtime", "must not contain NUL characters"),
    ({f"run{NUL}time": "py"}, "metadata.run\\u0000time", "the key must not contain NUL characters"),
]


def stored_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(events)).scalar_one()


class TestMetadata:
    """A NUL in a metadata key or value is refused, naming `metadata.<key>`, however the event came."""

    def test_json_batches(self, api: httpx.Client, engine: Engine) -> None:
        batch = [EVENT | {"id": f"m{n}", "metadata": metadata} for n, (metadata, _, _) in enumerate(BAD_METADATA)]
        result = api.post("/v1/events", json=[*batch, EVENT | {"id": "ok", "metadata": {"runtime": "py"}}]).json()
        assert result["accepted"] == 1 and stored_count(engine) == 1
        assert [r["errors"] for r in result["rejected"]] == [
            [{"field": field, "message": message}] for _, field, message in BAD_METADATA
        ]
        atomic = api.post("/v1/events?atomic=true", json=batch[:1])
        assert atomic.status_code == 422 and "metadata.runtime" in atomic.text
        assert stored_count(engine) == 1

    def test_cloudevents(self, api: httpx.Client, engine: Engine) -> None:
        def cloudevent(n: int, metadata: dict[str, str], source: str = "agents") -> dict[str, Any]:
            return {"specversion": "1.0", "id": f"ce-{n}", "source": source, "type": "usage", "subject": "c",
                    "time": "2026-11-20T10:00:00Z", "data": {"task": "t", "provider": "acme-ai", "model": "acme-large",
                    "input_tokens": 1, "output_tokens": 1, "metadata": metadata}}  # fmt: skip

        body = [cloudevent(n, metadata) for n, (metadata, _, _) in enumerate(BAD_METADATA)]
        body.append(cloudevent(9, {}, source=f"agents{NUL}"))  # the source becomes metadata["ce.source"]
        response = api.post("/v1/events", json=body, headers={"Content-Type": "application/cloudevents-batch+json"})
        assert response.status_code == 200 and response.json()["accepted"] == 0
        assert [[e["field"] for e in r["errors"]] for r in response.json()["rejected"]] == [
            ["metadata.runtime"], ["metadata.run\\u0000time"], ["metadata.ce.source"],
        ]  # fmt: skip
        assert stored_count(engine) == 0

    def test_otlp_span_names_and_attributes(self, api: httpx.Client, engine: Engine) -> None:
        def span(span_id: str, name: str, agent: str) -> dict[str, Any]:
            attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                          "gen_ai.agent.name": agent, "taskmeter.task": "t"}  # fmt: skip
            return {
                "traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "name": name, "kind": 3,
                "startTimeUnixNano": "1791192843270000000", "endTimeUnixNano": "1791192845360000000",
                "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()]
                + [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "5"}}],
            }  # fmt: skip

        spans = [span("00f067aa0ba902b7", f"chat{NUL}", "a"), span("00f067aa0ba902b8", "chat", f"a{NUL}")]
        resource = {"attributes": [{"key": "taskmeter.customer", "value": {"stringValue": "c"}}]}
        body = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}]}]}
        response = api.post("/v1/otlp/v1/traces", json=body)
        assert response.status_code == 200 and response.headers["x-taskmeter-accepted"] == "0"
        message = response.json()["partialSuccess"]["errorMessage"]
        assert response.json()["partialSuccess"]["rejectedSpans"] == 2
        assert "metadata.span_name must not contain NUL characters" in message
        assert "metadata.gen_ai.agent.name must not contain NUL characters" in message
        assert stored_count(engine) == 0

    def test_jsonl_files(self, run_cli: Callable[..., tuple[int, Any, str]], tenant: Tenant, tmp_path: Path, engine: Engine) -> None:
        lines = [EVENT | {"id": f"m{n}", "metadata": metadata} for n, (metadata, _, _) in enumerate(BAD_METADATA)]
        path = tmp_path / "events.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in [*lines, EVENT]))
        code, summary, _ = run_cli("ingest", str(path), "--tenant", tenant.name)
        assert code == 0 and summary["accepted"] == 1 and summary["rejected"] == 2
        rejected = [json.loads(line) for line in (tmp_path / "events.rejected.jsonl").read_text().splitlines()]
        assert [(r["line"], r["errors"]) for r in rejected] == [
            (n + 1, [{"field": field, "message": message}]) for n, (_, field, message) in enumerate(BAD_METADATA)
        ]
        assert stored_count(engine) == 1


def test_plans_customers_and_credit_notes(live_server: LiveServer, alpha: World) -> None:
    with live_server.client(alpha.key) as api:
        plan = api.post("/v1/plans", json={"id": f"p{NUL}", "type": "per_job", "prices": {"default": "1"}})
        customer = api.put("/v1/customers/c", json={"plan": alpha.plan, "compare_with": [f"x{NUL}"]})
        note = api.post(f"/v1/invoices/{alpha.invoice_id}/credit-notes", json={"amount": "0.01", "reason": f"r{NUL}"})
    assert [(r.status_code, r.json()["detail"][0]) for r in (plan, customer, note)] == [
        (422, {"field": "body.id", "message": "must not contain NUL characters"}),
        (422, {"field": "body.compare_with[0]", "message": "must not contain NUL characters"}),
        (422, {"field": "body.reason", "message": "must not contain NUL characters"}),
    ]
