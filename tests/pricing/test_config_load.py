"""`config load` and the stored plans: all or nothing, versions only when terms change, paths."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from metering.core.db import unit_of_work
from metering.core.errors import InvalidInput, NotFound
from metering.core.tables import tenant_prices
from pricing import repository, service
from pricing.tables import customer_plans, customers, plan_versions, plans
from tests.pricing.conftest import JOBS, PRICES, RATES, TOKENS, Billing, at

NOW = at("2026-11-15T23:30:00Z")  # November 16 in Kolkata


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            t.name: connection.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (tenant_prices, plans, plan_versions, customers, customer_plans)
        }


def stored(billing: Billing) -> repository.StoredPlans:
    with unit_of_work(billing.engine) as session:
        return repository.stored_plans(session, billing.tenant.id)


class TestAllOrNothing:
    def test_an_error_names_its_path_and_applies_nothing(self, billing: Billing, engine: Engine) -> None:
        before = counts(engine)
        bad = {
            "prices": [{"provider": "acme-ai", "model": "acme-large", "input": "3.0000000001", "output": "1"}],
            "plans": [JOBS | {"prices": {"default": "0.90"}},
                      {"id": "tiered", "type": "per_job", "tiers": {"mode": "graduated", "steps": [
                          {"up_to": 10, "price": "1"}, {"up_to": 5, "price": "1"}, {"up_to": None, "price": "1"}]}}],
            "customers": [{"id": "new", "plan": "nope"}],
        }  # fmt: skip
        with pytest.raises(InvalidInput) as caught:
            billing.config(bad, now=NOW)
        fields = [d["field"] for d in caught.value.detail]
        assert fields == ["plans[1].tiers.steps[1].up_to", "customers[0].plan"]
        with pytest.raises(InvalidInput) as caught:
            billing.config(bad | {"plans": [JOBS], "customers": []}, now=NOW)
        assert [d["field"] for d in caught.value.detail] == ["prices[0]"]
        assert "9 decimals" in caught.value.detail[0]["message"]
        assert counts(engine) == before

    def test_a_new_version_must_keep_type_basis_and_currency(self, billing: Billing) -> None:
        changed = [JOBS | {"type": "per_token", "prices": None, "markup": "0.1", "failed": None}]
        with pytest.raises(InvalidInput) as caught:
            billing.config({"plans": [{k: v for k, v in changed[0].items() if v is not None}]}, now=NOW)
        assert caught.value.detail == [{"field": "plans[0].type", "message": "versions of 'jobs' must keep its type (per_job)"}]
        with pytest.raises(InvalidInput) as caught:
            billing.config({"plans": [TOKENS | {"currency": "EUR"}]}, now=NOW)
        assert caught.value.detail[0]["field"] == "plans[0].currency"

    def test_invalid_yaml_and_unknown_sections(self, billing: Billing) -> None:
        with pytest.raises(InvalidInput, match="not valid YAML"):
            billing.config("plans: [", now=NOW)
        with pytest.raises(InvalidInput) as caught:
            billing.config({"plan": []}, now=NOW)
        assert caught.value.detail == [{"field": "plan", "message": "unknown section"}]


class TestVersions:
    def test_loading_the_same_file_twice_changes_nothing(self, billing: Billing, engine: Engine) -> None:
        before = counts(engine)
        summary = billing.config({"prices": PRICES, "plans": [JOBS, TOKENS], "customers": [{"id": "acme", "plan": "jobs", "compare_with": ["tokens"]}]}, now=NOW)
        assert [(p["id"], p["version"], p["status"]) for p in summary["plans"]] == [("jobs", 1, "unchanged"), ("tokens", 1, "unchanged")]
        assert summary["prices"] == {"added": 0, "changed": 0, "removed": 0, "unchanged": 1}
        assert summary["customers"] == [{"id": "acme", "plan": "jobs", "status": "unchanged"}]
        assert counts(engine) == before

    def test_a_changed_plan_takes_effect_today_in_the_tenant_time_zone(self, make_billing: Any) -> None:
        billing = make_billing(timezone="Asia/Kolkata")
        summary = billing.config({"plans": [JOBS | {"prices": {"default": "0.60"}}]}, now=NOW)
        assert summary["plans"] == [{"id": "jobs", "effective_from": date(2026, 11, 16), "version": 2, "status": "created"}]
        book = stored(billing).book
        assert book.at("jobs", date(2026, 11, 15)).prices["default"] == Decimal("0.50")  # type: ignore[union-attr]
        assert book.at("jobs", date(2026, 11, 16)).prices["default"] == Decimal("0.60")  # type: ignore[union-attr]
        # 0.60 and 0.600 are the same terms: no third version
        assert billing.config({"plans": [JOBS | {"prices": {"default": "0.600"}}]}, now=NOW)["plans"][0]["status"] == "unchanged"

    def test_a_top_level_effective_from_dates_the_changed_plans(self, billing: Billing) -> None:
        summary = billing.config({"effective_from": "2026-12-01", "plans": [JOBS, TOKENS | {"rates": RATES | {"input": "5"}}]}, now=NOW)
        assert [(p["id"], p["effective_from"], p["status"]) for p in summary["plans"]] == [
            ("jobs", None, "unchanged"), ("tokens", date(2026, 12, 1), "created"),
        ]  # fmt: skip

    def test_a_file_can_give_the_whole_history(self, billing: Billing) -> None:
        v2 = JOBS | {"prices": {"default": "0.70"}, "effective_from": "2026-10-16"}
        config = {"plans": [JOBS, v2]}
        assert [p["status"] for p in billing.config(config, now=NOW)["plans"]] == ["unchanged", "created"]
        assert [p["status"] for p in billing.config(config, now=NOW)["plans"]] == ["unchanged", "unchanged"]

    def test_the_same_start_twice_supersedes(self, billing: Billing) -> None:
        billing.config({"plans": [JOBS | {"prices": {"default": "0.60"}}]}, now=NOW)
        billing.config({"plans": [JOBS | {"prices": {"default": "0.65"}}]}, now=NOW)
        with unit_of_work(billing.engine) as session:
            [jobs] = [p for p in service.describe_plans(session, billing.tenant) if p["id"] == "jobs"]
        assert [(v["version"], v["effective_from"], v["superseded"]) for v in jobs["versions"]] == [
            (1, None, False), (2, date(2026, 11, 15), True), (3, date(2026, 11, 15), False),
        ]  # fmt: skip
        assert jobs["versions"][2]["terms"] == {"prices": {"default": "0.65"}, "failed": "0.05"}

    def test_customers_may_name_stored_plans(self, billing: Billing) -> None:
        summary = billing.config({"customers": [{"id": "globex", "plan": "tokens"}]}, now=NOW)
        assert summary == {"tenant": "acme-ai", "plans": [], "customers": [{"id": "globex", "plan": "tokens", "status": "created"}]}


class TestPrices:
    def test_the_prices_section_replaces_the_tenants_prices(self, billing: Billing, engine: Engine) -> None:
        new = [{"provider": "acme-ai", "model": "acme-small", "input": "1", "output": "2"},
               PRICES[0] | {"output": "16.00"}]  # fmt: skip
        assert billing.config({"prices": new}, now=NOW)["prices"] == {"added": 1, "changed": 1, "removed": 0, "unchanged": 0}
        assert billing.config({"prices": new[:1]}, now=NOW)["prices"] == {"added": 0, "changed": 0, "removed": 1, "unchanged": 1}
        assert "prices" not in billing.config({"plans": []}, now=NOW)  # no section: prices untouched
        with engine.connect() as connection:
            assert connection.execute(select(tenant_prices.c.model, tenant_prices.c.input)).all() == [("acme-small", "1")]


class TestCustomers:
    def test_assignments_keep_their_history(self, billing: Billing) -> None:
        with unit_of_work(billing.engine) as session:
            service.assign_plan(session, billing.tenant, "acme", "tokens", ["jobs"], now=NOW)
            view = service.assign_plan(session, billing.tenant, "acme", "tokens", ["jobs"], now=NOW)  # no change
        assert (view["plan"], view["compare_with"]) == ("tokens", ["jobs"])
        assert [(h["plan"], h["effective_from"]) for h in view["history"]] == [("jobs", None), ("tokens", date(2026, 11, 15))]

    def test_unknown_plans_and_customers(self, billing: Billing) -> None:
        with unit_of_work(billing.engine) as session, pytest.raises(InvalidInput) as caught:
            service.assign_plan(session, billing.tenant, "acme", "nope", ["jobs", "gone"], now=NOW)
        assert [d["field"] for d in caught.value.detail] == ["body.plan", "body.compare_with[1]"]
        with unit_of_work(billing.engine) as session, pytest.raises(NotFound):
            service.describe_customer(session, billing.tenant, "nobody")
