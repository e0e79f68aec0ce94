"""Webhook signing secrets at rest: stored sealed (Fernet), opened only to sign; keys rotated
with TASKMETER_ENCRYPTION_KEYS (newest first) and `taskmeter webhooks reseal`; migration 0017
seals the secrets stored in clear before it."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError
from sqlalchemy import Engine, insert, select

from api.settings import Settings
from api.webhooks import deliver_due
from metering.core.db import unit_of_work
from metering.core.secret_box import SecretBox, SecretUnreadable, derived_key
from metering.core.tenants import Tenant
from metering.spend import alerts
from metering.spend.budget_tables import budget_alerts, webhook_deliveries, webhooks
from tests.conftest import TEST_SECRET
from tests.reliability.test_quarantine_migration import migrate

NOW = datetime(2026, 11, 18, 10, 30, tzinfo=UTC)
K1, K2, K3 = (Fernet.generate_key().decode() for _ in range(3))


def settings_with(keys: str | None) -> Settings:
    return Settings(env="test", secret_key=TEST_SECRET, encryption_keys=keys)


def stored_secret(engine: Engine, hook: int) -> str:
    with engine.connect() as connection:
        return str(connection.execute(select(webhooks.c.secret).where(webhooks.c.id == hook)).scalar_one())


def add(engine: Engine, tenant: Tenant, box: SecretBox, url: str = "http://127.0.0.1:9/") -> tuple[int, str]:
    with unit_of_work(engine) as session:
        return alerts.add_webhook(session, tenant.id, url, box=box, now=NOW)


@pytest.fixture
def receiver() -> Iterator[Any]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            server.received.append((self.headers["Taskmeter-Signature"], body))  # type: ignore[attr-defined]
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def pending_alert(engine: Engine, tenant: Tenant, hook: int) -> None:
    with unit_of_work(engine) as session:
        alert = session.execute(
            insert(budget_alerts).values(
                tenant_id=tenant.id, alert_id="alrt_x", budget_id="b", period_start_us=0, kind="threshold",
                threshold="1", used="1", limit="1", at=NOW,
            ).returning(budget_alerts.c.id)
        ).scalar_one()  # fmt: skip
        session.execute(insert(webhook_deliveries).values(
            tenant_id=tenant.id, alert=alert, webhook=hook, status="pending", attempts=0, next_attempt_us=0,
            claimed_until_us=0,
        ))  # fmt: skip


def verified(secret: str, header: str, body: bytes) -> bool:
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    return hmac.compare_digest(v1, hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest())


class TestSealed:
    def test_the_secret_is_not_stored_in_clear_and_signs_once_opened(
        self, engine: Engine, tenant: Tenant, receiver: Any
    ) -> None:
        box = settings_with(K1).secret_box()
        hook, secret = add(engine, tenant, box, f"http://127.0.0.1:{receiver.server_port}/")
        stored = stored_secret(engine, hook)
        assert secret.startswith("whsec_") and secret not in stored and stored != secret
        assert SecretBox([K1.encode()]).open(stored) == secret
        pending_alert(engine, tenant, hook)
        assert deliver_due(engine, now=NOW, box=box) == {"delivered": 1, "failed": 0}
        ((header, body),) = receiver.received
        assert verified(secret, header, body)

    def test_without_encryption_keys_a_key_derived_from_the_secret_key(self) -> None:
        box = settings_with(None).secret_box()
        sealed = box.seal("whsec_x")
        assert SecretBox([derived_key(TEST_SECRET)]).open(sealed) == "whsec_x"
        with pytest.raises(SecretUnreadable):
            SecretBox([derived_key("another secret")]).open(sealed)

    def test_a_key_that_is_not_a_fernet_key_is_refused_by_name(self) -> None:
        with pytest.raises(ValidationError, match="TASKMETER_ENCRYPTION_KEYS entry 2 is not a Fernet key"):
            settings_with(f"{K1},not-a-key")


class TestRotation:
    def test_new_key_first_reseal_then_drop_the_old_one(
        self, engine: Engine, tenant: Tenant, run_cli: Callable[..., tuple[int, Any, str]],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        hook, secret = add(engine, tenant, settings_with(K1).secret_box())
        rotated = settings_with(f"{K2},{K1}").secret_box()
        assert rotated.open(stored_secret(engine, hook)) == secret  # the old key still opens it
        monkeypatch.setenv("TASKMETER_ENCRYPTION_KEYS", f"{K2},{K1}")
        code, output, _ = run_cli("webhooks", "reseal")
        assert (code, output) == (0, {"resealed": 1})
        assert settings_with(K2).secret_box().open(stored_secret(engine, hook)) == secret
        with pytest.raises(SecretUnreadable):
            settings_with(K1).secret_box().open(stored_secret(engine, hook))
        with pytest.raises(SecretUnreadable):
            settings_with(K3).secret_box().open(stored_secret(engine, hook))


class TestMigration:
    def test_0017_seals_the_secrets_stored_in_clear_and_its_downgrade_opens_them(
        self, engine: Engine, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TASKMETER_SECRET_KEY", TEST_SECRET)
        monkeypatch.delenv("TASKMETER_ENCRYPTION_KEYS", raising=False)
        migrate(engine, "0015", down=True)
        try:
            with engine.begin() as connection:
                connection.execute(insert(webhooks).values(id=7, tenant_id=tenant.id, url="http://x/", secret="whsec_old", created_at=NOW))
        finally:
            migrate(engine, "head")
        stored = stored_secret(engine, 7)
        assert stored != "whsec_old" and SecretBox([derived_key(TEST_SECRET)]).open(stored) == "whsec_old"
        migrate(engine, "0015", down=True)
        try:
            assert stored_secret(engine, 7) == "whsec_old"
        finally:
            migrate(engine, "head")
