"""The audit log of admin actions: who (key prefix or CLI user), what, when, on what; written in
the action's own transaction, readable by admin keys of the tenant only (`GET /v1/audit`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from api.deps import AdminScope, get_audit, get_now
from metering.core.tenants import Tenant, key_prefix
from tests.conftest import LiveServer
from tests.security.conftest import PRICES, World, flat_routes, throwaway_app

NOW = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
Run = Callable[..., tuple[int, Any, str]]


@pytest.fixture
def admin(live_server: LiveServer, alpha: World) -> Iterator[httpx.Client]:
    live_server.app.dependency_overrides[get_now] = lambda: NOW
    client = live_server.client(alpha.key)
    yield client
    client.close()
    live_server.app.dependency_overrides.clear()


def entries(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/audit", params=params)
    assert response.status_code == 200, response.text
    return response.json()["entries"]


class TestApiActions:
    def test_each_admin_write_is_recorded_with_who_what_when_and_target(self, admin: httpx.Client, alpha: World) -> None:
        assert admin.post("/v1/plans", json={"id": "flat", "type": "per_job", "prices": {"default": "2.00"}}).status_code == 201
        assert admin.put(f"/v1/customers/{alpha.customer}", json={"plan": "flat"}).status_code == 200
        note = admin.post(f"/v1/invoices/{alpha.invoice_id}/credit-notes", json={"amount": "0.05", "reason": "late"}).json()
        found = entries(admin)
        assert [(e["action"], e["target"]) for e in found] == [
            ("credit_note.create", f"invoice:{alpha.invoice_id}"),
            ("customer.assign", f"customer:{alpha.customer}"),
            ("plan.save", "plan:flat"),
        ]  # fmt: skip
        for entry in found:
            assert entry["actor"] == f"key:{key_prefix(alpha.key)}" and entry["key_id"] == alpha.key_id
            assert entry["at"] == "2026-11-20T09:30:00Z"
        assert found[0]["detail"] == {"credit_note": note["id"], "amount": "0.05", "currency": "USD", "reason": "late"}
        assert found[1]["detail"] == {"plan": "flat", "compare_with": [], "effective_from": None}
        assert found[2]["detail"] == {"version": 1, "status": "created"}

    def test_a_refused_action_leaves_no_entry(self, admin: httpx.Client, alpha: World) -> None:
        assert admin.put(f"/v1/customers/{alpha.customer}", json={"plan": "no-such-plan"}).status_code == 422
        assert admin.post(f"/v1/invoices/{alpha.invoice_id}/credit-notes", json={"amount": "999", "reason": "x"}).status_code == 409
        assert admin.post("/v1/invoices/424242/credit-notes", json={"amount": "1", "reason": "x"}).status_code == 404
        assert entries(admin) == []

    def test_reads_are_not_recorded(self, admin: httpx.Client, alpha: World) -> None:
        admin.get("/v1/plans")
        admin.get(f"/v1/plans/{alpha.plan}")
        assert entries(admin) == []

    def test_pages_newest_first(self, admin: httpx.Client) -> None:
        for n in range(5):
            admin.post("/v1/plans", json={"id": f"p{n}", "type": "per_job", "prices": {"default": "1.00"}})
        first = admin.get("/v1/audit", params={"limit": 2}).json()
        assert [e["target"] for e in first["entries"]] == ["plan:p4", "plan:p3"]
        second = admin.get("/v1/audit", params={"limit": 2, "before": first["next_before"]}).json()
        assert [e["target"] for e in second["entries"]] == ["plan:p2", "plan:p1"]
        last = admin.get("/v1/audit", params={"limit": 2, "before": second["next_before"]}).json()
        assert [e["target"] for e in last["entries"]] == ["plan:p0"] and last["next_before"] is None
        assert admin.get("/v1/audit", params={"limit": 0}).status_code == 422
        assert admin.get("/v1/audit", params={"limit": 1001}).status_code == 422


class TestWhoMayRead:
    def test_only_admin_keys_of_the_tenant(
        self, live_server: LiveServer, admin: httpx.Client, alpha: World, bravo: World, make_key: Callable[..., str]
    ) -> None:
        admin.post("/v1/plans", json={"id": "alpha-secret-plan", "type": "per_job", "prices": {"default": "1.00"}})
        with live_server.client(make_key(alpha.tenant, "ingest,read")) as reader:
            assert reader.get("/v1/audit").status_code == 403
        with live_server.client(bravo.key) as other:
            response = other.get("/v1/audit")
        assert response.status_code == 200 and response.json()["entries"] == []
        assert "alpha" not in response.text
        with live_server.client() as anonymous:
            assert anonymous.get("/v1/audit").status_code == 401


class TestCommandLine:
    def test_tenant_key_and_config_commands_are_recorded(
        self, run_cli: Run, live_server: LiveServer, tmp_path: Path
    ) -> None:
        run_cli("tenants", "create", "cli-co")
        _, key, _ = run_cli("keys", "create", "--tenant", "cli-co", "--scopes", "admin")
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"prices": PRICES, "plans": [{"id": "jobs", "type": "per_job", "prices": {"default": "1"}}],
                                          "customers": [{"id": "acme", "plan": "jobs"}]}))  # fmt: skip
        assert run_cli("config", "load", str(config), "--tenant", "cli-co")[0] == 0
        with live_server.client(key["key"]) as client:
            found = entries(client)
        assert [(e["action"], e["target"]) for e in found] == [
            ("config.load", "config:config.yaml"), ("key.create", f"key:{key_prefix(key['key'])}"), ("tenant.create", "tenant:cli-co"),
        ]  # fmt: skip
        assert all(e["actor"].startswith("cli:") and e["key_id"] is None for e in found)
        assert found[0]["detail"] == {"plans": 1, "customers": 1, "prices": found[0]["detail"]["prices"]}
        assert found[1]["detail"] == {"key_id": key["key_id"], "scopes": ["admin"]}
        assert key["key"] not in str(found) and key["key"].split("_", 2)[2] not in str(found)

    def test_a_failed_config_load_leaves_no_entry(self, run_cli: Run, tenant: Tenant, make_key: Callable[..., str],
                                                  live_server: LiveServer, tmp_path: Path) -> None:  # fmt: skip
        config = tmp_path / "bad.yaml"
        config.write_text(yaml.safe_dump({"plans": [{"id": "x", "type": "per_job", "prices": {"default": "-1"}}]}))
        assert run_cli("config", "load", str(config), "--tenant", tenant.name)[0] == 1
        with live_server.client(make_key(tenant)) as client:
            assert entries(client) == []


def test_every_admin_write_route_records_itself() -> None:
    """A route that changes something with the admin scope must take `AuditDep` (and record)."""
    admin_check = AdminScope.__metadata__[0].dependency

    def calls(dependant: Any) -> set[Any]:
        return {d.call for d in dependant.dependencies} | {c for d in dependant.dependencies for c in calls(d)}

    writes = []
    for route in flat_routes(throwaway_app()):
        if route.dependant is None or not ({"POST", "PUT", "PATCH", "DELETE"} & route.methods):
            continue
        used = calls(route.dependant)
        if admin_check in used:
            writes.append(route.path)
            assert get_audit in used, f"{route.path}: an admin write without AuditDep is not in the audit log"
    assert sorted(writes) == [
        "/v1/budgets/{budget_id}", "/v1/budgets/{budget_id}", "/v1/customers/{customer}", "/v1/disputes/{dispute_id}/resolve", "/v1/invoices/{invoice_id}/credit-notes", "/v1/plans",
        "/v1/quarantine/{quarantine_id}/drop", "/v1/quarantine/{quarantine_id}/release",
    ]  # fmt: skip
