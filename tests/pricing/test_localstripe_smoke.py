"""Smoke tests: the official ``stripe`` SDK (16.x) against localstripe on loopback.

They pin down what the fake Stripe server used by our Stripe-sync tests can and cannot do.
``start_localstripe()`` (tests/support/localstripe_server.py) applies shims by default; the
``stock_*`` tests below run unpatched localstripe 1.15.10 and document its gaps, so an
upgrade that closes one shows up as a failing test here.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import stripe

from tests.support.localstripe_server import (
    SERVER_PYTHON_ENV,
    LocalStripe,
    LocalStripeError,
    start_localstripe,
)

WEBHOOK_SECRET = "whsec_taskmeter_test"


@pytest.fixture(scope="module")
def localstripe_server() -> Iterator[LocalStripe]:
    with start_localstripe() as server:
        yield server


@pytest.fixture
def ls(localstripe_server: LocalStripe) -> LocalStripe:
    localstripe_server.reset()
    return localstripe_server


@pytest.fixture
def stripe_client(ls: LocalStripe) -> stripe.StripeClient:
    return ls.client()


@pytest.fixture(scope="module")
def stock_localstripe() -> Iterator[LocalStripe]:
    with start_localstripe(shims=False) as server:
        yield server


@pytest.fixture
def stock_client(stock_localstripe: LocalStripe) -> stripe.StripeClient:
    stock_localstripe.reset()
    return stock_localstripe.client()


def _new_customer(stripe_client: stripe.StripeClient, account: str) -> stripe.Customer:
    return stripe_client.v1.customers.create(
        {"email": f"{account}@example.test", "name": account, "metadata": {"tm_account": account}}
    )


# -- the server process ---------------------------------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port`` (Linux /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":
                found.add(address)
    return found


def test_server_runs_as_subprocess_on_loopback_only(localstripe_server: LocalStripe) -> None:
    assert localstripe_server.url == f"http://127.0.0.1:{localstripe_server.port}"
    assert localstripe_server.api_key.startswith("sk_test_")
    assert localstripe_server.process.poll() is None
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp on this platform")
    # 0100007F is 127.0.0.1 in /proc's little-endian hex; stock localstripe binds [::].
    assert _listening_addresses(localstripe_server.port) == {"0100007F"}


def test_server_is_stopped_and_cleaned_up_on_exit() -> None:
    with start_localstripe() as server:
        process, workdir = server.process, server.log_path.parent
        assert workdir.is_dir()
    assert process.poll() is not None
    assert not workdir.exists()


def test_startup_failure_is_reported_with_install_hint(tmp_path: Path) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'No module named localstripe' >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(LocalStripeError, match=r"(?s)exited with code 3.*localstripe==1\.15\.10.*No module"):
        with start_localstripe(python=str(broken), startup_timeout=10):
            pass  # pragma: no cover


# -- pointing the SDK at it ---------------------------------------------------------------


def test_stripe_client_with_base_addresses(ls: LocalStripe) -> None:
    stripe_client = stripe.StripeClient(ls.api_key, base_addresses={"api": ls.url}, max_network_retries=0)
    customer = stripe_client.v1.customers.create({"email": "a@example.test"})
    assert customer.id.startswith("cus_")
    assert stripe_client.v1.customers.retrieve(customer.id).email == "a@example.test"


def test_module_level_api_base(ls: LocalStripe, monkeypatch: pytest.MonkeyPatch) -> None:
    # Global state: only ever set through monkeypatch so it is restored after the test.
    monkeypatch.setattr(stripe, "api_base", ls.url)
    monkeypatch.setattr(stripe, "api_key", ls.api_key)
    monkeypatch.setattr(stripe, "max_network_retries", 0)
    key = f"tm-test-{uuid.uuid4()}"
    first = stripe.Customer.create(email="b@example.test", idempotency_key=key)
    again = stripe.Customer.create(email="b@example.test", idempotency_key=key)
    assert first.id == again.id
    assert stripe.Customer.retrieve(first.id).email == "b@example.test"


# -- customers and metadata -----------------------------------------------------------------


def test_find_customer_by_metadata_by_listing(stripe_client: stripe.StripeClient) -> None:
    ids = {acct: _new_customer(stripe_client, acct).id for acct in ("acct-1", "acct-2", "acct-3")}
    # No search endpoint: page through customers (limit=1 exercises starting_after paging).
    found = [
        c.id
        for c in stripe_client.v1.customers.list({"limit": 1}).auto_paging_iter()
        if c.metadata["tm_account"] == "acct-2"
    ]
    assert found == [ids["acct-2"]]
    by_email = stripe_client.v1.customers.list({"email": "acct-3@example.test"})
    assert [c.id for c in by_email.data] == [ids["acct-3"]]


def test_customer_search_is_not_supported(stripe_client: stripe.StripeClient) -> None:
    _new_customer(stripe_client, "acct-1")
    with pytest.raises(stripe.InvalidRequestError) as excinfo:
        stripe_client.v1.customers.search({"query": "metadata['tm_account']:'acct-1'"})
    assert excinfo.value.http_status == 404


# -- invoice items and invoices ---------------------------------------------------------------

ITEMS = [
    {"amount": 1234, "description": "Resolved tasks x 12", "metadata": {"tm_line": "tasks"}},
    {"amount": 766, "description": "Tokens overage", "metadata": {"tm_line": "tokens"}},
    {"amount": 1, "description": "Rounding", "metadata": {"tm_line": "rounding"}},
]


def _assert_invoice_matches_items(
    stripe_client: stripe.StripeClient, invoice_id: str, item_ids: set[str]
) -> None:
    listed = stripe_client.v1.invoice_items.list({"invoice": invoice_id, "limit": 100}).data
    assert {ii.id for ii in listed} == item_ids
    assert {ii.metadata["tm_line"] for ii in listed} == {i["metadata"]["tm_line"] for i in ITEMS}
    assert all(ii.invoice == invoice_id and ii.currency == "usd" for ii in listed)

    lines = stripe_client.v1.invoices.line_items.list(invoice_id, {"limit": 100}).data
    # localstripe answers with the pre-2025 line shape: a top-level ``invoice_item``.
    assert {line.invoice_item for line in lines} == item_ids

    invoice = stripe_client.v1.invoices.retrieve(invoice_id)
    expected = sum(i["amount"] for i in ITEMS)
    assert sum(ii.amount for ii in listed) == expected
    assert invoice.subtotal == invoice.total == invoice.amount_due == expected
    assert invoice.currency == "usd"


def test_invoice_from_pending_items(stripe_client: stripe.StripeClient) -> None:
    customer = _new_customer(stripe_client, "acct-1")
    item_ids = {
        stripe_client.v1.invoice_items.create({"customer": customer.id, "currency": "usd", **item}).id
        for item in ITEMS
    }
    pending = stripe_client.v1.invoice_items.list({"customer": customer.id, "pending": True}).data
    assert {ii.id for ii in pending} == item_ids

    invoice = stripe_client.v1.invoices.create(
        {
            "customer": customer.id,
            "pending_invoice_items_behavior": "include",
            "auto_advance": False,
            "metadata": {"tm_period": "2026-11"},
        }
    )
    assert invoice.status == "draft"
    assert invoice.number is None
    assert invoice.metadata["tm_period"] == "2026-11"

    finalized = stripe_client.v1.invoices.finalize_invoice(invoice.id)
    assert finalized.status == "open"
    assert finalized.number
    assert finalized.status_transitions.finalized_at is not None
    _assert_invoice_matches_items(stripe_client, invoice.id, item_ids)
    assert stripe_client.v1.invoice_items.list({"customer": customer.id, "pending": True}).data == []


def test_draft_invoice_then_items_on_it(stripe_client: stripe.StripeClient) -> None:
    customer = _new_customer(stripe_client, "acct-1")
    stray = stripe_client.v1.invoice_items.create({"customer": customer.id, "currency": "usd", "amount": 99})

    # Current Stripe default is pending_invoice_items_behavior=exclude: an empty draft.
    invoice = stripe_client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    assert invoice.total == 0 and invoice.lines.data == []

    item_ids = {
        stripe_client.v1.invoice_items.create(
            {"customer": customer.id, "invoice": invoice.id, "currency": "usd", **item}
        ).id
        for item in ITEMS
    }
    stripe_client.v1.invoices.finalize_invoice(invoice.id)
    _assert_invoice_matches_items(stripe_client, invoice.id, item_ids)
    # the stray pending item was left alone
    assert [ii.id for ii in stripe_client.v1.invoice_items.list({"pending": True}).data] == [stray.id]


def test_finalized_invoice_is_immutable_and_can_be_voided(stripe_client: stripe.StripeClient) -> None:
    customer = _new_customer(stripe_client, "acct-1")
    invoice = stripe_client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    stripe_client.v1.invoice_items.create(
        {"customer": customer.id, "invoice": invoice.id, "currency": "usd", "amount": 500}
    )
    stripe_client.v1.invoices.finalize_invoice(invoice.id)

    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.invoices.finalize_invoice(invoice.id)
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.invoice_items.create(
            {"customer": customer.id, "invoice": invoice.id, "currency": "usd", "amount": 1}
        )
    voided = stripe_client.v1.invoices.void_invoice(invoice.id)
    assert voided.status == "void"
    assert voided.status_transitions.voided_at is not None


def test_empty_finalized_invoice_is_paid(stripe_client: stripe.StripeClient) -> None:
    customer = _new_customer(stripe_client, "acct-1")
    invoice = stripe_client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    assert stripe_client.v1.invoices.finalize_invoice(invoice.id).status == "paid"


# -- idempotency --------------------------------------------------------------------------------


def test_idempotency_key_replays_instead_of_duplicating(stripe_client: stripe.StripeClient) -> None:
    customer = _new_customer(stripe_client, "acct-1")
    params = {"customer": customer.id, "currency": "usd", "amount": 1234, "metadata": {"tm_line": "x"}}
    key = f"tm-invoiceitem-{uuid.uuid4()}"

    first = stripe_client.v1.invoice_items.create(params, {"idempotency_key": key})
    again = stripe_client.v1.invoice_items.create(params, {"idempotency_key": key})

    assert again.id == first.id
    assert first.last_response.headers.get("Idempotent-Replayed") is None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert [ii.id for ii in stripe_client.v1.invoice_items.list({"customer": customer.id}).data] == [first.id]

    with pytest.raises(stripe.IdempotencyError, match="same parameters"):
        stripe_client.v1.invoice_items.create({**params, "amount": 1}, {"idempotency_key": key})

    # without a key of ours the SDK sends a fresh random one: a real second item
    stripe_client.v1.invoice_items.create(params)
    assert len(stripe_client.v1.invoice_items.list({"customer": customer.id}).data) == 2


def test_idempotency_keys_are_scoped_to_the_api_key(ls: LocalStripe) -> None:
    key = f"tm-customer-{uuid.uuid4()}"
    one = ls.client().v1.customers.create({"email": "a@example.test"}, {"idempotency_key": key})
    other_account = stripe.StripeClient(
        "sk_test_other_account", base_addresses={"api": ls.url}, max_network_retries=0
    )
    two = other_account.v1.customers.create({"email": "a@example.test"}, {"idempotency_key": key})
    assert one.id != two.id


def test_reset_forgets_objects_and_idempotency_keys(ls: LocalStripe) -> None:
    stripe_client = ls.client()
    key = f"tm-customer-{uuid.uuid4()}"
    first = stripe_client.v1.customers.create({"email": "a@example.test"}, {"idempotency_key": key})
    ls.reset()
    assert stripe_client.v1.customers.list().data == []
    second = stripe_client.v1.customers.create({"email": "a@example.test"}, {"idempotency_key": key})
    assert second.id != first.id


# -- webhook signatures ---------------------------------------------------------------------------


def _sign(payload: str, secret: str, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


EVENT_PAYLOAD = json.dumps(
    {
        "id": "evt_test_1",
        "object": "event",
        "type": "invoice.finalized",
        "api_version": stripe.api_version,
        "created": 1_800_000_000,
        "livemode": False,
        "data": {"object": {"id": "in_test_1", "object": "invoice", "total": 2001}},
    }
)


def test_webhook_signature_offline() -> None:
    now = int(time.time())
    header = _sign(EVENT_PAYLOAD, WEBHOOK_SECRET, now)
    # the SDK's own test helper produces the same header
    assert stripe.WebhookSignature.generate_signature_header(EVENT_PAYLOAD, WEBHOOK_SECRET, now) == header

    event = stripe.Webhook.construct_event(EVENT_PAYLOAD, header, WEBHOOK_SECRET)
    assert event.type == "invoice.finalized"
    assert event.data.object.total == 2001
    # bytes body (as a web framework hands it over) and the StripeClient variant
    stripe_client = stripe.StripeClient("sk_test_unused", base_addresses={"api": "http://127.0.0.1:9"})
    assert stripe_client.construct_event(EVENT_PAYLOAD.encode(), header, WEBHOOK_SECRET).id == "evt_test_1"

    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(EVENT_PAYLOAD.replace("2001", "1"), header, WEBHOOK_SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(EVENT_PAYLOAD, header, "whsec_wrong")
    stale = _sign(EVENT_PAYLOAD, WEBHOOK_SECRET, now - 3600)
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(EVENT_PAYLOAD, stale, WEBHOOK_SECRET)


class _WebhookReceiver:
    """A loopback HTTP endpoint collecting (body, Stripe-Signature) pairs."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[bytes, str]] = queue.Queue()
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.put((body, self.headers.get("Stripe-Signature", "")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stripe/webhook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_localstripe_delivers_verifiable_webhooks(
    ls: LocalStripe, stripe_client: stripe.StripeClient
) -> None:
    with _WebhookReceiver() as receiver:
        ls.register_webhook("taskmeter", receiver.url, WEBHOOK_SECRET, events=["customer.created"])
        customer = _new_customer(stripe_client, "acct-1")
        body, signature = receiver.received.get(timeout=15)  # localstripe waits ~1 s

    event = stripe.Webhook.construct_event(body, signature, WEBHOOK_SECRET)
    assert event.type == "customer.created"
    assert event.data.object.id == customer.id
    assert event.data.object.metadata["tm_account"] == "acct-1"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, signature, "whsec_wrong")


# -- stock localstripe 1.15.10 (no shims): documented gaps ------------------------------------


def test_stock_localstripe_ignores_idempotency_keys(stock_client: stripe.StripeClient) -> None:
    key = f"tm-customer-{uuid.uuid4()}"
    one = stock_client.v1.customers.create({"email": "a@example.test"}, {"idempotency_key": key})
    two = stock_client.v1.customers.create({"email": "a@example.test"}, {"idempotency_key": key})
    assert one.id != two.id  # a duplicate, no replay
    assert len(stock_client.v1.customers.list().data) == 2


def test_stock_localstripe_cannot_invoice_a_customer_without_subscription(
    stock_client: stripe.StripeClient,
) -> None:
    customer = _new_customer(stock_client, "acct-1")
    stock_client.v1.invoice_items.create({"customer": customer.id, "currency": "usd", "amount": 100})
    with pytest.raises(stripe.InvalidRequestError, match="No upcoming invoices") as excinfo:
        stock_client.v1.invoices.create(
            {"customer": customer.id, "pending_invoice_items_behavior": "include"}
        )
    assert excinfo.value.http_status == 404


def test_stock_localstripe_has_no_finalize_nor_invoice_filter(stock_client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.APIError) as excinfo:
        stock_client.v1.invoices.finalize_invoice("in_doesnotmatter")
    assert excinfo.value.http_status == 404  # no such route: aiohttp's plain-text 404
    with pytest.raises(stripe.APIError) as excinfo:
        stock_client.v1.invoice_items.list({"invoice": "in_doesnotmatter"})
    assert excinfo.value.http_status == 500  # TypeError inside localstripe


def test_stock_localstripe_entry_point_starts() -> None:
    # ``python -m localstripe`` parses its options on this Python/aiohttp (help only: the
    # stock server binds [::] and shares /tmp/localstripe.pickle, hence our launcher).
    interpreter = os.environ.get(SERVER_PYTHON_ENV) or sys.executable
    out = subprocess.run(
        [interpreter, "-m", "localstripe", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--port" in out.stdout and "--from-scratch" in out.stdout
