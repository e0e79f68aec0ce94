"""Text with a NUL character, which PostgreSQL cannot store (SQLite could), is refused alike on
both databases with a 422 naming where it was, never a 500: in any path or query (every route
of the route table), in events, plan and customer names, and credit note reasons."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from metering.tenants import Tenant
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
