"""Secrets and keys are never logged: with every logger at DEBUG, key creation, authentication
failures, ingestion, database errors, a Stripe sync and Stripe webhooks leave no API key, key
hash, server secret, Stripe key or webhook secret in the logs, on stderr, or in error bodies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from api.settings import Settings
from metering.core import tenants as tenant_keys
from metering.core.db import unit_of_work
from metering.core.tables import api_keys
from metering.core.tenants import Tenant, create_api_key, hash_key, key_prefix, parse_scopes
from pricing.stripe_gateway import StripeGateway
from pricing.stripe_sync import sync_tenant
from tests.conftest import TEST_SECRET, LiveServer
from tests.security.conftest import WEBHOOK_SECRET, World

STRIPE_KEY = "sk_test_51SecretStripeKeyThatMustNeverBeLogged0000"
Run = Callable[..., tuple[int, Any, str]]


class Secrets:
    """Everything that must not leak, in every form it could take in text."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.values = {TEST_SECRET, STRIPE_KEY, WEBHOOK_SECRET}

    def key(self, key: str) -> str:
        self.values |= {key, key.split("_", 2)[2]}
        digest = hash_key(key, TEST_SECRET.encode())
        self.values |= {digest.hex(), repr(digest)[2:-1], str(digest)}
        return key

    def stored_hashes(self) -> None:
        with self.engine.connect() as connection:
            for digest in connection.execute(select(api_keys.c.key_hash)).scalars():
                self.values |= {bytes(digest).hex(), repr(bytes(digest))[2:-1]}

    def found_in(self, text: str) -> list[str]:
        return sorted(value[:12] + "..." for value in self.values if value and value in text)


@pytest.fixture
def secrets(engine: Engine) -> Secrets:
    return Secrets(engine)


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)  # the root logger: uvicorn, stripe, taskmeter, everything
    for name in ("stripe", "uvicorn", "uvicorn.access", "uvicorn.error", "taskmeter"):
        caplog.set_level(logging.DEBUG, logger=name)
    # SQL statement logs are opt-in (metering.core.db); opted in, their parameters stay hidden.
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    yield caplog


def logged(caplog: pytest.LogCaptureFixture) -> str:
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        if record.exc_info:
            lines.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(lines)


def test_keys_failures_ingestion_and_the_dashboard(
    everything_logged: pytest.LogCaptureFixture, secrets: Secrets, run_cli: Run, live_server: LiveServer, tenant: Tenant
) -> None:
    bodies: list[str] = []
    code, created, err = run_cli("keys", "create", "--tenant", tenant.name, "--scopes", "ingest,read")
    key = secrets.key(created["key"])
    bodies.append(err)  # stdout shows the key once, by design; stderr never
    forged = secrets.key(key[:-6] + "AAAAAA")
    with live_server.client(key) as client:
        bodies.append(client.post("/v1/events", json=[{"id": "e1", "type": "task.started", "time": "2026-11-20T10:00:00Z",
                                                       "customer": "acme", "task": "t1"}, {"id": "bad"}]).text)  # fmt: skip
        bodies.append(client.get("/v1/audit").text)  # 403
    for presented in (forged, "tm_" + key_prefix(key) + "_short", key + "x", f"{key} {key}"):
        with live_server.client(presented) as client:
            bodies.append(client.get("/v1/plans").text)
    with httpx.Client(base_url=live_server.url) as client:
        bodies.append(client.get("/v1/plans", headers={"Authorization": f"Basic {key}"}).text)
        bodies.append(client.get("/v1/plans", headers={"Authorization": key}).text)
    run_cli("keys", "revoke", "--tenant", tenant.name, key_prefix(key))
    with live_server.client(key) as client:
        bodies.append(client.post("/v1/events", json=[]).text)
    with live_server.client() as browser:  # a wrong key on the dashboard's sign-in form
        page = browser.get("/dashboard/sign-in").text
        token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        bodies.append(browser.post("/dashboard/sign-in", data={"key": forged, "csrf": token}).text)
        bodies.append(browser.post("/dashboard/sign-in", data={"key": key, "csrf": token}).text)
    secrets.stored_hashes()
    assert code == 0 and len(everything_logged.records) > 0
    assert secrets.found_in(logged(everything_logged)) == []
    assert [secrets.found_in(body) for body in bodies] == [[]] * len(bodies)


def test_a_database_error_while_storing_a_key_shows_no_hash(
    everything_logged: pytest.LogCaptureFixture, secrets: Secrets, engine: Engine, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy puts a failed statement's parameters in its message unless told not to."""
    monkeypatch.setattr(tenant_keys.secrets, "token_hex", lambda n: "0123456789ab")  # the same prefix twice
    now = datetime.now(UTC)
    with unit_of_work(engine) as session:
        secrets.key(create_api_key(session, tenant, parse_scopes("read"), secret=TEST_SECRET.encode(), now=now)[0])
    with pytest.raises(IntegrityError) as caught, unit_of_work(engine) as session:
        create_api_key(session, tenant, parse_scopes("read"), secret=TEST_SECRET.encode(), now=now)
    logging.getLogger("taskmeter.test").exception("as the API's error handler would log it", exc_info=caught.value)
    secrets.stored_hashes()
    assert "parameters hidden" in str(caught.value)
    assert secrets.found_in(str(caught.value)) == [] and secrets.found_in(logged(everything_logged)) == []


def test_stripe_settings_and_a_failing_sync(
    everything_logged: pytest.LogCaptureFixture, secrets: Secrets, engine: Engine, alpha: World, settings: Settings
) -> None:
    configured = Settings(**{**settings.model_dump(), "stripe_api_key": STRIPE_KEY, "stripe_api_base": "http://127.0.0.1:9",
                             "secret_key": TEST_SECRET, "stripe_webhook_secret": WEBHOOK_SECRET})  # fmt: skip
    texts = [repr(configured), str(configured), configured.model_dump_json(), repr(configured.model_dump())]
    gateway = StripeGateway.from_settings(configured, sleep=lambda seconds: None)
    report = sync_tenant(engine, alpha.tenant, gateway, now=datetime.now(UTC))
    texts.append(repr(report.summary()))
    assert report.retrying or report.failed or report.aborted  # it did try, and fail
    assert [secrets.found_in(text) for text in texts] == [[]] * len(texts)
    assert secrets.found_in(logged(everything_logged)) == []


def test_webhooks_with_bad_signatures(
    everything_logged: pytest.LogCaptureFixture, secrets: Secrets, live_server: LiveServer
) -> None:
    payload = '{"id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1, "data": {"object": {}}}'
    header = stripe.WebhookSignature._compute_signature(f"1:{payload}", "whsec_wrong")  # type: ignore[attr-defined]
    with live_server.client() as client:
        answers = [
            client.post("/v1/stripe/webhook", content=payload, headers={"Stripe-Signature": f"t=1,v1={header}"}).text,
            client.post("/v1/stripe/webhook", content=payload).text,
        ]
    assert [secrets.found_in(text) for text in answers] == [[], []]
    assert secrets.found_in(logged(everything_logged)) == []
