"""A `verdict` key, generated from the app's route table: bound to one customer, it may post that
customer's task.accepted / task.rejected events and disputes, and read that customer's tasks,
task events, disputes and invoices. Every other route answers 403; another customer's (or
another tenant's) task, dispute or invoice is not found, as one that does not exist."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from api.deps import get_principal
from metering.core.db import unit_of_work
from metering.core.errors import InvalidInput
from metering.core.tenants import create_api_key
from metering.events.ingest import ingest_events
from tests.conftest import TEST_SECRET, LiveServer
from tests.security.conftest import World, flat_routes, sign_in, throwaway_app
from tests.security.test_isolation import ENDPOINTS, OWNED, Endpoint, call, fill

# What the verdict key may do, and how it answers for its own customer's ids.
ALLOWED = {
    ("POST", "/v1/events"): 200,
    ("POST", "/v1/tasks/{task}/disputes"): 409,  # allowed: the world's task already has an open dispute
    ("GET", "/v1/tasks/{task}"): 200,
    ("GET", "/v1/tasks/{task}/events"): 200,
    ("GET", "/v1/customers/{customer}/invoices"): 200,
    ("GET", "/v1/customers/{customer}/invoices/upcoming"): 200,
    ("GET", "/v1/invoices/{invoice_id}"): 200,
    ("GET", "/v1/invoices/{invoice_id}/lines/{line_no}/tasks"): 200,
    ("GET", "/v1/disputes/{dispute_id}"): 200,
}
VERDICT_BODY = {"json": [{"id": "verdict-1", "type": "task.accepted", "time": "2026-11-20T10:00:00Z",
                          "customer": "alpha-cust", "task": "alpha-task-1"}]}  # fmt: skip
OTHER = "alpha-other"


def authenticated(endpoint: Endpoint) -> bool:
    """Whether the route checks an API key (public ones: docs, health, the Stripe webhook)."""
    for route in flat_routes(throwaway_app()):
        if route.path == endpoint.path and endpoint.method in route.methods and route.dependant is not None:

            def calls(dependant: Any) -> set[Any]:
                return {d.call for d in dependant.dependencies} | {
                    c for d in dependant.dependencies for c in calls(d)
                }

            return get_principal in calls(route.dependant)
    return False


@pytest.fixture
def verdict(live_server: LiveServer, alpha: World, engine: Engine) -> Iterator[httpx.Client]:
    with unit_of_work(engine) as session:
        key, _ = create_api_key(
            session,
            alpha.tenant,
            frozenset({"verdict"}),
            secret=TEST_SECRET.encode(),
            now=datetime.now(UTC),
            customer=alpha.customer,
        )
        # Another customer of the same tenant, with a task of its own.
        other = [
            {
                "id": "other-1",
                "type": "task.completed",
                "time": "2026-11-10T10:00:00Z",
                "customer": OTHER,
                "task": f"{OTHER}-task",
            }
        ]
        assert not ingest_events(session, alpha.tenant.id, other, now=datetime.now(UTC)).rejected
    with live_server.client(key) as client:
        yield client


API = [e for e in ENDPOINTS if not e.path.startswith("/dashboard")]


@pytest.mark.parametrize("endpoint", API, ids=[e.label for e in API])
def test_a_verdict_key_reaches_only_its_customers_verdicts_tasks_and_invoices(
    endpoint: Endpoint, alpha: World, verdict: httpx.Client
) -> None:
    if not authenticated(endpoint):
        pytest.skip("a public route")
    ids = {name: get(alpha) for name, get in OWNED.items()}
    path, query, _ = fill(endpoint, ids)
    key = (endpoint.method, endpoint.path)
    if key == ("POST", "/v1/events"):
        response = verdict.post(path, **VERDICT_BODY)  # type: ignore[arg-type]
    else:
        response = call(verdict, endpoint, path, query)
    assert response.status_code == ALLOWED.get(key, 403), response.text[:500]
    if key in ALLOWED and ("task" in endpoint.path_params or "customer" in endpoint.path_params):
        others = ids | {"task": f"{OTHER}-task", "customer": OTHER}
        other_path, other_query, _ = fill(endpoint, others)
        assert call(verdict, endpoint, other_path, other_query).status_code == 404


class TestEvents:
    def test_only_verdicts(self, verdict: httpx.Client) -> None:
        usage = [{"id": "v-u", "type": "usage", "time": "2026-11-20T10:00:00Z", "customer": "alpha-cust", "task": "alpha-task-1",
                  "provider": "acme-ai", "model": "acme-large", "input_tokens": 1, "output_tokens": 1}]  # fmt: skip
        refused = verdict.post("/v1/events", json=usage)
        assert refused.status_code == 403 and refused.json()["detail"][0]["field"] == "[0].type"

    def test_only_its_customers_tasks(self, verdict: httpx.Client) -> None:
        event = {"id": "v-r", "type": "task.rejected", "time": "2026-11-20T10:00:00Z"}
        assert (
            verdict.post(
                "/v1/events", json=[event | {"customer": OTHER, "task": f"{OTHER}-task"}]
            ).status_code
            == 403
        )
        # Its customer's name on another customer's task: not found, and nothing stored.
        assert (
            verdict.post(
                "/v1/events", json=[event | {"customer": "alpha-cust", "task": f"{OTHER}-task"}]
            ).status_code
            == 404
        )
        assert (
            verdict.post(
                "/v1/events", json=[event | {"customer": "alpha-cust", "task": "nobody-task"}]
            ).status_code
            == 404
        )

    def test_the_event_is_stored_with_the_verdict_key(self, verdict: httpx.Client, alpha: World) -> None:
        assert verdict.post("/v1/events", **VERDICT_BODY).json()["accepted"] == 1  # type: ignore[arg-type]
        events = verdict.get(f"/v1/tasks/{alpha.task}/events").json()["events"]
        assert [e["key"]["name"] for e in events if e["id"] == "verdict-1"] == ["verdict"]


def test_no_dashboard(live_server: LiveServer, verdict: httpx.Client) -> None:
    key = verdict.headers["Authorization"].removeprefix("Bearer ")
    with live_server.client() as browser:
        assert sign_in(browser, key).status_code == 403


def test_a_verdict_key_names_its_customer_and_nothing_else(alpha: World, engine: Engine) -> None:
    make: Callable[..., Any] = create_api_key
    with unit_of_work(engine) as session:
        for scopes, customer in (
            ({"verdict"}, None),
            ({"verdict", "read"}, "alpha-cust"),
            ({"read"}, "alpha-cust"),
        ):
            with pytest.raises(InvalidInput):
                make(
                    session,
                    alpha.tenant,
                    frozenset(scopes),
                    secret=b"x",
                    now=datetime.now(UTC),
                    customer=customer,
                )


def test_the_command_line(run_cli: Callable[..., tuple[int, Any, str]], alpha: World) -> None:
    code, out, _ = run_cli(
        "keys", "create", "--tenant", alpha.tenant.name, "--scopes", "verdict", "--customer", "alpha-cust"
    )
    assert (code, out["scopes"], out["customer"]) == (0, ["verdict"], "alpha-cust")
    code, _, err = run_cli("keys", "create", "--tenant", alpha.tenant.name, "--scopes", "verdict")
    assert code != 0 and "customer" in err
