"""Tenant isolation, generated from the app's route table: every route (API and dashboard) is
called with tenant A's credentials and tenant B's ids.

- A route whose path or query names something a tenant owns (customer, task, event, plan,
  invoice) answers 404 for B's id, exactly as for an id that exists nowhere: B's data is never
  shown, nor its existence.
- Every other route (lists, reports of a month, writes) answers with A's data only: no response
  mentions anything of B's (all of B's names contain "bravo").
- No call changes any of B's rows, in any table that has a `tenant_id`.

A route added later is covered without editing this file, unless it has a path parameter, a
required query parameter or a request body this file does not know: then its test fails and
says what to add.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from metering.core.tables import metadata
from tests.conftest import LiveServer
from tests.security.conftest import CLOSED_MONTH, World, flat_routes, sign_in, throwaway_app

# Parameters naming something a tenant owns: how to name B's (and something nobody has).
OWNED = {
    "customer": lambda w: w.customer,
    "task": lambda w: w.task,
    "event_id": lambda w: w.event_id,
    "plan_id": lambda w: w.plan,
    "invoice_id": lambda w: str(w.invoice_id),
    "quarantine_id": lambda w: str(w.quarantine_id),
    "budget_id": lambda w: w.budget,
    "dispute_id": lambda w: str(w.dispute_id),
}
NOBODYS = {"customer": "nobody-cust", "task": "nobody-task", "event_id": "nobody-evt", "plan_id": "nobody-plan",
           "invoice_id": "987654", "quarantine_id": "987654", "budget_id": "nobody-budget", "dispute_id": "987654"}  # fmt: skip
# Parameters no tenant owns (the answer is then the caller's own data), per route or everywhere.
NOT_OWNED: dict[str, str] = {"month": CLOSED_MONTH, "name": "customers", "line_no": "1"}
NOT_OWNED_BY_ROUTE = {("/dashboard/static/{name}", "name"): "dashboard.css"}

# Request bodies of the routes that take one, as tenant A would send them (`None`: no body).
BODIES: dict[tuple[str, str], dict[str, Any] | None] = {
    ("POST", "/v1/events"): {"json": [{"id": "alpha-evt-new", "type": "usage", "time": "2026-11-20T10:00:00Z",
                                       "customer": "alpha-cust", "task": "alpha-task-9", "provider": "acme-ai",
                                       "model": "acme-large", "input_tokens": 10, "output_tokens": 1}]},  # fmt: skip
    ("POST", "/v1/otlp/v1/traces"): {"json": {"resourceSpans": []}},
    ("POST", "/v1/plans"): {"json": {"id": "alpha-new", "type": "per_job", "prices": {"default": "1.00"}}},
    ("PUT", "/v1/customers/{customer}"): {"json": {"plan": "bravo-jobs"}},  # B's plan: A has none such
    ("POST", "/v1/compare"): {"json": {"month": CLOSED_MONTH}},
    ("POST", "/v1/quotes"): {"json": {"usage": [{"provider": "acme-ai", "model": "acme-large", "input_tokens": 1000}]}},
    ("POST", "/v1/invoices/{invoice_id}/credit-notes"): {"json": {"amount": "0.01", "reason": "isolation"}},
    ("POST", "/v1/stripe/webhook"): {"json": {"id": "evt_1", "type": "invoice.paid"}},
    ("POST", "/dashboard/sign-in"): {"data": {"key": "tm_000000000000_xxxxxxxxxxxxxxxxxxxxxxxx", "csrf": "x"}},
    ("POST", "/dashboard/sign-out"): {"data": {"csrf": "x"}},
    ("POST", "/v1/quarantine/{quarantine_id}/release"): None,
    ("POST", "/v1/quarantine/{quarantine_id}/drop"): None,
    ("POST", "/v1/authorize"): {"json": {"customer": "alpha-cust"}},
    # A's PUT under B's budget id makes A a budget of that name (ids are per tenant): 200 like any new id.
    ("PUT", "/v1/budgets/{budget_id}"): {"json": {"measure": "tokens", "limit": "10", "period": "day"}},
    ("DELETE", "/v1/budgets/{budget_id}"): None,
    ("POST", "/v1/tasks/{task}/disputes"): {"json": {"reason": "isolation"}},
    ("POST", "/v1/disputes/{dispute_id}/resolve"): {"json": {"accept": False, "note": "isolation"}},
}
# What a route answers for B's id when it is not 404.
EXPECTED = {
    ("PUT", "/v1/customers/{customer}"): 422,  # the body names B's plan, unknown to A
    ("PUT", "/v1/budgets/{budget_id}"): 200,  # A's own new budget (B's is untouched: tenant_rows checks)
}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    path_params: tuple[str, ...]
    query_params: tuple[tuple[str, bool], ...]  # (name, required)

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


def endpoints() -> list[Endpoint]:
    found = []
    for route in flat_routes(throwaway_app()):
        if not route.methods:
            raise AssertionError(f"{route.path}: the isolation test only knows HTTP routes")
        names = tuple(re.findall(r"{(\w+)(?::\w+)?}", route.path))
        query: tuple[tuple[str, bool], ...] = ()
        if route.dependant is not None:
            query = tuple((p.alias, p.field_info.is_required()) for p in route.dependant.query_params)
        for method in sorted(route.methods - {"HEAD"}):
            found.append(Endpoint(method, route.path, names, query))
    return found


ENDPOINTS = endpoints()


@pytest.fixture
def server(live_server: LiveServer, alpha: World, bravo: World) -> LiveServer:
    return live_server


@pytest.fixture
def alpha_api(server: LiveServer, alpha: World) -> Iterator[httpx.Client]:
    with server.client(alpha.key) as client:
        yield client


@pytest.fixture
def alpha_browser(server: LiveServer, alpha: World) -> Iterator[httpx.Client]:
    """A browser signed in to the dashboard with A's key."""
    with server.client() as browser:
        signed = sign_in(browser, alpha.key)
        assert signed.status_code == 303 and "tm_dashboard" in browser.cookies, signed.text
        yield browser


def tenant_rows(engine: Engine, tenant_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tenant in every table that has a tenant_id."""
    with engine.connect() as connection:
        return {
            table.name: sorted(tuple(map(str, row)) for row in connection.execute(select(table).where(table.c.tenant_id == tenant_id)))
            for table in metadata.sorted_tables
            if "tenant_id" in table.c
        }  # fmt: skip


def fill(endpoint: Endpoint, ids: dict[str, str]) -> tuple[str, dict[str, str], bool]:
    """The URL and query of a call naming `ids`, and whether it names a tenant-owned thing."""
    path, owned = endpoint.path, False
    for name in endpoint.path_params:
        if name in OWNED:
            value, owned = ids[name], True
        elif (endpoint.path, name) in NOT_OWNED_BY_ROUTE:
            value = NOT_OWNED_BY_ROUTE[(endpoint.path, name)]
        elif name in NOT_OWNED:
            value = NOT_OWNED[name]
        else:
            pytest.fail(
                f"{endpoint.label}: the isolation test does not know the path parameter {{{name}}}. Add to "
                f"tests/security/test_isolation.py how to name tenant B's {name} (OWNED and NOBODYS), or, if no "
                "tenant owns it, a value in NOT_OWNED."
            )
        path = path.replace(f"{{{name}}}", value)
    query = {}
    for name, required in endpoint.query_params:
        if name in OWNED:
            query[name], owned = ids[name], True
        elif required and name in NOT_OWNED:
            query[name] = NOT_OWNED[name]
        elif required:
            pytest.fail(f"{endpoint.label}: the isolation test does not know the required query parameter {name!r}; "
                        "add it to OWNED or NOT_OWNED in tests/security/test_isolation.py")  # fmt: skip
    return path, query, owned


def call(client: httpx.Client, endpoint: Endpoint, path: str, query: dict[str, str]) -> httpx.Response:
    key = (endpoint.method, endpoint.path)
    if endpoint.method != "GET" and key not in BODIES:
        pytest.fail(f"{endpoint.label}: the isolation test has no request body for this route; add what tenant A "
                    "would send to BODIES in tests/security/test_isolation.py (None for no body)")  # fmt: skip
    return client.request(endpoint.method, path, params=query, **(BODIES.get(key) or {}))


def echoed(endpoint: Endpoint, path: str, query: dict[str, str], ids: dict[str, str]) -> list[str]:
    """The ids the request itself names (an error message may quote them back)."""
    sent = path + repr(query) + repr(BODIES.get((endpoint.method, endpoint.path)))
    return sorted((v for v in ids.values() if v in sent), key=len, reverse=True)


def without(text: str, values: list[str]) -> str:
    """The text without these ids (as whole words: invoice id 2 is not the 2 of `&#x27;`)."""
    for value in values:
        text = re.sub(rf"(?<![\w-]){re.escape(value)}(?![\w-])", "", text)
    return text


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.label for e in ENDPOINTS])
def test_tenant_a_never_reaches_tenant_b(
    endpoint: Endpoint, engine: Engine, alpha: World, bravo: World, alpha_api: httpx.Client, alpha_browser: httpx.Client
) -> None:
    client = alpha_browser if endpoint.path.startswith("/dashboard") else alpha_api
    b_ids = {name: get(bravo) for name, get in OWNED.items()}
    before = tenant_rows(engine, bravo.tenant.id)

    path, query, owned = fill(endpoint, b_ids)
    response = call(client, endpoint, path, query)
    named = echoed(endpoint, path, query, b_ids)
    assert "bravo" not in without(response.text, named), f"{endpoint.label} showed tenant B's data:\n{response.text[:2000]}"
    if owned:
        assert response.status_code == EXPECTED.get((endpoint.method, endpoint.path), 404), response.text[:500]
        # The same answer as for an id nobody has: B's id does not even reveal that it exists.
        nobody_path, nobody_query, _ = fill(endpoint, NOBODYS)
        nobody = call(client, endpoint, nobody_path, nobody_query)
        assert nobody.status_code == response.status_code
        nobodys = echoed(endpoint, nobody_path, nobody_query, NOBODYS)
        mask = re.compile(r"tm_csrf=[^;]*|name=\"csrf\" value=\"[^\"]*\"|\d{4}-\d\d-\d\dT[\d:.]+Z?")
        both = named + nobodys
        assert mask.sub("", without(nobody.text, both)) == mask.sub("", without(response.text, both))
    else:
        assert response.status_code < 500, response.text[:500]
    assert tenant_rows(engine, bravo.tenant.id) == before, f"{endpoint.label} changed tenant B's rows"


class TestListsAndWrites:
    """What the generated test cannot see: lists that are empty for A, and A's writes under B's names."""

    def test_lists_hold_only_the_callers_rows(self, alpha: World, bravo: World, alpha_api: httpx.Client) -> None:
        for path in ("/v1/plans", f"/v1/customers/{alpha.customer}/invoices",
                     "/v1/usage?group_by=customer&from=2026-10-01&to=2026-12-01",  # the world's months, not the clock's
                     "/v1/stripe/status", f"/v1/reports/{CLOSED_MONTH}/tasks.csv"):  # fmt: skip
            response = alpha_api.get(path)
            assert response.status_code == 200, (path, response.text)
            assert "alpha" in response.text and "bravo" not in response.text, (path, response.text)

    def test_a_customer_named_like_bs_is_as_own_and_leaves_bs_alone(
        self, engine: Engine, alpha: World, bravo: World, alpha_api: httpx.Client
    ) -> None:
        before = tenant_rows(engine, bravo.tenant.id)
        response = alpha_api.put(f"/v1/customers/{bravo.customer}", json={"plan": alpha.plan})
        assert response.status_code == 200, response.text
        assert [h["plan"] for h in response.json()["history"]] == [alpha.plan]  # a new customer of A's
        assert tenant_rows(engine, bravo.tenant.id) == before

    def test_an_event_id_of_bs_is_a_new_event_of_as(self, alpha: World, bravo: World, alpha_api: httpx.Client) -> None:
        event = {"id": bravo.event_id, "type": "task.started", "time": "2026-11-20T10:00:00Z",
                 "customer": alpha.customer, "task": "alpha-task-7"}  # fmt: skip
        assert alpha_api.post("/v1/events", json=[event]).json()["accepted"] == 1  # not a duplicate of B's
        assert alpha_api.get(f"/v1/events/{bravo.event_id}").json()["customer"] == alpha.customer
