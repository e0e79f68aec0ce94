"""API keys: stored only as a keyed hash, compared in constant time, revocable and rotatable
(`taskmeter keys revoke`, `taskmeter keys rotate [--grace 24h]`)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from api.cli.tenants import parse_duration
from api.deps import get_now
from metering.core import tenants as tenant_keys
from metering.core.audit import audit_log
from metering.core.db import unit_of_work
from metering.core.errors import Unauthorized
from metering.core.tables import api_keys
from metering.core.tenants import Tenant, authenticate, key_prefix
from tests.conftest import TEST_SECRET, LiveServer
from tests.security.conftest import sign_in

Run = Callable[..., tuple[int, Any, str]]


@pytest.fixture
def created(run_cli: Run, tenant: Tenant) -> dict[str, Any]:
    code, out, _ = run_cli("keys", "create", "--tenant", tenant.name, "--scopes", "read,admin", "--name", "ci")
    assert code == 0
    return out


def status(server: LiveServer, key: str, path: str = "/v1/plans") -> int:
    with server.client(key) as client:
        return client.get(path).status_code


class TestStorage:
    def test_only_the_prefix_and_a_keyed_hash_are_stored(self, engine: Engine, created: dict[str, Any]) -> None:
        key = created["key"]
        with engine.connect() as connection:
            row = connection.execute(select(api_keys).where(api_keys.c.id == created["key_id"])).one()
        assert row.prefix == key_prefix(key) and key.startswith(f"tm_{row.prefix}_")
        assert row.key_hash == hmac.new(TEST_SECRET.encode(), key.encode(), hashlib.sha256).digest()
        secret_part = key.split("_", 2)[2]
        assert not any(secret_part in str(value) for value in row)

    def test_another_server_secret_verifies_no_key(self, engine: Engine, created: dict[str, Any]) -> None:
        with engine.connect() as connection:
            assert authenticate(connection, created["key"], secret=TEST_SECRET.encode()).key_id == created["key_id"]
            with pytest.raises(Unauthorized):
                authenticate(connection, created["key"], secret=b"another-secret")

    def test_the_hash_is_compared_in_constant_time(
        self, engine: Engine, created: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        compared: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            compared.append((a, b))
            return real(a, b)

        monkeypatch.setattr(tenant_keys.hmac, "compare_digest", spy)
        forged = created["key"][:-4] + "AAAA"
        with engine.connect() as connection, pytest.raises(Unauthorized):
            authenticate(connection, forged, secret=TEST_SECRET.encode())
        assert len(compared) == 1 and len(compared[0][0]) == len(compared[0][1]) == 32

    def test_every_failure_reads_the_same(self, live_server: LiveServer, created: dict[str, Any]) -> None:
        key = created["key"]
        answers = []
        for presented in (key[:-4] + "AAAA", "tm_000000000000_" + "x" * 43, "not-a-key"):
            with live_server.client(presented) as client:
                response = client.get("/v1/plans")
            answers.append((response.status_code, response.json(), response.headers["www-authenticate"]))
        assert answers == [(401, {"error": "unauthorized", "message": "invalid API key", "detail": None}, "Bearer")] * 3


class TestRevocation:
    def test_a_revoked_key_is_401_at_once(self, run_cli: Run, live_server: LiveServer, tenant: Tenant, created: dict[str, Any]) -> None:
        assert status(live_server, created["key"]) == 200
        code, out, _ = run_cli("keys", "revoke", "--tenant", tenant.name, key_prefix(created["key"]))
        assert code == 0 and out == {"tenant": tenant.name, "revoked": key_prefix(created["key"])}
        assert status(live_server, created["key"]) == 401

    def test_revoking_signs_the_keys_dashboard_sessions_out(
        self, run_cli: Run, live_server: LiveServer, tenant: Tenant, created: dict[str, Any]
    ) -> None:
        with live_server.client() as browser:
            assert sign_in(browser, created["key"]).status_code == 303
            assert browser.get("/dashboard/sign-in").status_code == 303  # signed in: sent on
            run_cli("keys", "revoke", "--tenant", tenant.name, key_prefix(created["key"]))
            assert browser.get("/dashboard/sign-in").status_code == 200  # the form again

    def test_only_a_key_of_the_tenant_can_be_revoked(
        self, run_cli: Run, make_tenant: Callable[..., Tenant], created: dict[str, Any], live_server: LiveServer
    ) -> None:
        other = make_tenant("other-co")
        code, _, err = run_cli("keys", "revoke", "--tenant", other.name, key_prefix(created["key"]))
        assert code == 1 and "no active key" in err
        assert status(live_server, created["key"]) == 200


class TestRotation:
    def test_the_new_key_has_the_same_scopes_and_the_old_one_stops(
        self, run_cli: Run, live_server: LiveServer, tenant: Tenant, engine: Engine
    ) -> None:
        _, created, _ = run_cli("keys", "create", "--tenant", tenant.name, "--scopes", "ingest,read", "--name", "agent")
        old = created["key"]
        code, out, err = run_cli("keys", "rotate", "--tenant", tenant.name, key_prefix(old))
        assert code == 0 and "shown once" in err
        new = out["key"]
        assert new != old and out["replaces"] == key_prefix(old) and out["tenant"] == tenant.name
        with live_server.client(new) as client:
            assert client.post("/v1/events", json=[]).status_code == 200  # ingest
            assert client.get("/v1/models/unpriced").status_code == 200  # read
            assert client.get("/v1/audit").status_code == 403  # and no admin, as before
        assert status(live_server, old, "/v1/models/unpriced") == 401
        with engine.connect() as connection:
            rows = connection.execute(select(api_keys.c.name, api_keys.c.scopes).where(api_keys.c.tenant_id == tenant.id)).all()
        assert [tuple(r) for r in rows] == [("agent", "ingest,read")] * 2

    def test_with_a_grace_period_the_old_key_works_until_it_ends(
        self, run_cli: Run, live_server: LiveServer, tenant: Tenant, created: dict[str, Any]
    ) -> None:
        old = created["key"]
        code, out, _ = run_cli("keys", "rotate", "--tenant", tenant.name, key_prefix(old), "--grace", "1h")
        assert code == 0
        ends = datetime.fromisoformat(out["old_key_ends"])
        assert timedelta(minutes=59) < ends - datetime.now(UTC) <= timedelta(hours=1)
        assert status(live_server, old) == 200 and status(live_server, out["key"]) == 200
        live_server.app.dependency_overrides[get_now] = lambda: ends + timedelta(seconds=1)
        try:
            assert status(live_server, old) == 401 and status(live_server, out["key"]) == 200
        finally:
            live_server.app.dependency_overrides.clear()

    def test_a_key_in_its_grace_period_can_be_revoked_now_but_not_rotated_again(
        self, run_cli: Run, live_server: LiveServer, tenant: Tenant, created: dict[str, Any]
    ) -> None:
        prefix = key_prefix(created["key"])
        run_cli("keys", "rotate", "--tenant", tenant.name, prefix, "--grace", "7d")
        code, _, err = run_cli("keys", "rotate", "--tenant", tenant.name, prefix)
        assert code == 1 and "no active key" in err
        assert run_cli("keys", "revoke", "--tenant", tenant.name, prefix)[0] == 0
        assert status(live_server, created["key"]) == 401

    def test_a_revoked_or_unknown_key_cannot_be_rotated(self, run_cli: Run, tenant: Tenant, created: dict[str, Any]) -> None:
        prefix = key_prefix(created["key"])
        run_cli("keys", "revoke", "--tenant", tenant.name, prefix)
        assert run_cli("keys", "rotate", "--tenant", tenant.name, prefix)[0] == 1
        code, _, err = run_cli("keys", "rotate", "--tenant", tenant.name, "0123456789ab")
        assert code == 1 and "no active key '0123456789ab'" in err

    def test_every_key_command_is_in_the_audit_log(self, run_cli: Run, engine: Engine, tenant: Tenant, created: dict[str, Any]) -> None:
        prefix = key_prefix(created["key"])
        _, rotated, _ = run_cli("keys", "rotate", "--tenant", tenant.name, prefix, "--grace", "15m")
        run_cli("keys", "revoke", "--tenant", tenant.name, key_prefix(rotated["key"]))
        with engine.connect() as connection:
            rows = connection.execute(select(audit_log).where(audit_log.c.tenant_id == tenant.id).order_by(audit_log.c.id)).all()
        assert [(r.action, r.target) for r in rows] == [
            ("key.create", f"key:{prefix}"), ("key.rotate", f"key:{prefix}"), ("key.revoke", f"key:{key_prefix(rotated['key'])}"),
        ]  # fmt: skip
        assert all(r.actor.startswith("cli:") and r.key_id is None for r in rows)
        assert '"new_key": "' + key_prefix(rotated["key"]) + '"' in rows[1].detail

    def test_a_negative_grace_is_refused(self, engine: Engine, tenant: Tenant, created: dict[str, Any]) -> None:
        with pytest.raises(Exception, match="invalid grace period"), unit_of_work(engine) as session:
            tenant_keys.rotate_api_key(session, tenant, key_prefix(created["key"]), secret=b"s",
                                       now=datetime.now(UTC), grace=timedelta(seconds=-1))  # fmt: skip


@pytest.mark.parametrize(("text", "seconds"), [("0", 0), ("90", 90), ("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800)])
def test_grace_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "-5", "1.5h", "h", "3w"])
def test_bad_grace_durations(text: str) -> None:
    with pytest.raises(Exception, match="invalid duration"):
        parse_duration(text)


def test_the_api_client_never_needs_the_key_in_a_url(live_server: LiveServer, created: dict[str, Any]) -> None:
    """Keys travel in the Authorization header only: one given as a query parameter is ignored."""
    with httpx.Client(base_url=live_server.url) as client:
        assert client.get("/v1/plans", params={"key": created["key"], "api_key": created["key"]}).status_code == 401
