"""Fixtures and fault injection for the Stripe tests: localstripe started once per module, and a
gateway that fails where a test says (Stripe errors, or the process "dying" right after Stripe
served a call)."""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import stripe
from stripe.params import InvoiceCreateParams, InvoiceItemCreateParams

from pricing.stripe_gateway import StripeGateway
from tests.support.localstripe_server import LocalStripe, start_localstripe

T = TypeVar("T")


class Crash(Exception):
    """The process dies here: after Stripe served the call, before we recorded its answer."""


class FaultyGateway(StripeGateway):
    """The real gateway (so the real retries), with planned faults per call (`what`: "create
    customer", "create invoice", "create invoice item", "finalize invoice", ...):

    - `errors[what]`: Stripe errors raised by the next calls, before they reach Stripe;
    - `crash_after[what] = n`: `Crash` right after the n-th call Stripe served;
    - `tamper`: added to every invoice item's amount (a bug that makes totals differ);
    - `key_suffix`: appended to idempotency keys (Stripe forgot them: 24 h went by);
    - `delay`: seconds each item call takes (to make races overlap).
    """

    def __init__(self, client: stripe.StripeClient, **options: Any) -> None:
        self.sleeps: list[float] = []
        options.setdefault("sleep", self.sleeps.append)
        options.setdefault("rng", random.Random(7))
        super().__init__(client, **options)
        self.served: Counter[str] = Counter()
        self.errors: defaultdict[str, list[stripe.StripeError]] = defaultdict(list)
        self.crash_after: dict[str, int] = {}
        self.tamper = 0
        self.key_suffix = ""
        self.delay = 0.0

    def _call(self, what: str, call: Callable[[], T]) -> T:
        def faulty() -> T:
            if self.errors[what]:
                raise self.errors[what].pop(0)
            result = call()
            self.served[what] += 1
            if self.crash_after.get(what) == self.served[what]:
                raise Crash(what)
            return result

        return super()._call(what, faulty)

    def create_invoice(self, params: InvoiceCreateParams, *, key: str) -> stripe.Invoice:
        return super().create_invoice(params, key=key + self.key_suffix)

    def create_invoice_item(self, params: InvoiceItemCreateParams, *, key: str) -> stripe.InvoiceItem:
        time.sleep(self.delay)
        return super().create_invoice_item(
            {**params, "amount": params["amount"] + self.tamper}, key=key + self.key_suffix
        )


@pytest.fixture(scope="module")
def localstripe_server() -> Iterator[LocalStripe]:
    with start_localstripe() as server:
        yield server


@pytest.fixture
def ls(localstripe_server: LocalStripe) -> LocalStripe:
    """A fresh, empty fake Stripe account."""
    localstripe_server.reset()
    return localstripe_server


@pytest.fixture
def stripe_client(ls: LocalStripe) -> stripe.StripeClient:
    return ls.client()


@pytest.fixture
def gateway(stripe_client: stripe.StripeClient) -> FaultyGateway:
    return FaultyGateway(stripe_client)
