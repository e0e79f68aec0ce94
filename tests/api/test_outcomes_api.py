"""Outcome truth through HTTP: the new event types, disputes with Idempotency-Key, the audit log
of each step, another tenant's task never showing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import pytest
import yaml
from sqlalchemy import Engine

from api.deps import get_now
from metering.core.db import unit_of_work
from metering.core.tenants import Tenant
from metering.rollup.pipeline import rollup_tenant
from pricing import service
from tests.conftest import LiveServer
from tests.pricing.conftest import JOBS, PRICES, ended, job

NOW = datetime(2026, 10, 20, 12, tzinfo=UTC)


@pytest.fixture
def configured(
    engine: Engine, tenant: Tenant, api: httpx.Client, live_server: LiveServer
) -> Iterator[httpx.Client]:
    live_server.app.dependency_overrides[get_now] = lambda: NOW
    config = {
        "prices": PRICES,
        "plans": [JOBS],
        "customers": [{"id": "acme", "plan": "jobs"}],
        "outcomes": [{"task_type": "default", "settle_after": "72h", "dispute_window": "30d"}],
    }
    with unit_of_work(engine) as session:
        service.load_config(session, tenant, yaml.safe_dump(config), now=datetime(2020, 1, 1, tzinfo=UTC))
    events = [
        *job("a", "2026-10-05T10:00:00Z"),
        *job("b", "2026-10-06T10:00:00Z"),
        ended("b", "2026-10-06T11:00:00Z", "accepted"),
        *job("c", "2026-10-19T10:00:00Z"),
        ended("c", "2026-10-19T11:00:00Z", "rejected"),
        *job("d", "2026-10-19T10:00:00Z"),
        ended("d", "2026-10-19T11:00:00Z", "reopened"),
    ]
    assert api.post("/v1/events", json=events).json()["accepted"] == len(events)
    rollup_tenant(engine, tenant, now=NOW)
    yield api
    live_server.app.dependency_overrides.clear()


def test_the_new_event_types_set_the_status(configured: httpx.Client) -> None:
    status = {task: configured.get(f"/v1/tasks/{task}").json()["status"] for task in "abcd"}
    assert status == {"a": "completed", "b": "completed", "c": "failed", "d": "open"}


def test_upcoming_invoice_shows_settled_jobs_and_pending_ones_apart(configured: httpx.Client) -> None:
    upcoming = configured.get("/v1/customers/acme/invoices/upcoming").json()
    assert [(line["kind"], line["quantity"]) for line in upcoming["lines"]] == [
        ("jobs", "2"),
        ("jobs_failed", "1"),
    ]
    assert upcoming["pending"] == {"count": 0, "amount": "0.00", "currency": "USD"}
    assert upcoming["outcome_versions"] == [1]


class TestDisputes:
    def test_open_replay_resolve_and_the_audit_log(self, configured: httpx.Client) -> None:
        headers = {"Idempotency-Key": "dispute-a-1"}
        opened = configured.post(
            "/v1/tasks/a/disputes", json={"reason": "ticket reopened by phone"}, headers=headers
        )
        assert opened.status_code == 201, opened.text
        assert {k: opened.json()[k] for k in ("status", "task", "customer")} == {
            "status": "open",
            "task": "a",
            "customer": "acme",
        }
        replay = configured.post(
            "/v1/tasks/a/disputes", json={"reason": "ticket reopened by phone"}, headers=headers
        )
        assert (replay.status_code, replay.json()["id"]) == (200, opened.json()["id"])
        dispute_id = opened.json()["id"]
        resolved = configured.post(
            f"/v1/disputes/{dispute_id}/resolve", json={"accept": True, "note": "agreed"}
        )
        assert resolved.status_code == 200, resolved.text
        assert (resolved.json()["status"], resolved.json()["note"]) == ("accepted", "agreed")
        actions = [(e["action"], e["target"]) for e in configured.get("/v1/audit").json()["entries"]]
        assert actions[:2] == [("dispute.resolve", "task:a"), ("dispute.open", "task:a")]
        upcoming = configured.get("/v1/customers/acme/invoices/upcoming").json()
        assert [(line["kind"], line["quantity"]) for line in upcoming["lines"]] == [
            ("jobs", "1"),
            ("jobs_failed", "1"),
        ]

    def test_errors(self, configured: httpx.Client) -> None:
        missing = configured.post("/v1/tasks/a/disputes", json={})
        assert missing.status_code == 422 and "reason" in missing.text
        assert configured.post("/v1/tasks/nope/disputes", json={"reason": "x"}).status_code == 404
        assert (
            configured.post("/v1/tasks/d/disputes", json={"reason": "x"}).status_code == 409
        )  # reopened: nothing billed
        assert configured.post("/v1/disputes/999/resolve", json={"accept": True}).status_code == 404
        assert configured.post("/v1/disputes/1/resolve", json={"accept": "yes"}).status_code == 422

    def test_another_tenant_never_sees_the_task(
        self,
        configured: httpx.Client,
        live_server: LiveServer,
        make_tenant: Callable[..., Tenant],
        make_key: Callable[..., str],
    ) -> None:
        dispute_id = configured.post("/v1/tasks/a/disputes", json={"reason": "x"}).json()["id"]
        with live_server.client(make_key(make_tenant("other-co"))) as other:
            assert other.post("/v1/tasks/a/disputes", json={"reason": "x"}).status_code == 404
            assert other.post(f"/v1/disputes/{dispute_id}/resolve", json={"accept": True}).status_code == 404
            assert other.get(f"/v1/disputes/{dispute_id}").status_code == 404


class TestEvidence:
    def test_a_tasks_events_in_time_order_with_the_key_that_sent_each(self, configured: httpx.Client) -> None:
        body = configured.get("/v1/tasks/b/events").json()
        assert [e["type"] for e in body["events"]] == ["usage", "task.completed", "task.accepted"]
        assert {e["key"]["prefix"] for e in body["events"]} == {
            configured.headers["Authorization"].split("_")[1]
        }
        assert body["settlement"] == {
            "status": "completed", "completed_at": "2026-10-06T10:00:00Z", "settled_at": "2026-10-06T11:00:00Z",
            "outcome_rule_version": 1,
        }  # fmt: skip
        assert configured.get("/v1/tasks/nope/events").status_code == 404

    def test_the_tasks_behind_an_invoice_line_as_pages_and_as_csv(
        self, configured: httpx.Client, engine: Engine, tenant: Tenant
    ) -> None:
        from metering.core.periods import parse_month
        from pricing import invoices

        with unit_of_work(engine) as session:
            invoices.close_period(
                session, tenant, parse_month("2026-10", "UTC"), now=datetime(2026, 11, 1, tzinfo=UTC)
            )
        [summary] = configured.get("/v1/customers/acme/invoices").json()
        invoice = configured.get(f"/v1/invoices/{summary['id']}").json()
        assert [(line["kind"], line["quantity"]) for line in invoice["lines"]] == [
            ("jobs", "2"),
            ("jobs_failed", "1"),
        ]
        first = configured.get(f"/v1/invoices/{summary['id']}/lines/1/tasks", params={"limit": 1}).json()
        assert (first["total"], first["next_offset"], [t["task"] for t in first["tasks"]]) == (2, 1, ["a"])
        assert first["tasks"][0]["outcome_rule_version"] == 1
        second = configured.get(f"/v1/invoices/{summary['id']}/lines/1/tasks", params={"offset": 1}).json()
        assert ([t["task"] for t in second["tasks"]], second["next_offset"]) == (["b"], None)
        csv = configured.get(f"/v1/invoices/{summary['id']}/lines/2/tasks", headers={"Accept": "text/csv"})
        assert csv.headers["content-type"].startswith("text/csv")
        assert csv.text.splitlines() == [
            "task,customer,task_type,status,billed_at,provider_cost,outcome_rule_version",
            "c,acme,,failed,2026-10-19T11:00:00Z,3.000000,1",
        ]
        assert configured.get(f"/v1/invoices/{summary['id']}/lines/9/tasks").status_code == 404


def test_compare_shows_outcomes_per_task_type_up_to_now(configured: httpx.Client) -> None:
    # At NOW (Oct 20 12:00): all four completed; a settled by its window, b by acceptance; c was
    # rejected, d reopened.
    for answer in (
        configured.post("/v1/compare", json={"month": "2026-10"}),
        configured.get("/v1/customers/acme/compare", params={"month": "2026-10"}),
    ):
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcomes"] == [
            {"task_type": None, "completed": 4, "settled": 2, "pending": 0, "reopened": 1, "rejected": 1,
             "disputed": 0, "billed_jobs": 2, "billed": "1.00", "price_per_settled_job": "0.500000"}
        ]  # fmt: skip


class TestTaskIdsWithSlashes:
    """A task id may hold '/' (and '?', '#', '%'): each route under /v1/tasks/{task} reaches it,
    its '/' sent encoded or not (routes take `{task:path}`; /events and /disputes match first)."""

    def test_each_task_route_reaches_it(self, configured: httpx.Client, engine: Engine, tenant: Tenant) -> None:
        task = "org/repo/pull/7?#%"
        assert configured.post("/v1/events", json=job(task, "2026-10-07T10:00:00Z")).json()["accepted"] == 2
        rollup_tenant(engine, tenant, now=NOW)
        for path in (quote(task, safe=""), quote(task, safe="/")):
            assert configured.get(f"/v1/tasks/{path}").json()["task"] == task
            events = configured.get(f"/v1/tasks/{path}/events")
            assert events.status_code == 200 and [e["type"] for e in events.json()["events"]] == ["usage", "task.completed"]
        opened = configured.post(f"/v1/tasks/{quote(task, safe='/')}/disputes", json={"reason": "wrong repo"})
        assert opened.status_code == 201, opened.text
        assert configured.get(f"/v1/disputes/{opened.json()['id']}").json()["task"] == task
        assert configured.get("/v1/tasks/org/repo").status_code == 404  # a prefix of it is no task
