"""Budgets over HTTP: CRUD (admin), `POST /v1/authorize`, alerts once per threshold and period,
webhooks signed and retried while the receiver fails, the Python client's budget_check and its
overshoot bound under concurrent agents."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import time_machine
from sqlalchemy import Engine
from taskmeter_client import BudgetExceeded, TaskmeterClient

from api.settings import Settings
from api.webhooks import deliver_due
from metering.core.db import unit_of_work
from metering.core.tenants import Tenant
from metering.spend.alerts import add_webhook
from tests.conftest import FROZEN_NOW, LiveServer
from tests.factories import make_event

COST = {
    "measure": "provider_cost",
    "limit": "0.05",
    "period": "month",
    "alerts": ["0.5", "1"],
    "enforce": True,
}


def usage(event_id: str, at: datetime, **fields: Any) -> dict[str, Any]:
    # gpt-4o: 1,000 input + 1,000 output tokens = 0.0025 + 0.01 = 0.0125
    base = {
        "id": event_id,
        "time": at.isoformat().replace("+00:00", "Z"),
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 1000,
    }
    return make_event(**(base | fields))


class TestCrud:
    def test_put_get_list_delete(self, api: httpx.Client, now: datetime) -> None:
        response = api.put("/v1/budgets/acme", json={**COST, "scope": {"customer": "acme"}})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["id"], body["limit"], body["used"], body["remaining"], body["scope"]) == (
            "acme",
            "0.05",
            "0",
            "0.05",
            {"customer": "acme"},
        )
        assert [b["id"] for b in api.get("/v1/budgets").json()] == ["acme"]
        assert api.get("/v1/budgets/acme").json()["alerts"] == ["0.5", "1"]
        assert api.delete("/v1/budgets/acme").status_code == 204
        assert api.get("/v1/budgets/acme").status_code == 404

    def test_invalid_budget_names_the_field(self, api: httpx.Client) -> None:
        response = api.put("/v1/budgets/x", json={"measure": "jobs", "limit": "2.5", "period": "fortnight"})
        assert response.status_code == 422
        assert {d["field"] for d in response.json()["detail"]} == {"body.limit", "body.period"}

    def test_admin_scope_is_required(
        self, live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str]
    ) -> None:
        with live_server.client(make_key(tenant, "ingest")) as client:
            assert client.get("/v1/budgets").status_code == 403
            assert client.post("/v1/authorize", json={"customer": "acme"}).status_code == 200


class TestAuthorize:
    def test_allowed_then_denied_from_the_counters(self, api: httpx.Client, now: datetime) -> None:
        api.put("/v1/budgets/acme", json={**COST, "scope": {"customer": "acme"}})
        api.put("/v1/budgets/tokens", json={"measure": "tokens", "limit": "100000", "period": "day"})
        answer = api.post("/v1/authorize", json={"customer": "acme", "actor": "ben@acme.com"}).json()
        assert answer["allowed"] is True and answer["denied_by"] is None
        assert [(b["id"], b["used"], b["enforced"]) for b in answer["budgets"]] == [
            ("acme", "0", True),
            ("tokens", "0", False),
        ]
        api.post("/v1/events", json=[usage(f"u{i}", now) for i in range(4)])  # 4 x 0.0125 = 0.05
        answer = api.post("/v1/authorize", json={"customer": "acme"}).json()
        assert (answer["allowed"], answer["denied_by"]) == (False, "acme")
        assert answer["budgets"][0]["used"] == "0.05" and answer["budgets"][0]["remaining"] == "0"
        other = api.post("/v1/authorize", json={"customer": "globex"}).json()
        assert other["allowed"] is True and [b["id"] for b in other["budgets"]] == ["tokens"]

    def test_body_validation_names_fields(self, api: httpx.Client) -> None:
        response = api.post("/v1/authorize", json={"actor": "", "team": "x"})
        assert response.status_code == 422
        fields = {d["field"] for d in response.json()["detail"]}
        assert {"body.customer", "body.actor", "body.team"} <= fields


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]
    failures_left: int

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["content-length"]))
        server: Any = self.server
        if server.failures_left > 0:
            server.failures_left -= 1
            self.send_response(503)
        else:
            server.received.append((dict(self.headers), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received, server.failures_left = [], 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class TestAlerts:
    def test_each_threshold_once_even_when_replayed(self, api: httpx.Client, now: datetime) -> None:
        api.put("/v1/budgets/acme", json=COST)
        events = [usage(f"u{i}", now) for i in range(2)]  # 0.025 = half the limit
        api.post("/v1/events", json=events)
        api.post("/v1/events", json=events)  # a replay: duplicates, no alert
        api.post("/v1/events", json=[usage("u9", now, input_tokens=100_000)])  # past the limit
        listed = api.get("/v1/alerts").json()
        assert [(a["type"], a["threshold"], a["used"]) for a in listed] == [
            ("budget.threshold", "1", "0.285"), ("budget.threshold", "0.5", "0.025"),
        ]  # fmt: skip
        assert len({a["id"] for a in listed}) == 2

    def test_forecast_alert_fires_once(self, api: httpx.Client, now: datetime) -> None:
        # Day 18 of a 30-day month: 0.04 spent forecasts 0.04 x 30 / 18 = 0.0667 > 0.05.
        api.put(
            "/v1/budgets/fc",
            json={"measure": "provider_cost", "limit": "0.05", "period": "month", "forecast": True},
        )
        api.post("/v1/events", json=[usage(f"u{i}", now) for i in range(3)])
        api.post("/v1/events", json=[usage("u3", now)])
        listed = api.get("/v1/alerts").json()
        assert [(a["type"], a["budget"]) for a in listed] == [("budget.forecast", "fc")]

    def test_webhook_retried_while_the_receiver_fails_then_delivered_signed(
        self, api: httpx.Client, engine: Engine, tenant: Tenant, receiver: Any, now: datetime, settings: Settings
    ) -> None:
        box = settings.secret_box()
        with unit_of_work(engine) as session:
            _, secret = add_webhook(
                session, tenant.id, f"http://127.0.0.1:{receiver.server_port}/hook", box=box, now=now
            )
        api.put("/v1/budgets/acme", json={**COST, "alerts": ["1"]})
        api.post("/v1/events", json=[usage(f"u{i}", now) for i in range(4)])
        receiver.failures_left = 2
        at = now + timedelta(seconds=5)  # the clock ticks on from `now` while the events are stored
        assert deliver_due(engine, now=at, box=box) == {"delivered": 0, "failed": 1}
        (alert,) = api.get("/v1/alerts").json()
        assert (
            alert["deliveries"][0]["status"] == "failing"
            and alert["deliveries"][0]["last_error"] == "HTTP 503"
        )
        assert deliver_due(engine, now=at, box=box) == {"delivered": 0, "failed": 0}  # not due before its backoff
        at += timedelta(seconds=1)
        assert deliver_due(engine, now=at, box=box)["failed"] == 1
        at += timedelta(seconds=2)
        assert deliver_due(engine, now=at, box=box) == {"delivered": 1, "failed": 0}
        assert deliver_due(engine, now=at + timedelta(hours=1), box=box) == {
            "delivered": 0,
            "failed": 0,
        }  # never again
        ((headers, body),) = receiver.received
        t, v1 = (part.split("=", 1)[1] for part in headers["Taskmeter-Signature"].split(","))
        assert hmac.compare_digest(
            v1, hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        )
        payload = json.loads(body)
        assert (payload["id"], payload["type"], payload["budget"], payload["used"], payload["limit"]) == (
            alert["id"], "budget.threshold", "acme", "0.05", "0.05",
        )  # fmt: skip
        assert payload["period_start"] == "2026-11-01T00:00:00Z"
        (delivery,) = api.get("/v1/alerts").json()[0]["deliveries"]
        assert (delivery["status"], delivery["attempts"]) == ("delivered", 3)


@pytest.fixture
def clock() -> Iterator[datetime]:
    """FROZEN_NOW, ticking, for code that stamps real datetimes (the client): time-machine
    patches the C clock, so datetime.now() still returns plain datetimes (orjson-serializable)."""
    with time_machine.travel(FROZEN_NOW, tick=True):
        yield FROZEN_NOW


class TestClientBudgetCheck:
    def test_off_warn_enforce(self, live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str], clock: datetime,
                              tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
        key = make_key(tenant)
        with live_server.client(key) as api:
            api.put(
                "/v1/budgets/jobs", json={"measure": "jobs", "limit": "1", "period": "day", "enforce": True}
            )
            api.post(
                "/v1/events",
                json=[make_event(id="c", type="task.completed", task="done", time=clock.isoformat())],
            )
        with TaskmeterClient(live_server.url, key, spool_dir=tmp_path) as client:
            ran = []
            with client.task(customer="acme"):  # off: no question asked
                ran.append("off")
            with (
                caplog.at_level(logging.WARNING, logger="taskmeter.client"),
                client.task(customer="acme", budget_check="warn"),
            ):
                ran.append("warn")
            assert "budget 'jobs' has reached its limit" in caplog.text
            with (
                pytest.raises(BudgetExceeded) as denied,
                client.task(customer="acme", budget_check="enforce"),
            ):
                ran.append("enforce")
            assert denied.value.budget == "jobs" and ran == ["off", "warn"]
            with pytest.raises(ValueError, match="budget_check"):
                client.task(customer="acme", budget_check="maybe")


class TestOvershootBound:
    def test_concurrent_agents_overshoot_by_at_most_the_tasks_in_flight(
        self,
        live_server: LiveServer,
        tenant: Tenant,
        make_key: Callable[..., str],
        clock: datetime,
        tmp_path: Any,
    ) -> None:
        """8 agents start tasks until denied; each task is counted when it completes. A task is
        only started while jobs < limit, and at most 8 run at once, so jobs <= limit - 1 + 8."""
        key, limit, agents = make_key(tenant), 20, 8
        with live_server.client(key) as api:
            api.put(
                "/v1/budgets/jobs",
                json={"measure": "jobs", "limit": str(limit), "period": "month", "enforce": True},
            )
        started = []
        lock = threading.Lock()

        def agent(n: int) -> None:
            with TaskmeterClient(
                live_server.url, key, spool_dir=tmp_path / str(n), batch_size=1, flush_interval=0.01
            ) as client:
                for _ in range(100):
                    try:
                        with client.task(customer="acme", budget_check="enforce") as task:
                            task.usage("openai", "gpt-4o", input_tokens=10, output_tokens=10)
                        with lock:
                            started.append(task.id)
                    except BudgetExceeded:
                        return
                    finally:
                        client.flush(10)

        threads = [threading.Thread(target=agent, args=(n,)) for n in range(agents)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        with live_server.client(key) as api:
            (budget,) = api.get("/v1/budgets").json()
        assert int(budget["used"]) == len(started)
        assert limit <= len(started) <= limit - 1 + agents
