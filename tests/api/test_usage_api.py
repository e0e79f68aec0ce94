"""Usage reads over real HTTP: a task, grouped usage, the running month, tenant isolation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import yaml
from sqlalchemy import Engine

from metering.core.db import unit_of_work
from metering.core.tenants import Tenant
from metering.rollup.pipeline import rollup_tenant
from pricing.service import load_config
from tests.conftest import LiveServer
from tests.factories import make_event

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def load(api: httpx.Client, engine: Engine, tenant: Tenant, events: list[dict]) -> None:
    body = api.post("/v1/events", json=events).json()
    assert not body["rejected"], body
    rollup_tenant(engine, tenant, now=NOW)


SCENARIO = [
    make_event(id="s1", type="task.started", task="t1", task_type="support_ticket", time="2026-11-03T09:00:00Z"),
    make_event(id="u1", task="t1", model="gpt-4o", input_tokens=10_000, cache_read_tokens=4_000, output_tokens=1_000, time="2026-11-03T09:01:00Z"),
    make_event(id="u2", task="t1", model="gpt-4o-mini", input_tokens=2_000, output_tokens=500, reasoning_tokens=100, time="2026-11-04T09:02:00Z"),
    make_event(id="c1", type="task.completed", task="t1", time="2026-11-04T09:03:00Z"),
    make_event(id="u3", task="t2", customer="globex", model="gpt-4o", input_tokens=1_000, output_tokens=100, time="2026-11-05T10:00:00Z"),
    make_event(id="u4", task="t3", provider="acme-ai", model="acme-large", input_tokens=5, output_tokens=5, time="2026-11-05T11:00:00Z"),
    make_event(id="old", task="t0", model="gpt-4o", input_tokens=1_000_000, output_tokens=0, time="2026-10-31T23:59:59Z"),
]  # fmt: skip


class TestTask:
    def test_task_usage_cost_and_models(self, api: httpx.Client, engine: Engine, tenant: Tenant) -> None:
        load(api, engine, tenant, SCENARIO)
        body = api.get("/v1/tasks/t1").json()
        assert (body["status"], body["task_type"], body["customer"], body["events"], body["usage_events"]) == (
            "completed", "support_ticket", "acme", 4, 2,
        )  # fmt: skip
        assert (body["started_at"], body["ended_at"]) == ("2026-11-03T09:00:00Z", "2026-11-04T09:03:00Z")
        assert body["billable"] == {"input": 8_000, "cache_read": 4_000, "cache_write": 0, "output": 1_500}
        # gpt-4o: 6000×2.50 + 4000×1.25 + 1000×10 = 0.030000; gpt-4o-mini: 2000×0.15 + 500×0.60 = 0.000600
        assert body["provider_cost"] == "0.030600"
        assert [(m["model"], m["provider_cost"]) for m in body["models"]] == [("gpt-4o", "0.030000"), ("gpt-4o-mini", "0.000600")]

    def test_unknown_task_is_404(self, api: httpx.Client) -> None:
        response = api.get("/v1/tasks/nope")
        assert response.status_code == 404 and response.json()["error"] == "not_found"


class TestUsage:
    def test_group_by_model_over_days(self, api: httpx.Client, engine: Engine, tenant: Tenant) -> None:
        load(api, engine, tenant, SCENARIO)
        body = api.get("/v1/usage", params={"from": "2026-11-01", "to": "2026-12-01", "group_by": "model"}).json()
        assert body["from"] == "2026-11-01" and body["to"] == "2026-12-01"
        rows = {(r["provider"], r["model"]): (r["usage_events"], r["provider_cost"], r["priced"]) for r in body["rows"]}
        assert rows == {
            ("acme-ai", "acme-large"): (1, "0.000000", False),
            ("openai", "gpt-4o"): (2, "0.033500", True),  # t1: 0.030000 + t2: 1000×2.50 + 100×10 = 0.003500
            ("openai", "gpt-4o-mini"): (1, "0.000600", True),
        }
        assert body["total"]["provider_cost"] == "0.034100" and body["total"]["unpriced_events"] == 1

    def test_group_by_day_and_task_type_for_a_customer(self, api: httpx.Client, engine: Engine, tenant: Tenant) -> None:
        load(api, engine, tenant, SCENARIO)
        by_day = api.get("/v1/usage", params={"customer": "acme", "from": "2026-10-01", "to": "2026-12-01", "group_by": "day"}).json()
        assert [(r["day"], r["usage_events"]) for r in by_day["rows"]] == [("2026-10-31", 1), ("2026-11-03", 1), ("2026-11-04", 1), ("2026-11-05", 1)]
        by_type = api.get("/v1/usage", params={"customer": "acme", "from": "2026-11-01", "to": "2026-12-01", "group_by": "task_type"}).json()
        assert [(r["task_type"], r["usage_events"]) for r in by_type["rows"]] == [(None, 1), ("support_ticket", 2)]

    def test_bad_parameters_name_the_field(self, api: httpx.Client) -> None:
        response = api.get("/v1/usage", params={"from": "2026-11-31", "group_by": "model"})
        assert response.status_code == 422 and response.json()["detail"][0]["field"] == "query.from"
        response = api.get("/v1/usage", params={"group_by": "planet"})
        assert response.status_code == 422 and response.json()["detail"][0]["field"] == "query.group_by"
        response = api.get("/v1/usage", params={"from": "2026-11-05", "to": "2026-11-01"})
        assert response.status_code == 422 and response.json()["detail"][0]["field"] == "query.to"


class TestCurrentMonth:
    def test_running_month_in_the_tenant_time_zone(self, api: httpx.Client, engine: Engine, tenant: Tenant) -> None:
        load(api, engine, tenant, SCENARIO)
        body = api.get("/v1/customers/acme/usage/current", params={"at": "2026-11-20T00:00:00Z"}).json()
        assert body["month"] == "2026-11" and body["period_start"] == "2026-11-01T00:00:00Z"
        assert body["total"]["usage_events"] == 3  # "old" was in October
        # open counts every task still open, whenever it began (t0 in October, t3 now)
        assert body["tasks"] == {"completed": 1, "failed": 0, "cancelled": 0, "open": 2}

    def test_quiet_month_of_a_known_customer_is_zero_and_a_stranger_is_404(self, api: httpx.Client, engine: Engine, tenant: Tenant) -> None:
        october = [
            make_event(id="i-s", type="task.started", task="i1", customer="initech", time="2026-10-10T09:00:00Z"),
            make_event(id="i-u", task="i1", customer="initech", model="gpt-4o", input_tokens=1_000, output_tokens=10, time="2026-10-10T09:01:00Z"),
            make_event(id="i-c", type="task.completed", task="i1", customer="initech", time="2026-10-10T09:02:00Z"),
        ]  # fmt: skip
        load(api, engine, tenant, october)
        body = api.get("/v1/customers/initech/usage/current", params={"at": "2026-12-10T00:00:00Z"}).json()
        assert body["month"] == "2026-12" and body["by_model"] == []
        assert body["total"]["usage_events"] == 0 and body["total"]["provider_cost"] == "0.000000"
        assert body["tasks"] == {"completed": 0, "failed": 0, "cancelled": 0, "open": 0}
        october_body = api.get("/v1/customers/initech/usage/current", params={"at": "2026-10-20T00:00:00Z"}).json()
        assert october_body["tasks"]["completed"] == 1 and october_body["total"]["provider_cost"] == "0.002600"  # 1000×2.50 + 10×10
        response = api.get("/v1/customers/nobody/usage/current", params={"at": "2026-12-10T00:00:00Z"})
        assert response.status_code == 404 and response.json()["error"] == "not_found"

    def test_a_customer_with_a_plan_and_no_usage_yet_is_known(self, api: httpx.Client, engine: Engine, tenant: Tenant) -> None:
        """GET /v1/customers/{c} answered 200 while its usage answered 404 "no customer"."""
        with unit_of_work(engine) as session:
            load_config(session, tenant, yaml.safe_dump({"plans": [{"id": "jobs", "type": "per_job", "prices": {"default": "1"}}],
                                                         "customers": [{"id": "newco", "plan": "jobs"}]}), now=NOW)  # fmt: skip
        assert api.get("/v1/customers/newco").status_code == 200
        current = api.get("/v1/customers/newco/usage/current", params={"at": "2026-11-10T00:00:00Z"})
        assert (current.status_code, current.json()["total"]["usage_events"]) == (200, 0)
        usage = api.get("/v1/usage", params={"customer": "newco"})
        assert (usage.status_code, usage.json()["rows"]) == (200, [])
        assert api.get("/v1/usage", params={"customer": "nobody"}).status_code == 404

    def test_total_is_the_sum_of_the_rows_in_every_grouping(self, api: httpx.Client, engine: Engine, tenant: Tenant) -> None:
        load(api, engine, tenant, SCENARIO)
        for group_by in ("model", "task_type", "day", "customer"):
            body = api.get("/v1/usage", params={"from": "2026-10-01", "to": "2026-12-01", "group_by": group_by}).json()
            for measure in ("usage_events", "input_tokens", "output_tokens", "cache_read_tokens", "unpriced_events"):
                assert body["total"][measure] == sum(row[measure] for row in body["rows"]), (group_by, measure)
            assert Decimal(body["total"]["provider_cost"]) == sum(Decimal(row["provider_cost"]) for row in body["rows"]) == Decimal("2.534100")  # "old": 1,000,000×2.50 + November 0.034100

    def test_other_tenants_customer_is_404(self, live_server: LiveServer, make_tenant: Callable[..., Tenant], make_key: Callable[..., str], engine: Engine) -> None:
        a, b = make_tenant("tenant-a"), make_tenant("tenant-b")
        with live_server.client(make_key(a)) as client_a, live_server.client(make_key(b)) as client_b:
            load(client_a, engine, a, SCENARIO)
            assert client_a.get("/v1/customers/acme/usage/current").status_code == 200
            assert client_b.get("/v1/customers/acme/usage/current").status_code == 404
            assert client_b.get("/v1/tasks/t1").status_code == 404
            assert client_b.get("/v1/usage", params={"customer": "acme"}).status_code == 404
            assert client_b.get("/v1/usage").json()["rows"] == []


def test_unpriced_models_are_listed(api: httpx.Client, engine: Engine, tenant: Tenant) -> None:
    load(api, engine, tenant, SCENARIO)
    assert api.get("/v1/models/unpriced").json() == [{"provider": "acme-ai", "model": "acme-large", "events": 1, "tokens": 10}]
