"""`POST /v1/stripe/webhook` (signatures, replays, order) and `GET /v1/stripe/status`, over HTTP;
and localstripe delivering its own signed events to a live server."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import stripe
from pydantic import SecretStr
from sqlalchemy import Engine, func, select, update

from api.app import create_app
from api.settings import Settings
from metering.core.tenants import Tenant
from pricing.stripe_sync import sync_tenant
from pricing.stripe_tables import stripe_events
from pricing.tables import invoices
from tests.support.billing import NOW, invoice_row, make_invoice
from tests.support.localstripe_server import LocalStripe
from tests.support.servers import ServerThread
from tests.support.stripe_fakes import FaultyGateway, localstripe_server, ls

__all__ = ["localstripe_server", "ls"]  # fixtures

SECRET = "whsec_taskmeter_test"
_events = itertools.count(1)


def sign(payload: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def event(type: str, stripe_invoice_id: str, *, created: int = 1_800_000_000, id: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": id or f"evt_test_{next(_events)}",
            "object": "event",
            "type": type,
            "created": created,
            "api_version": stripe.api_version,
            "livemode": False,
            "data": {"object": {"id": stripe_invoice_id, "object": "invoice", "status": "open"}},
        }  # fmt: skip
    ).encode()


@pytest.fixture
def server(settings: Settings, engine: Engine) -> Iterator[ServerThread]:
    configured = settings.model_copy(update={"stripe_webhook_secret": SecretStr(SECRET)})
    with ServerThread(create_app(configured, engine)) as running:
        yield running


@pytest.fixture
def post(server: ServerThread) -> Iterator[Callable[..., httpx.Response]]:
    with httpx.Client(base_url=server.url, timeout=30) as client:

        def send(payload: bytes, signature: str | None = "sign") -> httpx.Response:
            headers = {"Content-Type": "application/json"}
            if signature is not None:
                headers["Stripe-Signature"] = sign(payload) if signature == "sign" else signature
            return client.post("/v1/stripe/webhook", content=payload, headers=headers)

        yield send


@pytest.fixture
def pushed(engine: Engine, tenant: Tenant) -> int:
    """A finalized invoice that a sync pushed as Stripe invoice in_test_1."""
    invoice_id = make_invoice(engine, tenant)
    with engine.begin() as connection:
        connection.execute(
            update(invoices)
            .where(invoices.c.id == invoice_id)
            .values(stripe_invoice_id="in_test_1", stripe_status="synced")
        )
    return invoice_id


def stored_events(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(stripe_events)).scalar_one())


class TestSignature:
    def test_a_signed_event_records_the_payment_status(
        self, post: Callable[..., httpx.Response], engine: Engine, pushed: int
    ) -> None:
        response = post(event("invoice.paid", "in_test_1", id="evt_paid"))
        assert response.status_code == 200, response.text
        number = invoice_row(engine, pushed).number
        assert response.json() == {
            "received": True, "event_id": "evt_paid", "type": "invoice.paid", "outcome": "applied",
            "invoice": number, "payment_status": "paid",
        }  # fmt: skip
        assert invoice_row(engine, pushed).payment_status == "paid"

    @pytest.mark.parametrize(
        "signature",
        [None, "", "t=1,v1=deadbeef", sign(b"{}"), "wrong-secret", "stale"],
        ids=["missing", "empty", "garbage", "other-body", "wrong-secret", "stale"],
    )
    def test_a_bad_signature_is_refused_and_changes_nothing(
        self, post: Callable[..., httpx.Response], engine: Engine, pushed: int, signature: str | None
    ) -> None:
        payload = event("invoice.paid", "in_test_1")
        if signature == "wrong-secret":
            signature = sign(payload, secret="whsec_other")
        elif signature == "stale":
            signature = sign(payload, timestamp=int(time.time()) - 3600)  # past Stripe's 5 minutes
        response = post(payload, signature)
        assert response.status_code == 400
        assert response.json()["error"] == "bad_signature"
        assert invoice_row(engine, pushed).payment_status is None
        assert stored_events(engine) == 0

    def test_a_tampered_body_is_refused(self, post: Callable[..., httpx.Response], pushed: int) -> None:
        payload = event("invoice.payment_failed", "in_test_1")
        signature = sign(payload)
        assert post(payload.replace(b"payment_failed", b"paid"), signature).status_code == 400

    def test_off_without_a_secret(self, settings: Settings, engine: Engine) -> None:
        with ServerThread(create_app(settings, engine)) as running:
            response = httpx.post(f"{running.url}/v1/stripe/webhook", content=event("invoice.paid", "in_x"))
        assert response.status_code == 503
        assert "TASKMETER_STRIPE_WEBHOOK_SECRET" in response.json()["message"]


class TestIdempotence:
    def test_a_replayed_event_changes_nothing(
        self, post: Callable[..., httpx.Response], engine: Engine, pushed: int
    ) -> None:
        failed = event("invoice.payment_failed", "in_test_1", id="evt_failed", created=1_800_000_000)
        assert post(failed).json()["outcome"] == "applied"
        assert post(event("invoice.paid", "in_test_1", created=1_800_000_100)).json()["outcome"] == "applied"
        replay = post(failed)  # Stripe delivers again, hours later
        assert replay.status_code == 200
        assert replay.json()["outcome"] == "duplicate"
        assert invoice_row(engine, pushed).payment_status == "paid"
        assert stored_events(engine) == 2

    def test_an_older_event_arriving_late_is_stale(
        self, post: Callable[..., httpx.Response], engine: Engine, pushed: int
    ) -> None:
        assert post(event("invoice.paid", "in_test_1", created=1_800_000_100)).json()["outcome"] == "applied"
        assert (
            post(event("invoice.payment_failed", "in_test_1", created=1_800_000_050)).json()["outcome"]
            == "stale"
        )
        assert invoice_row(engine, pushed).payment_status == "paid"

    def test_on_a_tie_the_more_final_status_wins(
        self, post: Callable[..., httpx.Response], engine: Engine, pushed: int
    ) -> None:
        assert post(event("invoice.paid", "in_test_1", created=1_800_000_000)).json()["outcome"] == "applied"
        assert (
            post(event("invoice.finalized", "in_test_1", created=1_800_000_000)).json()["outcome"] == "stale"
        )
        assert invoice_row(engine, pushed).payment_status == "paid"

    @pytest.mark.parametrize(
        ("type", "status"),
        [
            ("invoice.finalized", "open"),
            ("invoice.payment_failed", "payment_failed"),
            ("invoice.payment_succeeded", "paid"),
            ("invoice.voided", "void"),
            ("invoice.marked_uncollectible", "uncollectible"),
            ("invoice.payment_action_required", "action_required"),
        ],  # fmt: skip
    )
    def test_each_invoice_event_sets_its_status(
        self, post: Callable[..., httpx.Response], engine: Engine, pushed: int, type: str, status: str
    ) -> None:
        assert post(event(type, "in_test_1")).json()["payment_status"] == status
        assert invoice_row(engine, pushed).payment_status == status

    def test_events_about_other_things_are_acknowledged(
        self, post: Callable[..., httpx.Response], pushed: int
    ) -> None:
        assert post(event("invoice.paid", "in_not_ours")).json()["outcome"] == "unknown_invoice"
        other = json.dumps({"id": "evt_cus", "object": "event", "type": "customer.created", "created": 1,
                            "data": {"object": {"id": "cus_1", "object": "customer"}}}).encode()  # fmt: skip
        assert post(other).json()["outcome"] == "ignored"


class TestStatus:
    def test_lists_the_callers_unsynced_invoices_with_their_errors(
        self,
        server: ServerThread,
        engine: Engine,
        tenant: Tenant,
        make_tenant: Callable[..., Tenant],
        make_key: Callable[..., str],
    ) -> None:
        failed = make_invoice(engine, tenant, period="2026-09")
        make_invoice(engine, tenant, period="2026-10")
        with engine.begin() as connection:
            connection.execute(
                update(invoices).where(invoices.c.id == failed)
                .values(stripe_status="failed", stripe_error="InvalidRequestError 404: No such customer")
            )  # fmt: skip
        other = make_tenant("other-co")
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {make_key(tenant, 'read')}"}
        ) as client:
            body = client.get("/v1/stripe/status").json()
        assert body["enabled"] is False
        assert body["counts"] == {"failed": 1, "not_synced": 1}
        assert [(u["period"], u["stripe_status"], u["stripe_error"]) for u in body["unsynced"]] == [
            ("2026-09", "failed", "InvalidRequestError 404: No such customer"), ("2026-10", None, None),
        ]  # fmt: skip
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {make_key(other, 'read')}"}
        ) as client:
            assert client.get("/v1/stripe/status").json() == {"enabled": False, "counts": {}, "unsynced": []}
            assert (
                client.get("/v1/stripe/status", headers={"Authorization": "Bearer nope"}).status_code == 401
            )


class TestFromLocalstripe:
    def test_localstripes_own_signed_events_record_finalized_then_paid(
        self, server: ServerThread, engine: Engine, tenant: Tenant, ls: LocalStripe
    ) -> None:
        ls.register_webhook("taskmeter", f"{server.url}/v1/stripe/webhook", SECRET)
        client = ls.client()
        invoice_id = make_invoice(engine, tenant)
        assert sync_tenant(engine, tenant, FaultyGateway(client), now=NOW).synced

        stripe_invoice_id = invoice_row(engine, invoice_id).stripe_invoice_id
        assert wait_for(lambda: invoice_row(engine, invoice_id).payment_status == "open", timeout=15)

        customer_id = client.v1.invoices.retrieve(stripe_invoice_id).customer
        card = client.v1.payment_methods.create(
            {
                "type": "card",
                "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            }
        )
        client.v1.payment_methods.attach(card.id, {"customer": customer_id})
        client.v1.customers.update(customer_id, {"invoice_settings": {"default_payment_method": card.id}})
        assert client.v1.invoices.pay(stripe_invoice_id).status == "paid"
        assert wait_for(lambda: invoice_row(engine, invoice_id).payment_status == "paid", timeout=15)


def wait_for(condition: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())
