"""The Stripe calls taskmeter makes, through the official SDK, with retries of transient errors.

Every write carries an idempotency key chosen by the caller (derived from our ids), so retrying a
call, here or in a later run, replays Stripe's first answer instead of creating a second object.
The SDK's own network retries are off: retries happen here, with exponential backoff and jitter,
and only for errors that another attempt can cure.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import stripe
from stripe.params import CustomerCreateParams, InvoiceCreateParams, InvoiceItemCreateParams

log = logging.getLogger("taskmeter.stripe")

T = TypeVar("T")
CollectionMethod = Literal["charge_automatically", "send_invoice"]


def is_transient(error: stripe.StripeError) -> bool:
    """Whether the same request may succeed later: network trouble, 5xx, 429, 409 (a concurrent
    request with the same idempotency key), `lock_timeout`; Stripe's `Stripe-Should-Retry` header
    decides when present. Everything else (invalid request, auth, an idempotency key reused with
    other parameters) needs a person."""
    if isinstance(error, stripe.IdempotencyError):
        return False
    if isinstance(error, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    should_retry = _header(error, "stripe-should-retry")
    if should_retry in ("true", "false"):
        return should_retry == "true"
    if error.code == "lock_timeout":
        return True
    status = error.http_status
    if status is None:
        return isinstance(error, stripe.APIError)
    return status >= 500 or status in (409, 429)


def _header(error: stripe.StripeError, name: str) -> str | None:
    for key, value in (error.headers or {}).items():
        if key.lower() == name:
            return str(value).lower()
    return None


def is_account_error(error: stripe.StripeError) -> bool:
    """An error about the API key, not the invoice: no further call can succeed."""
    return isinstance(error, stripe.AuthenticationError | stripe.PermissionError)


def describe(error: stripe.StripeError) -> str:
    parts = [type(error).__name__]
    if error.http_status is not None:
        parts.append(str(error.http_status))
    if error.code:
        parts.append(error.code)
    return f"{' '.join(parts)}: {error.user_message or str(error) or 'no message'}"


class StripeGateway:
    """The Stripe API as taskmeter uses it. `sleep` and `rng` are injectable for tests."""

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        max_retries: int = 3,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        collection_method: CollectionMethod = "charge_automatically",
        days_until_due: int = 30,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.collection_method = collection_method
        self.days_until_due = days_until_due
        self.sleep = sleep
        self.rng = rng or random.Random()

    @classmethod
    def from_settings(cls, settings: Any, **options: Any) -> StripeGateway:
        """From `api.settings.Settings` (taken untyped: pricing does not import api)."""
        if settings.stripe_api_key is None:
            raise ValueError("Stripe is off: TASKMETER_STRIPE_API_KEY is not set")
        client = stripe.StripeClient(
            settings.stripe_api_key.get_secret_value(),
            base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
            max_network_retries=0,
        )
        options.setdefault("max_retries", settings.stripe_max_retries)
        options.setdefault("collection_method", settings.stripe_collection_method)
        options.setdefault("days_until_due", settings.stripe_days_until_due)
        return cls(client, **options)

    # --- the calls --------------------------------------------------------------------------

    def create_customer(self, params: CustomerCreateParams, *, key: str) -> stripe.Customer:
        return self._call(
            "create customer", lambda: self.client.v1.customers.create(params, {"idempotency_key": key})
        )

    def create_invoice(self, params: InvoiceCreateParams, *, key: str) -> stripe.Invoice:
        params = {**params, "collection_method": self.collection_method}
        if self.collection_method == "send_invoice":
            params["days_until_due"] = self.days_until_due
        return self._call(
            "create invoice", lambda: self.client.v1.invoices.create(params, {"idempotency_key": key})
        )

    def create_invoice_item(self, params: InvoiceItemCreateParams, *, key: str) -> stripe.InvoiceItem:
        return self._call(
            "create invoice item",
            lambda: self.client.v1.invoice_items.create(params, {"idempotency_key": key}),
        )

    def finalize_invoice(self, invoice_id: str, *, key: str) -> stripe.Invoice:
        # auto_advance: from now on Stripe collects the invoice (charges or emails it) by itself.
        return self._call(
            "finalize invoice",
            lambda: self.client.v1.invoices.finalize_invoice(
                invoice_id, {"auto_advance": True}, {"idempotency_key": key}
            ),
        )

    def retrieve_invoice(self, invoice_id: str) -> stripe.Invoice:
        return self._call("retrieve invoice", lambda: self.client.v1.invoices.retrieve(invoice_id))

    def invoice_items(self, invoice_id: str) -> list[stripe.InvoiceItem]:
        """Every invoice item attached to the invoice (all pages)."""

        def fetch() -> list[stripe.InvoiceItem]:
            page = self.client.v1.invoice_items.list({"invoice": invoice_id, "limit": 100})
            return list(page.auto_paging_iter())

        return self._call("list invoice items", fetch)

    def invoices_of(self, customer_id: str) -> list[stripe.Invoice]:
        def fetch() -> list[stripe.Invoice]:
            page = self.client.v1.invoices.list({"customer": customer_id, "limit": 100})
            return list(page.auto_paging_iter())

        return self._call("list invoices", fetch)

    # --- retries ------------------------------------------------------------------------------

    def _call(self, what: str, call: Callable[[], T]) -> T:
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except stripe.StripeError as error:
                if attempt == self.max_retries or not is_transient(error):
                    raise
                delay = self.backoff(attempt)
                log.warning(
                    "Stripe %s failed (%s); retry %d in %.2fs", what, describe(error), attempt + 1, delay
                )
                self.sleep(delay)
        raise AssertionError("unreachable")

    def backoff(self, attempt: int) -> float:
        """Exponential, capped, with "equal jitter": between half and all of base * 2**attempt."""
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2**attempt)
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)
