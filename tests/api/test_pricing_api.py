"""Plans, customers, comparison, quotes and invoices through real HTTP: exact amounts as strings,
scopes, tenant isolation, errors with their field paths."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import Engine, func, select

from api.deps import get_now
from metering.core.db import unit_of_work
from metering.core.periods import parse_month
from metering.core.tables import metadata
from metering.core.tenants import Tenant
from metering.rollup.pipeline import rollup_tenant
from pricing import invoices, service
from pricing.tables import credit_notes
from tests.conftest import LiveServer
from tests.pricing.conftest import JOBS, PRICES, TOKENS, job

NOW = datetime(2026, 11, 15, 12, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def frozen(live_server: LiveServer) -> Iterator[None]:
    """The API's clock (the `now` dependency) at NOW."""
    live_server.app.dependency_overrides[get_now] = lambda: NOW
    yield
    live_server.app.dependency_overrides.clear()


@pytest.fixture
def configured(engine: Engine, tenant: Tenant, api: httpx.Client, frozen: None) -> httpx.Client:
    config = {"prices": PRICES, "plans": [JOBS, TOKENS],
              "customers": [{"id": "acme", "plan": "jobs", "compare_with": ["tokens"]}]}  # fmt: skip
    with unit_of_work(engine) as session:
        service.load_config(session, tenant, yaml.safe_dump(config), now=datetime(2020, 1, 1, tzinfo=UTC))
    events = [
        *job("a", "2026-10-05T10:00:00Z", task_type="support_ticket", input_tokens=1_000_000, output_tokens=100_000),
        *job("b", "2026-10-06T10:00:00Z", input_tokens=500_000),
        *job("c", "2026-10-07T10:00:00Z", outcome="failed", input_tokens=200_000),
    ]
    assert api.post("/v1/events", json=events).json()["accepted"] == 6
    rollup_tenant(engine, tenant, now=NOW)
    return api


@pytest.fixture
def other_key(make_tenant: Callable[..., Tenant], make_key: Callable[..., str]) -> str:
    return make_key(make_tenant("other-co"))


class TestPlans:
    def test_create_version_and_list(self, api: httpx.Client, frozen: None) -> None:
        response = api.post("/v1/plans", json=JOBS)
        assert response.status_code == 201
        assert {k: v for k, v in response.json().items() if k != "plan"} == {
            "id": "jobs", "effective_from": None, "version": 1, "status": "created",
        }  # fmt: skip
        assert api.post("/v1/plans", json=JOBS).json()["status"] == "unchanged"
        changed = api.post("/v1/plans", json=JOBS | {"prices": {"default": "0.75"}}).json()
        assert (changed["version"], changed["effective_from"]) == (2, "2026-11-15")
        [plan] = api.get("/v1/plans").json()
        assert [(v["version"], v["effective_from"], v["terms"]["prices"]["default"]) for v in plan["versions"]] == [
            (1, None, "0.50"), (2, "2026-11-15", "0.75"),
        ]  # fmt: skip
        assert api.get("/v1/plans/jobs").json() == plan
        assert api.get("/v1/plans/nope").status_code == 404

    def test_an_invalid_plan_names_the_field(self, api: httpx.Client) -> None:
        steps = [{"up_to": 10, "price": "1"}, {"up_to": 5, "price": "1"}, {"up_to": None, "price": "1"}]
        response = api.post("/v1/plans", json={"id": "t", "type": "per_job", "tiers": {"mode": "volume", "steps": steps}})
        assert response.status_code == 422
        assert [d["field"] for d in response.json()["detail"]] == ["body.tiers.steps[1].up_to"]
        response = api.post("/v1/plans", json={"id": "t", "type": "per_job", "prices": {"default": 0.5}})
        assert response.json()["detail"][0]["field"] == "body.prices.default"

    @pytest.mark.parametrize("kind", [{"per_job": []}, ["per_job"], 7, None])
    def test_a_plan_type_that_is_not_a_name_is_refused(self, api: httpx.Client, kind: object) -> None:
        response = api.post("/v1/plans", json={"id": "t", "type": kind, "prices": {"default": "1"}})
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == "body.type"

    def test_plans_need_the_admin_scope(self, live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str]) -> None:
        with live_server.client(make_key(tenant, "read")) as reader:
            assert reader.get("/v1/plans").status_code == 403
            assert reader.post("/v1/plans", json=JOBS).status_code == 403


class TestCustomers:
    def test_put_keeps_history_and_get_shows_it(self, configured: httpx.Client) -> None:
        response = configured.put("/v1/customers/acme", json={"plan": "tokens", "compare_with": ["jobs"]})
        assert response.status_code == 200
        body = configured.get("/v1/customers/acme").json()
        assert (body["plan"], body["compare_with"], body["stripe_customer_id"]) == ("tokens", ["jobs"], None)
        assert [(h["plan"], h["effective_from"]) for h in body["history"]] == [("jobs", None), ("tokens", "2026-11-15")]
        assert configured.put("/v1/customers/new", json={"plan": "jobs", "effective_from": "2026-10-01"}).json()["history"][0]["effective_from"] == "2026-10-01"

    def test_errors(self, configured: httpx.Client) -> None:
        response = configured.put("/v1/customers/acme", json={"plan": "nope"})
        assert (response.status_code, response.json()["detail"][0]["field"]) == (422, "body.plan")
        assert configured.put("/v1/customers/acme", json={"plan": "jobs", "extra": 1}).status_code == 422
        assert configured.get("/v1/customers/nobody").status_code == 404

    def test_any_customer_events_can_name_gets_a_plan_and_an_invoice(self, configured: httpx.Client, engine: Engine, tenant: Tenant) -> None:
        """Events allow 256 characters for a customer; plans allowed 200, so such a customer
        could never be billed and its month could not close."""
        longest, too_long = "🙂" + "é" * 255, "🙂" + "é" * 256
        assert configured.post("/v1/events", json=job("long", "2026-10-08T10:00:00Z", customer=longest)).json()["accepted"] == 2
        response = configured.put(f"/v1/customers/{longest}", json={"plan": "jobs"})
        assert (response.status_code, response.json()["id"]) == (200, longest)
        with unit_of_work(engine) as session:  # the config file takes the same names
            service.load_config(session, tenant, yaml.safe_dump({"customers": [{"id": longest, "plan": "tokens"}]}), now=NOW)
        response = configured.put(f"/v1/customers/{too_long}", json={"plan": "jobs"})
        assert (response.status_code, response.json()["detail"][0]["field"]) == (422, "body.id")
        with unit_of_work(engine) as session:
            invoices.close_period(session, tenant, parse_month("2026-10", tenant.timezone), now=NOW)
        [summary] = configured.get(f"/v1/customers/{longest}/invoices").json()
        assert configured.get(f"/v1/invoices/{summary['id']}").json()["customer"] == longest

    def test_another_tenant_sees_nothing(self, configured: httpx.Client, live_server: LiveServer, other_key: str) -> None:
        with live_server.client(other_key) as other:
            assert other.get("/v1/customers/acme").status_code == 404
            assert other.get("/v1/customers/acme/compare", params={"month": "2026-10"}).status_code == 404
            assert other.get("/v1/customers/acme/invoices/upcoming").status_code == 404
            assert other.get("/v1/plans").json() == []


class TestCompare:
    def test_the_month_under_each_plan(self, configured: httpx.Client) -> None:
        body = configured.post("/v1/compare", json={"month": "2026-10"}).json()
        rows = {(r["customer"], r["plan"]): r for r in body["customers"]}
        jobs, tokens = rows[("acme", "jobs")], rows[("acme", "tokens")]
        # jobs: 1.20 + 0.50 + 0.05; tokens: 1,700,000 × 6 + 100,000 × 30 per million = 10.20 + 3.00
        assert (jobs["billed"], jobs["revenue"], tokens["revenue"]) == (True, "1.75", "13.20")
        # cost: 1,700,000 × 3 + 100,000 × 15 per million = 6.60
        assert (jobs["provider_cost"], jobs["margin"], jobs["margin_pct"]) == ("6.600000", "-4.850000", "-2.7714")
        assert (jobs["tasks_completed"], jobs["tasks_failed"], jobs["failed_cost"]) == (2, 1, "0.600000")
        assert jobs["break_even_job_price"] == "6.600000"  # 13.20 / 2
        assert jobs["target_margin_job_price"] == "8.250000"  # 6.60 / (2 × 0.4)
        assert [t["plan"] for t in body["tenant"]] == ["jobs", "tokens"]
        assert {m["model"] for m in body["models"]} == {"acme-large"}
        assert {t["task_type"] for t in body["task_types"]} == {None, "support_ticket"}

    def test_one_customer_under_named_plans(self, configured: httpx.Client) -> None:
        response = configured.get("/v1/customers/acme/compare", params={"month": "2026-10", "plans": "tokens", "target_margin": "0.5"})
        body = response.json()
        assert [(r["plan"], r["billed"], r["revenue"]) for r in body["customers"]] == [("tokens", False, "13.20")]
        assert body["target_margin"] == "0.5"

    def test_customers_without_a_plan_need_named_plans(self, configured: httpx.Client, engine: Engine, tenant: Tenant) -> None:
        configured.post("/v1/events", json=job("x", "2026-10-08T00:00:00Z", customer="stranger"))
        rollup_tenant(engine, tenant, now=NOW)
        response = configured.post("/v1/compare", json={"month": "2026-10"})
        assert response.status_code == 422 and "stranger" in response.text
        body = configured.post("/v1/compare", json={"month": "2026-10", "plans": ["jobs"]}).json()
        assert [(r["customer"], r["billed"], r["revenue"]) for r in body["customers"]] == [
            ("acme", True, "1.75"), ("stranger", False, "0.50"),
        ]  # fmt: skip

    @pytest.mark.parametrize(("body", "field"), [
        ({"month": "2026-13"}, "body.month"), ({"month": "2026-10", "plans": ["nope"]}, "plans[0]"),
        ({"month": "2026-10", "target_margin": 0.6}, "body.target_margin.str"), ({"month": "2026-10", "target_margin": "1"}, "target_margin"),
    ])  # fmt: skip
    def test_bad_requests(self, configured: httpx.Client, body: dict[str, Any], field: str) -> None:
        response = configured.post("/v1/compare", json=body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == field


class TestQuotes:
    def test_a_hypothetical_task_under_every_plan(self, configured: httpx.Client, engine: Engine) -> None:
        before = row_counts(engine)
        body = configured.post("/v1/quotes", json={
            "usage": [{"provider": "acme-ai", "model": "acme-large", "input_tokens": 120_000, "cache_read_tokens": 20_000, "output_tokens": 3_000}],
            "task_type": "support_ticket", "units_before": 5,
        }).json()  # fmt: skip
        quotes = {q["plan"]: q for q in body["quotes"]}
        # cost: 100,000 × 3 + 20,000 × 0.30 + 3,000 × 15 per million = 0.351
        assert quotes["jobs"] == {"plan": "jobs", "version": 1, "effective_from": None, "type": "per_job", "currency": "USD",
                                       "amount": "1.20", "amount_exact": "1.20", "provider_cost": "0.351000", "margin": "0.849000", "reason": None}  # fmt: skip
        # tokens: 100,000 × 6 + 20,000 × 0.60 + 3,000 × 30 per million = 0.702
        assert (quotes["tokens"]["amount_exact"], quotes["tokens"]["amount"]) == ("0.702", "0.70")
        assert body["unpriced_models"] == []
        assert row_counts(engine) == before  # no table gained or lost a row: events, usage, invoices, audit...

    def test_plans_not_in_force_yet_are_quoted_only_when_named(self, configured: httpx.Client) -> None:
        configured.post("/v1/plans", json={"id": "later", "type": "per_job", "prices": {"default": "9"}, "effective_from": "2027-01-01"})
        assert [q["plan"] for q in configured.post("/v1/quotes", json={}).json()["quotes"]] == ["jobs", "tokens"]
        response = configured.post("/v1/quotes", json={"plans": ["later"], "at": "2027-01-01T00:00:00Z"})
        assert [(q["plan"], q["amount"]) for q in response.json()["quotes"]] == [("later", "9.00")]
        assert configured.post("/v1/quotes", json={"plans": ["later"]}).status_code == 422

    def test_unknown_models_are_reported_not_priced_at_zero_silently(self, configured: httpx.Client) -> None:
        body = configured.post("/v1/quotes", json={"usage": [{"provider": "nobody", "model": "secret", "input_tokens": 5}], "plans": ["jobs"]}).json()
        assert body["unpriced_models"] == [{"provider": "nobody", "model": "secret"}]
        [quote] = body["quotes"]
        assert (quote["amount"], quote["provider_cost"], quote["margin"]) == ("0.50", None, None)
        assert quote["reason"].startswith("unpriced usage: no price for nobody/secret")

    def test_exact_amounts_drop_trailing_zeros_and_1h_writes_are_priced(self, configured: httpx.Client) -> None:
        configured_prices = {"provider": "acme-ai", "model": "acme-large", "input_tokens": 1_000_000, "cache_write_tokens": 1_000_000,
                             "cache_write_1h_tokens": 1_000_000}  # fmt: skip
        body = configured.post("/v1/quotes", json={"usage": [configured_prices], "plans": ["tokens"]}).json()
        # acme-large has no 1-hour rate: the writes cost its write rate, 3.75 per million.
        assert body["quotes"][0]["provider_cost"] == "3.750000"
        too_many = configured_prices | {"cache_write_1h_tokens": 1_000_001}
        response = configured.post("/v1/quotes", json={"usage": [too_many]})
        assert (response.status_code, response.json()["detail"][0]["field"]) == (422, "body.usage[0].cache_write_1h_tokens")

    @pytest.mark.parametrize("field", ["task_type", "model"])
    def test_nul_in_task_type_or_model_is_a_422(self, configured: httpx.Client, field: str) -> None:
        body: dict[str, object] = {"task_type": "a\x00b"} if field == "task_type" else {"usage": [{"provider": "a", "model": "b\x00"}]}
        response = configured.post("/v1/quotes", json=body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == ("body.task_type" if field == "task_type" else "body.usage.0.model")

    def test_bad_quotes(self, configured: httpx.Client) -> None:
        assert configured.post("/v1/quotes", json={"usage": [{"provider": "a", "model": "b", "input_tokens": 1.5}]}).status_code == 422
        assert configured.post("/v1/quotes", json={"outcome": "open"}).status_code == 422
        response = configured.post("/v1/quotes", json={"plans": ["nope"]})
        assert (response.status_code, response.json()["detail"][0]["field"]) == (422, "body.plans[0]")
        response = configured.post("/v1/quotes", json={"usage": [{"provider": "a", "model": "b", "input_tokens": 1, "cache_read_tokens": 2}]})
        assert response.json()["detail"][0]["field"] == "body.usage[0]"


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table.name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
            for table in metadata.sorted_tables
        }


class TestInvoices:
    def close_october(self, engine: Engine, tenant: Tenant) -> None:
        with unit_of_work(engine) as session:
            invoices.close_period(session, tenant, parse_month("2026-10", "UTC"), now=NOV_1)

    def test_upcoming_then_closed_then_credited(self, configured: httpx.Client, engine: Engine, tenant: Tenant,
                                                live_server: LiveServer, make_key: Callable[..., str]) -> None:  # fmt: skip
        draft = configured.get("/v1/customers/acme/invoices/upcoming", params={"month": "2026-10"}).json()
        assert (draft["status"], draft["number"], draft["total"]) == ("draft", None, "1.75")
        assert [(line["kind"], line["quantity"], line["unit_price"], line["amount"]) for line in draft["lines"]] == [
            ("jobs", "1", "0.50", "0.50"), ("jobs", "1", "1.20", "1.20"), ("jobs_failed", "1", "0.05", "0.05"),
        ]  # fmt: skip
        self.close_october(engine, tenant)
        assert configured.get("/v1/customers/acme/invoices/upcoming", params={"month": "2026-10"}).status_code == 409
        [summary] = configured.get("/v1/customers/acme/invoices").json()
        assert (summary["number"], summary["status"], summary["total"]) == ("INV-acme-ai-202610-0001", "finalized", "1.75")
        invoice = configured.get(f"/v1/invoices/{summary['id']}").json()
        assert (invoice["total"], invoice["total_minor"], invoice["amount_due"]) == ("1.75", 175, "1.75")

        note = configured.post(f"/v1/invoices/{summary['id']}/credit-notes", json={"amount": "0.25", "reason": "late answer"})
        assert note.status_code == 201
        assert (note.json()["amount"], note.json()["currency"]) == ("0.25", "USD")
        invoice = configured.get(f"/v1/invoices/{summary['id']}").json()
        assert (invoice["total"], invoice["credited"], invoice["amount_due"]) == ("1.75", "0.25", "1.50")
        assert [c["reason"] for c in invoice["credit_notes"]] == ["late answer"]

        assert configured.post(f"/v1/invoices/{summary['id']}/credit-notes", json={"amount": "1.51", "reason": "x"}).status_code == 409
        assert configured.post(f"/v1/invoices/{summary['id']}/credit-notes", json={"amount": 0.5, "reason": "x"}).status_code == 422
        with live_server.client(make_key(tenant, "read")) as reader:
            assert reader.post(f"/v1/invoices/{summary['id']}/credit-notes", json={"amount": "0.10", "reason": "x"}).status_code == 403
            assert reader.get(f"/v1/invoices/{summary['id']}").status_code == 200
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(credit_notes)).scalar_one() == 1

    def test_another_tenant_cannot_see_or_credit(self, configured: httpx.Client, engine: Engine, tenant: Tenant,
                                                 live_server: LiveServer, other_key: str) -> None:  # fmt: skip
        self.close_october(engine, tenant)
        [summary] = configured.get("/v1/customers/acme/invoices").json()
        with live_server.client(other_key) as other:
            assert other.get(f"/v1/invoices/{summary['id']}").status_code == 404
            assert other.post(f"/v1/invoices/{summary['id']}/credit-notes", json={"amount": "0.10", "reason": "x"}).status_code == 404
            assert other.get("/v1/customers/acme/invoices").status_code == 404

    def test_the_default_draft_is_the_current_month(self, configured: httpx.Client) -> None:
        draft = configured.get("/v1/customers/acme/invoices/upcoming").json()
        assert (draft["period"], draft["period_start"], draft["total"], draft["lines"]) == ("2026-11", "2026-11-01T00:00:00Z", "0.00", [])
