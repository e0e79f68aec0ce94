"""Stripe sync against localstripe on loopback (started by the tests): customers created once,
invoices pushed with their lines and finalized with totals equal to ours to the cent, crashes
and retries without duplicates, transient and permanent errors, and racing syncers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import stripe
from sqlalchemy import Engine, select

from api.settings import Settings
from metering.core.jobstate import Guard
from metering.core.tenants import Tenant
from pricing import stripe_sync
from pricing.stripe_gateway import StripeGateway, is_transient
from pricing.stripe_sync import metadata_of, sync_status, sync_tenant
from pricing.stripe_tables import stripe_sync_state
from tests.support.billing import NOW, Line, invoice_row, line_rows, make_invoice, stripe_customer_id
from tests.support.localstripe_server import LocalStripe
from tests.support.stripe_fakes import Crash, FaultyGateway, gateway, localstripe_server, ls, stripe_client

__all__ = ["gateway", "localstripe_server", "ls", "stripe_client"]  # fixtures

FOUR_LINES = [
    Line(12_000, "240 completed jobs x 0.50"),
    Line(1_234, "31 failed jobs x 0.398"),
    Line(990, "Platform fee", kind="fee"),
    Line(-150, "Late usage of 2026-09: 3 jobs turned failed", kind="adjustment", adjusts_period="2026-09"),
]


def items_on(client: stripe.StripeClient, stripe_invoice_id: str) -> list[Any]:
    return list(client.v1.invoice_items.list({"invoice": stripe_invoice_id, "limit": 100}).auto_paging_iter())


def all_invoices(client: stripe.StripeClient) -> list[Any]:
    return list(client.v1.invoices.list({"limit": 100}).auto_paging_iter())


def all_customers(client: stripe.StripeClient) -> list[Any]:
    return list(client.v1.customers.list({"limit": 100}).auto_paging_iter())


def sync(
    engine: Engine, tenant: Tenant, gateway: StripeGateway, *, after: timedelta = timedelta(0), **kwargs: Any
) -> stripe_sync.SyncReport:
    return sync_tenant(engine, tenant, gateway, now=NOW + after, **kwargs)


def assert_pushed_once(engine: Engine, client: stripe.StripeClient, invoice_id: int) -> None:
    """Stripe holds exactly one open invoice with one item per line, equal to ours to the cent."""
    ours = invoice_row(engine, invoice_id)
    lines = line_rows(engine, invoice_id)
    assert ours.stripe_status == "synced" and ours.stripe_error is None
    remote = client.v1.invoices.retrieve(ours.stripe_invoice_id)
    assert remote.status == "open"
    assert remote.total == ours.total_minor and remote.currency == ours.currency.lower()
    assert (
        remote.metadata["tm_invoice_id"] == str(invoice_id)
        and remote.metadata["tm_invoice_number"] == ours.number
    )
    matching = [i for i in all_invoices(client) if metadata_of(i).get("tm_invoice_id") == str(invoice_id)]
    assert [i.id for i in matching] == [remote.id]
    items = items_on(client, remote.id)
    assert sorted(i.id for i in items) == sorted(line.stripe_item_id for line in lines)
    by_line = {i.metadata["tm_line_id"]: i for i in items}
    assert len(by_line) == len(lines)
    for line in lines:
        item = by_line[str(line.id)]
        assert (item.amount, item.currency, item.description) == (
            line.amount_minor,
            ours.currency.lower(),
            line.description,
        )


class TestCustomers:
    def test_each_customer_is_created_once_and_its_id_stored(
        self, engine: Engine, tenant: Tenant, gateway: FaultyGateway, stripe_client: stripe.StripeClient
    ) -> None:
        make_invoice(engine, tenant, customer="acme", period="2026-09")
        make_invoice(engine, tenant, customer="acme", period="2026-10")
        make_invoice(engine, tenant, customer="globex", period="2026-10")
        assert len(sync(engine, tenant, gateway).synced) == 3
        make_invoice(engine, tenant, customer="acme", period="2026-11")
        assert len(sync(engine, tenant, gateway).synced) == 1

        customers = all_customers(stripe_client)
        assert sorted(c.metadata["tm_customer"] for c in customers) == ["acme", "globex"]
        assert {c.id for c in customers} == {
            stripe_customer_id(engine, tenant, "acme"),
            stripe_customer_id(engine, tenant, "globex"),
        }
        assert gateway.served["create customer"] == 2
        assert {i.customer for i in all_invoices(stripe_client)} == {c.id for c in customers}


class TestPush:
    def test_an_invoice_is_pushed_with_its_lines_finalized_and_equal_to_the_cent(
        self, engine: Engine, tenant: Tenant, gateway: FaultyGateway, stripe_client: stripe.StripeClient
    ) -> None:
        invoice_id = make_invoice(engine, tenant, lines=FOUR_LINES)
        report = sync(engine, tenant, gateway)

        ours = invoice_row(engine, invoice_id)
        assert report.synced == [ours.number] and not report.failed and not report.retrying
        assert ours.total_minor == 14_074
        assert_pushed_once(engine, stripe_client, invoice_id)
        remote = stripe_client.v1.invoices.retrieve(ours.stripe_invoice_id)
        assert remote.number is not None  # numbered by Stripe when finalized
        adjustment = [i for i in items_on(stripe_client, remote.id) if i.amount < 0]
        assert [(i.amount, i.metadata["tm_adjusts_period"], i.metadata["tm_kind"]) for i in adjustment] == [
            (-150, "2026-09", "adjustment")
        ]

    def test_a_zero_decimal_currency_in_its_minor_unit(
        self, engine: Engine, tenant: Tenant, gateway: FaultyGateway, stripe_client: stripe.StripeClient
    ) -> None:
        invoice_id = make_invoice(
            engine, tenant, currency="JPY", lines=[Line(1_500, "3 jobs x 500"), Line(1, "rounding")]
        )
        sync(engine, tenant, gateway)
        assert_pushed_once(engine, stripe_client, invoice_id)
        assert (
            stripe_client.v1.invoices.retrieve(invoice_row(engine, invoice_id).stripe_invoice_id).total
            == 1_501
        )

    def test_a_synced_invoice_is_never_pushed_again(
        self, engine: Engine, tenant: Tenant, gateway: FaultyGateway
    ) -> None:
        make_invoice(engine, tenant)
        sync(engine, tenant, gateway)
        calls = sum(gateway.served.values())
        assert sync(engine, tenant, gateway, after=timedelta(days=1)).synced == []
        assert sum(gateway.served.values()) == calls

    def test_oldest_first_and_each_once(
        self, engine: Engine, tenant: Tenant, gateway: FaultyGateway, stripe_client: stripe.StripeClient
    ) -> None:
        later = make_invoice(engine, tenant, period="2026-10", finalized_at=NOW)
        earlier = make_invoice(engine, tenant, period="2026-09", finalized_at=NOW - timedelta(days=30))
        report = sync(engine, tenant, gateway)
        assert report.synced == [invoice_row(engine, earlier).number, invoice_row(engine, later).number]
        assert len(all_invoices(stripe_client)) == 2


class TestCrashAndRetry:
    @pytest.mark.parametrize(
        "crash_point",
        [
            ("create customer", 1),
            ("create invoice", 1),
            ("create invoice item", 1),
            ("create invoice item", 2),
            ("create invoice item", 4),
            ("finalize invoice", 1),
        ],  # fmt: skip
        ids=lambda p: f"{p[0]}#{p[1]}".replace(" ", "-"),
    )
    def test_a_retry_after_a_crash_completes_without_duplicates(
        self, engine: Engine, tenant: Tenant, stripe_client: stripe.StripeClient, crash_point: tuple[str, int]
    ) -> None:
        invoice_id = make_invoice(engine, tenant, lines=FOUR_LINES)
        crashing = FaultyGateway(stripe_client)
        crashing.crash_after[crash_point[0]] = crash_point[1]
        with pytest.raises(Crash):
            sync(engine, tenant, crashing)
        assert invoice_row(engine, invoice_id).stripe_status == "pending"

        report = sync(engine, tenant, FaultyGateway(stripe_client), after=timedelta(minutes=1))
        assert report.synced == [invoice_row(engine, invoice_id).number]
        assert_pushed_once(engine, stripe_client, invoice_id)
        assert len(all_customers(stripe_client)) == 1

    def test_half_the_items_then_a_retry(
        self, engine: Engine, tenant: Tenant, stripe_client: stripe.StripeClient
    ) -> None:
        """The issue's scenario, step by step: Stripe has 2 items, we recorded 1, the retry adds 2."""
        invoice_id = make_invoice(engine, tenant, lines=FOUR_LINES)
        crashing = FaultyGateway(stripe_client)
        crashing.crash_after["create invoice item"] = 2
        with pytest.raises(Crash):
            sync(engine, tenant, crashing)
        draft = invoice_row(engine, invoice_id).stripe_invoice_id
        assert len(items_on(stripe_client, draft)) == 2
        assert [line.stripe_item_id is not None for line in line_rows(engine, invoice_id)] == [
            True,
            False,
            False,
            False,
        ]
        assert stripe_client.v1.invoices.retrieve(draft).status == "draft"

        retry = FaultyGateway(stripe_client)
        sync(engine, tenant, retry)
        assert retry.served["create invoice item"] == 2  # the 2nd item was found on the draft
        assert_pushed_once(engine, stripe_client, invoice_id)

    @pytest.mark.parametrize("crash_point", [("create invoice", 1), ("create invoice item", 3)])
    def test_without_duplicates_even_after_stripe_forgot_the_idempotency_keys(
        self, engine: Engine, tenant: Tenant, stripe_client: stripe.StripeClient, crash_point: tuple[str, int]
    ) -> None:
        invoice_id = make_invoice(engine, tenant, lines=FOUR_LINES)
        crashing = FaultyGateway(stripe_client)
        crashing.crash_after[crash_point[0]] = crash_point[1]
        with pytest.raises(Crash):
            sync(engine, tenant, crashing)

        two_days_later = FaultyGateway(stripe_client)
        two_days_later.key_suffix = "-48h"  # replaying under the old keys would not help now
        sync(engine, tenant, two_days_later, after=timedelta(days=2))
        assert_pushed_once(engine, stripe_client, invoice_id)


class TestTransientErrors:
    @pytest.mark.parametrize(
        "error",
        [
            stripe.APIConnectionError("connection reset"),
            stripe.RateLimitError("slow down", http_status=429),
            stripe.APIError("bad gateway", http_status=502),
            stripe.APIError("idempotent request in flight", http_status=409),
            stripe.InvalidRequestError("lock timeout", None, code="lock_timeout", http_status=400),
            stripe.InvalidRequestError(
                "retry me", None, http_status=400, headers={"Stripe-Should-Retry": "true"}
            ),
        ],
        ids=lambda e: type(e).__name__ + str(e.http_status),
    )
    def test_are_transient(self, error: stripe.StripeError) -> None:
        assert is_transient(error)

    @pytest.mark.parametrize(
        "error",
        [
            stripe.InvalidRequestError("No such customer", "customer", http_status=404),
            stripe.AuthenticationError("Invalid API Key", http_status=401),
            stripe.PermissionError("restricted key", http_status=403),
            stripe.IdempotencyError(
                "Keys for idempotent requests can only be used with the same parameters", http_status=400
            ),
            stripe.APIError("overloaded", http_status=503, headers={"Stripe-Should-Retry": "false"}),
        ],
        ids=lambda e: type(e).__name__ + str(e.http_status),
    )
    def test_are_permanent(self, error: stripe.StripeError) -> None:
        assert not is_transient(error)

    def test_retried_with_exponential_backoff_within_the_run(
        self, engine: Engine, tenant: Tenant, gateway: FaultyGateway, stripe_client: stripe.StripeClient
    ) -> None:
        invoice_id = make_invoice(engine, tenant, lines=FOUR_LINES)
        gateway.errors["create invoice item"] = [
            stripe.APIConnectionError("connection reset"),
            stripe.RateLimitError("slow down", http_status=429),
            stripe.APIError("internal", http_status=500),
        ]
        assert sync(engine, tenant, gateway).synced
        assert_pushed_once(engine, stripe_client, invoice_id)
        # 0.5 s doubling, with jitter between half and all of it
        assert len(gateway.sleeps) == 3
        for attempt, slept in enumerate(gateway.sleeps):
            assert 0.25 * 2**attempt <= slept <= 0.5 * 2**attempt

    def test_a_lasting_outage_waits_with_backoff_across_runs(
        self, engine: Engine, tenant: Tenant, stripe_client: stripe.StripeClient
    ) -> None:
        invoice_id = make_invoice(engine, tenant)
        down = FaultyGateway(stripe_client, max_retries=2)
        down.errors["create customer"] = [stripe.APIError("unavailable", http_status=503) for _ in range(6)]

        report = sync(engine, tenant, down)
        assert [r["attempts"] for r in report.retrying] == [1] and not report.synced
        row = invoice_row(engine, invoice_id)
        assert row.stripe_status == "retrying" and "503" in row.stripe_error
        assert report.retrying[0]["next_retry_at"] == (NOW + timedelta(minutes=1)).isoformat()

        assert sync(engine, tenant, down, after=timedelta(seconds=59)).retrying == []  # not yet due
        report = sync(engine, tenant, down, after=timedelta(seconds=60))
        assert report.retrying[0]["attempts"] == 2
        assert (
            report.retrying[0]["next_retry_at"]
            == (NOW + timedelta(seconds=60) + timedelta(minutes=2)).isoformat()
        )

        healthy = FaultyGateway(stripe_client)
        assert sync(engine, tenant, healthy, after=timedelta(minutes=2)).synced == []  # still waiting
        assert sync(engine, tenant, healthy, after=timedelta(minutes=3)).synced == [row.number]
        assert_pushed_once(engine, stripe_client, invoice_id)
        with engine.connect() as connection:
            assert connection.execute(select(stripe_sync_state)).all() == []


class TestPermanentErrors:
    def test_recorded_surfaced_and_not_retried_until_asked(
        self, engine: Engine, tenant: Tenant, gateway: FaultyGateway, stripe_client: stripe.StripeClient
    ) -> None:
        make_invoice(engine, tenant, period="2026-09")
        sync(engine, tenant, gateway)
        # someone deletes the customer in Stripe's dashboard: its stored id is now invalid
        stripe_client.v1.customers.delete(stripe_customer_id(engine, tenant))
        invoice_id = make_invoice(engine, tenant, period="2026-10")

        report = sync(engine, tenant, gateway)
        row = invoice_row(engine, invoice_id)
        assert row.stripe_status == "failed"
        assert row.stripe_error.startswith("InvalidRequestError 404")
        assert report.failed == [{"invoice": row.number, "error": row.stripe_error, "attempts": 1}]
        assert gateway.sleeps == []  # not retried within the run either

        with engine.connect() as connection, connection.begin():
            from sqlalchemy.orm import Session

            status = sync_status(Session(bind=connection), tenant.id)
        assert status["counts"] == {"synced": 1, "failed": 1}
        assert [(u["number"], u["stripe_status"], u["stripe_error"]) for u in status["unsynced"]] == [
            (row.number, "failed", row.stripe_error)
        ]

        calls = sum(gateway.served.values())
        assert sync(engine, tenant, gateway, after=timedelta(days=1)).failed == []
        assert sum(gateway.served.values()) == calls
        assert (
            sync(engine, tenant, gateway, after=timedelta(days=1), retry_failed=True).failed[0]["attempts"]
            == 2
        )

    def test_an_auth_error_stops_the_run(
        self, engine: Engine, tenant: Tenant, gateway: FaultyGateway
    ) -> None:
        first = make_invoice(engine, tenant, customer="acme")
        second = make_invoice(engine, tenant, customer="globex")
        gateway.errors["create customer"] = [
            stripe.AuthenticationError("Invalid API Key provided", http_status=401)
        ]
        report = sync(engine, tenant, gateway)
        assert report.aborted is not None and "AuthenticationError 401" in report.aborted
        assert invoice_row(engine, first).stripe_status == "failed"
        assert invoice_row(engine, second).stripe_status is None  # untouched

    def test_a_total_mismatch_is_never_finalized(
        self, engine: Engine, tenant: Tenant, gateway: FaultyGateway, stripe_client: stripe.StripeClient
    ) -> None:
        invoice_id = make_invoice(engine, tenant, lines=FOUR_LINES)
        gateway.tamper = 1  # one cent more on every item
        report = sync(engine, tenant, gateway)
        row = invoice_row(engine, invoice_id)
        assert row.stripe_status == "failed" and "total 14078 != ours 14074" in row.stripe_error
        assert report.failed[0]["invoice"] == row.number
        assert stripe_client.v1.invoices.retrieve(row.stripe_invoice_id).status == "draft"

    def test_a_customer_without_config_is_reported(
        self, engine: Engine, tenant: Tenant, gateway: FaultyGateway
    ) -> None:
        from sqlalchemy import delete

        from pricing.tables import customers

        invoice_id = make_invoice(engine, tenant)
        with engine.begin() as connection:
            connection.execute(delete(customers))
        assert "not configured" in sync(engine, tenant, gateway).failed[0]["error"]
        assert invoice_row(engine, invoice_id).stripe_status == "failed"


class TestRacing:
    def _race(
        self, engine: Engine, tenant: Tenant, gateways: list[StripeGateway]
    ) -> list[stripe_sync.SyncReport]:
        start = threading.Barrier(len(gateways))
        reports: list[stripe_sync.SyncReport] = []
        errors: list[BaseException] = []

        def worker(gw: StripeGateway) -> None:
            start.wait()
            try:
                reports.append(sync(engine, tenant, gw))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(gw,)) for gw in gateways]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        return reports

    def test_two_syncers_racing_push_each_invoice_once(
        self, engine: Engine, tenant: Tenant, stripe_client: stripe.StripeClient
    ) -> None:
        ids = [make_invoice(engine, tenant, customer=c, lines=FOUR_LINES) for c in ("acme", "globex")]
        gateways = [FaultyGateway(stripe_client), FaultyGateway(stripe_client)]
        for gw in gateways:
            gw.delay = 0.05
        reports = self._race(engine, tenant, gateways)
        assert sorted(n for r in reports for n in r.synced) == sorted(
            invoice_row(engine, i).number for i in ids
        )
        assert sorted(r.busy for r in reports) == [False, True]
        for invoice_id in ids:
            assert_pushed_once(engine, stripe_client, invoice_id)
        assert len(all_customers(stripe_client)) == 2

    def test_even_without_the_guard_the_idempotency_keys_prevent_duplicates(
        self,
        engine: Engine,
        tenant: Tenant,
        stripe_client: stripe.StripeClient,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        @contextmanager
        def no_guard(*args: Any, **kwargs: Any) -> Iterator[Any]:
            yield Guard("none", lambda: True)

        monkeypatch.setattr(stripe_sync, "hold", no_guard)
        invoice_id = make_invoice(engine, tenant, lines=FOUR_LINES)
        gateways = [FaultyGateway(stripe_client) for _ in range(3)]
        for gw in gateways:
            gw.delay = 0.02
        reports = self._race(engine, tenant, gateways)
        assert not any(r.busy for r in reports)
        assert_pushed_once(engine, stripe_client, invoice_id)
        assert len(all_customers(stripe_client)) == 1


class TestSettings:
    def test_from_settings_points_the_sdk_at_the_configured_base(
        self, settings: Settings, ls: LocalStripe
    ) -> None:
        configured = settings.model_copy(
            update={"stripe_api_key": _secret(ls.api_key), "stripe_api_base": ls.url, "stripe_max_retries": 5}
        )
        gw = StripeGateway.from_settings(configured)
        assert gw.max_retries == 5
        assert gw.client.v1.customers.create({"name": "x"}).id.startswith("cus_")

    def test_off_without_an_api_key(self, settings: Settings) -> None:
        with pytest.raises(ValueError, match="Stripe is off"):
            StripeGateway.from_settings(settings)


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


class TestScheduledSync:
    def test_two_schedulers_racing_push_each_invoice_once(
        self, settings: Settings, engine: Engine, tenant: Tenant, ls: LocalStripe
    ) -> None:
        from api.scheduler import TaskmeterScheduler

        ids = [
            make_invoice(engine, tenant, customer=c, lines=FOUR_LINES) for c in ("acme", "globex", "initech")
        ]
        configured = settings.model_copy(
            update={
                "stripe_api_key": _secret(ls.api_key), "stripe_api_base": ls.url, "stripe_sync_interval_seconds": 0.1,
                "rollup_interval_seconds": 0.5, "close_check_seconds": 600,
            }
        )  # fmt: skip
        schedulers = [TaskmeterScheduler(configured, engine).start() for _ in range(2)]
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(
                invoice_row(engine, i).stripe_status != "synced" for i in ids
            ):
                time.sleep(0.05)
            time.sleep(0.5)  # both keep running the job
        finally:
            for scheduler in schedulers:
                scheduler.shutdown()
        client = ls.client()
        for invoice_id in ids:
            assert_pushed_once(engine, client, invoice_id)
        assert len(all_invoices(client)) == 3 and len(all_customers(client)) == 3
