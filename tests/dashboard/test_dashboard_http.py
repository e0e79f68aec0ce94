"""The dashboard over HTTP, as a browser without script sees it: sign-in, cookies, CSRF, the
Content-Security-Policy, tenant isolation, and the page's numbers against the CSV files."""

from __future__ import annotations

import csv
import io
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape

import httpx
import pytest
import stripe
from sqlalchemy import select

from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.tenants import Tenant, revoke_api_key
from pricing.stripe_sync import sync_tenant
from pricing.tables import invoices
from reports import snapshots
from reports.format import money
from tests.conftest import LiveServer
from tests.dashboard.conftest import CLOSE, csrf_of, sign_in
from tests.reports.conftest import Books, send_october, usage
from tests.reports.conftest import ended as ended_event
from tests.support.stripe_fakes import FaultyGateway, gateway, localstripe_server, ls, stripe_client

__all__ = ["gateway", "localstripe_server", "ls", "stripe_client"]  # fixtures


def cookie_headers(response: httpx.Response, name: str) -> list[str]:
    return [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]


class TestSignIn:
    def test_unauthenticated_pages_redirect_to_sign_in(
        self, live_server: LiveServer, october_books: Books
    ) -> None:
        with httpx.Client(base_url=live_server.url) as client:
            for path in ("/dashboard", "/dashboard?month=2026-10&customer=acme", "/dashboard/customers/acme/tasks?month=2026-10",
                         "/dashboard/invoices/1", "/dashboard/reports/2026-10/customers.csv"):  # fmt: skip
                response = client.get(path)
                assert response.status_code == 303, path
                assert response.headers["location"].startswith("/dashboard/sign-in?next=%2Fdashboard")

    def test_the_key_becomes_a_signed_http_only_cookie(
        self, live_server: LiveServer, october_books: Books, make_key: Callable[..., str]
    ) -> None:
        key = make_key(october_books.tenant, "read")
        with httpx.Client(base_url=live_server.url) as client:
            page = client.get("/dashboard/sign-in")
            [csrf_cookie] = cookie_headers(page, "tm_csrf")
            assert (
                "HttpOnly" in csrf_cookie
                and "SameSite=lax" in csrf_cookie
                and "Path=/dashboard" in csrf_cookie
            )
            response = client.post(
                "/dashboard/sign-in",
                data={"csrf": csrf_of(page.text), "key": key, "next": "/dashboard?month=2026-10"},
            )
            assert response.status_code == 303 and response.headers["location"] == "/dashboard?month=2026-10"
            [session] = cookie_headers(response, "tm_dashboard")
            assert (
                "HttpOnly" in session and "SameSite=lax" in session and "Secure" not in session
            )  # plain http here
            assert (
                key not in session and key.split("_", 2)[2] not in session
            )  # never the key, nor its secret part
            assert client.get("/dashboard?month=2026-10").status_code == 200

    def test_secure_cookies_over_https(
        self, live_server: LiveServer, october_books: Books, make_key: Callable[..., str]
    ) -> None:
        # uvicorn trusts X-Forwarded-Proto from 127.0.0.1: the request is seen as https.
        with httpx.Client(base_url=live_server.url, headers={"X-Forwarded-Proto": "https"}) as client:
            page = client.get("/dashboard/sign-in")
            response = client.post(
                "/dashboard/sign-in",
                data={"csrf": csrf_of(page.text), "key": make_key(october_books.tenant, "read")},
            )
            assert all(
                "Secure" in h
                for h in cookie_headers(response, "tm_dashboard") + cookie_headers(page, "tm_csrf")
            )

    @pytest.mark.parametrize(("scopes", "key", "status", "message"), [
        ("read", "tm_000000000000_nope-nope-nope-nope-nope", 401, "not valid"),
        ("ingest", None, 403, "lacks the read scope"),
    ])  # fmt: skip
    def test_bad_keys_are_refused(self, live_server: LiveServer, october_books: Books, make_key: Callable[..., str],
                                  scopes: str, key: str | None, status: int, message: str) -> None:  # fmt: skip
        key = key or make_key(october_books.tenant, scopes)
        with httpx.Client(base_url=live_server.url) as client:
            page = client.get("/dashboard/sign-in")
            response = client.post("/dashboard/sign-in", data={"csrf": csrf_of(page.text), "key": key})
            assert response.status_code == status and message in response.text
            assert not cookie_headers(response, "tm_dashboard")

    def test_the_forms_need_their_csrf_token(
        self, live_server: LiveServer, october_books: Books, make_key: Callable[..., str]
    ) -> None:
        key = make_key(october_books.tenant, "read")
        with httpx.Client(base_url=live_server.url) as client:
            page = client.get("/dashboard/sign-in")
            assert client.post("/dashboard/sign-in", data={"key": key}).status_code == 400
            assert client.post("/dashboard/sign-in", data={"csrf": "forged", "key": key}).status_code == 400
            other_site = client.post("/dashboard/sign-in", data={"csrf": csrf_of(page.text), "key": key},
                                     headers={"Origin": "https://evil.example"})  # fmt: skip
            assert other_site.status_code == 400
        with sign_in(live_server, key) as client:
            assert client.post("/dashboard/sign-out", data={"csrf": "forged"}).status_code == 400
            assert client.get("/dashboard").status_code == 200  # still signed in

    def test_sign_out(
        self, live_server: LiveServer, october_books: Books, make_key: Callable[..., str]
    ) -> None:
        with sign_in(live_server, make_key(october_books.tenant, "read")) as client:
            page = client.get("/dashboard")
            response = client.post("/dashboard/sign-out", data={"csrf": csrf_of(page.text)})
            assert response.status_code == 303 and response.headers["location"] == "/dashboard/sign-in"
            assert client.get("/dashboard").status_code == 303

    def test_a_revoked_key_ends_its_sessions_and_tampered_cookies_count_for_nothing(
        self, live_server: LiveServer, october_books: Books, make_key: Callable[..., str], engine
    ) -> None:  # type: ignore[no-untyped-def]
        key = make_key(october_books.tenant, "read")
        with sign_in(live_server, key) as client:
            token = client.cookies["tm_dashboard"]
            key_id, expires, nonce, signature = token.split(".")
            client.cookies.set(
                "tm_dashboard", f"{int(key_id) + 1}.{expires}.{nonce}.{signature}", path="/dashboard"
            )
            assert client.get("/dashboard").status_code == 303
            client.cookies.set("tm_dashboard", token, path="/dashboard")
            assert client.get("/dashboard").status_code == 200
            with unit_of_work(engine) as session:
                revoke_api_key(session, october_books.tenant, key.split("_")[1], now=datetime.now(UTC))
            assert client.get("/dashboard").status_code == 303

    def test_next_never_leaves_the_dashboard(
        self, live_server: LiveServer, october_books: Books, make_key: Callable[..., str]
    ) -> None:
        with httpx.Client(base_url=live_server.url) as client:
            page = client.get("/dashboard/sign-in")
            for target in ("https://evil.example/", "//evil.example/dashboard", "/v1/events"):
                response = client.post("/dashboard/sign-in", data={"csrf": csrf_of(page.text), "key": make_key(october_books.tenant, "read"),
                                                                   "next": target})  # fmt: skip
                assert response.headers["location"] == "/dashboard"


class TestPages:
    def test_content_security_policy_without_inline_code(self, dashboard: httpx.Client) -> None:
        for path in ("/dashboard?month=2026-10", "/dashboard?month=2026-10&customer=acme", "/dashboard/sign-in",
                     "/dashboard/customers/acme/tasks?month=2026-10"):  # fmt: skip
            response = dashboard.get(path)
            policy = response.headers["content-security-policy"]
            assert (
                "script-src 'self'" in policy
                and "unsafe-inline" not in policy
                and "frame-ancestors 'none'" in policy
            )
            assert response.headers["x-content-type-options"] == "nosniff"
            html = response.text
            assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
            assert " style=" not in html and "<style" not in html, "inline style"
            assert (
                "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
                and "https://" not in html
            )

    def test_static_files(self, dashboard: httpx.Client) -> None:
        assert dashboard.get("/dashboard/static/dashboard.css").headers["content-type"].startswith("text/css")
        assert (
            dashboard.get("/dashboard/static/dashboard.js")
            .headers["content-type"]
            .startswith("text/javascript")
        )
        assert dashboard.get("/dashboard/static/favicon.svg").headers["content-type"] == "image/svg+xml"
        assert dashboard.get("/dashboard/static/..%2Fmonthly.py").status_code == 404
        assert dashboard.get("/dashboard/static/monthly.py").status_code == 404

    def test_the_customers_table_shows_the_customers_csv(self, dashboard: httpx.Client) -> None:
        page = dashboard.get("/dashboard?month=2026-10").text
        file = dashboard.get("/dashboard/reports/2026-10/customers.csv")
        assert (
            file.status_code == 200
            and file.headers["content-disposition"] == 'attachment; filename="customers-2026-10.csv"'
        )
        rows = list(csv.DictReader(io.StringIO(file.text, newline="")))
        table = page[page.index('<table class="customers"') :]
        table = table[: table.index("</table>")]
        for row in rows:
            start = table.index(f'data-customer="{row["customer"]}"')
            cells = re.findall(r'data-value="([^"]*)"', table[start : table.find("</tr>", start)])
            assert cells[0] == row["tasks_completed"]
            assert cells[1:] == [row["provider_cost"], row["amount_due"], row["margin"]]
        assert "$5.81" in page  # revenue: 1.25 + 4.56
        assert "$8.13" in page  # provider cost: 5.850000 + 2.280000
        assert "−$2.32" in page  # margin

    def test_a_customer_view_shows_its_own_numbers_and_links(
        self, dashboard: httpx.Client, october_books: Books
    ) -> None:
        page = unescape(dashboard.get("/dashboard?month=2026-10&customer=acme").text)
        assert (
            "acme" in page and "globex" not in page.split('<select name="customer"')[1].split("</select>")[1]
        )
        with october_books.engine.connect() as connection:
            invoice_id = connection.execute(
                select(invoices.c.id).where(invoices.c.customer == "acme")
            ).scalar_one()
        assert (
            f"/dashboard/invoices/{invoice_id}" in page
            and "/dashboard/customers/acme/tasks?month=2026-10" in page
        )
        invoice = dashboard.get(f"/dashboard/invoices/{invoice_id}").text
        assert "INV-acme-ai-202610-0001" in invoice and 'data-total="1.25"' in invoice
        tasks = dashboard.get("/dashboard/customers/acme/tasks?month=2026-10").text
        assert (
            re.findall(r'data-value="([0-9.]+)"', tasks)[-1] == "0.750000" and tasks.count("<tr>") == 4
        )  # header + a1, a2, a3

    def test_the_draft_of_an_open_month(self, dashboard: httpx.Client) -> None:
        page = dashboard.get("/dashboard?month=2026-11").text
        assert "open · draft invoices" in page
        draft = dashboard.get("/dashboard/customers/globex/invoice?month=2026-11").text
        assert "Draft invoice" in draft and 'data-total="0.60"' in draft

    def test_the_default_month_is_the_last_closed_one(self, dashboard: httpx.Client) -> None:
        assert "<h1>October 2026" in dashboard.get("/dashboard").text

    def test_unknown_months_and_customers_are_not_found(self, dashboard: httpx.Client) -> None:
        assert dashboard.get("/dashboard?month=2026-13").status_code == 404
        assert dashboard.get("/dashboard", params={"month": "1\u066000-01"}).status_code == 404  # an Arabic-Indic zero
        assert dashboard.get("/dashboard?month=2026-10&customer=nobody").status_code == 404
        assert dashboard.get("/dashboard/customers/nobody/tasks?month=2026-10").status_code == 404
        assert dashboard.get("/dashboard/reports/2026-10/secrets.csv").status_code == 404


class TestTenantIsolation:
    def test_another_tenants_customers_and_invoices_are_not_found(self, live_server: LiveServer, october_books: Books,
                                                                  make_tenant: Callable[..., Tenant], make_key: Callable[..., str]) -> None:  # fmt: skip
        with october_books.engine.connect() as connection:
            invoice_id = connection.execute(
                select(invoices.c.id).where(invoices.c.customer == "acme")
            ).scalar_one()
        other = make_tenant("other-co")
        with sign_in(live_server, make_key(other, "read")) as client:
            for path in ("/dashboard?month=2026-10&customer={}", "/dashboard/customers/{}/tasks?month=2026-10",
                         "/dashboard/customers/{}/invoice?month=2026-11"):  # fmt: skip
                theirs, nobodys = client.get(path.format("acme")), client.get(path.format("never-was"))
                assert theirs.status_code == nobodys.status_code == 404, path
                assert theirs.text.replace("acme", "never-was") == nobodys.text.replace(
                    csrf_of(nobodys.text), csrf_of(theirs.text)
                )
            assert client.get(f"/dashboard/invoices/{invoice_id}").status_code == 404
            page = client.get("/dashboard?month=2026-10").text
            assert (
                "No usage in October 2026 yet" in page and "globex" not in page
            )  # a new tenant's empty state
            assert client.get("/dashboard/reports/2026-10/customers.csv").text.count("\r\n") == 1


class TestSnapshots:
    def test_a_large_month_shows_a_loading_state_then_its_figures(
        self, dashboard: httpx.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        release = threading.Event()
        compute = snapshots.refresh

        def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
            release.wait(20)
            return compute(*args, **kwargs)

        monkeypatch.setattr(snapshots, "refresh", slow)
        monkeypatch.setattr(settings, "dashboard_wait_seconds", 0.05)
        loading = dashboard.get("/dashboard?month=2026-10")
        assert loading.status_code == 200 and "Preparing the figures of October 2026" in loading.text
        assert '<meta http-equiv="refresh" content="3">' in loading.text
        release.set()
        monkeypatch.setattr(settings, "dashboard_wait_seconds", 10)
        assert "Top customers by revenue" in dashboard.get("/dashboard?month=2026-10").text

    def test_figures_are_recomputed_when_what_they_depend_on_changes(
        self, dashboard: httpx.Client, october_books: Books
    ) -> None:
        assert "open · draft invoices" in dashboard.get("/dashboard?month=2026-11").text
        october_books.close("2026-11", now=datetime(2026, 12, 1, 1, tzinfo=UTC))
        page = dashboard.get("/dashboard?month=2026-11").text
        assert "closed · invoices final" in page and "INV-acme-ai-202611-0001" in page


class TestStripeFailures:
    def test_an_invoice_stripe_refused_is_flagged_on_the_month_and_explained_on_its_page(
        self, dashboard: httpx.Client, october_books: Books, gateway: FaultyGateway
    ) -> None:
        # The first invoice pushed is refused for good (Stripe lost the customer); the other goes through.
        gateway.errors["create invoice"] = [stripe.InvalidRequestError("No such customer: 'cus_gone'", "customer", http_status=404)]
        report = sync_tenant(october_books.engine, october_books.tenant, gateway, now=CLOSE + timedelta(hours=1))
        [failed] = report.failed
        [synced] = report.synced
        with october_books.engine.connect() as connection:
            rows = {r.number: r for r in connection.execute(select(invoices).where(invoices.c.status == "finalized"))}
        bad, good = rows[failed["invoice"]], rows[synced]

        month = unescape(dashboard.get("/dashboard?month=2026-10").text)
        notice = re.search(r"<p class=\"notice warn\" data-stripe-failures>(.*?)</p>", month, re.S)
        assert notice is not None and notice.group(1).startswith("1 invoice(s) could not be pushed to Stripe")
        assert f'href="/dashboard/invoices/{bad.id}">{bad.number}</a>' in notice.group(1)
        assert good.number not in notice.group(1)
        # A view of the other customer does not carry it; one of the refused invoice's customer does.
        assert "data-stripe-failures" not in dashboard.get(f"/dashboard?month=2026-10&customer={good.customer}").text
        assert "data-stripe-failures" in dashboard.get(f"/dashboard?month=2026-10&customer={bad.customer}").text

        page = unescape(dashboard.get(f"/dashboard/invoices/{bad.id}").text)
        assert "Stripe refused it" in page
        error = re.search(r"<p class=\"notice warn\" data-stripe-error>(.*?)</p>", page, re.S)
        assert error is not None and error.group(1).startswith(f"{bad.stripe_error}.")
        assert bad.stripe_error.startswith("InvalidRequestError 404") and "cus_gone" in bad.stripe_error
        synced_page = dashboard.get(f"/dashboard/invoices/{good.id}").text
        assert "in Stripe" in synced_page and "data-stripe-error" not in synced_page


def text_of(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def without_histograms(html: str) -> str:
    """The page without the cost-per-task histograms (their axes are per-task costs: $0.001)."""
    return re.sub(r'<svg class="chart histogram".*?</svg>', "", html, flags=re.S)


def between(html: str, start: str, end: str) -> str:
    found = html[html.index(start) :]
    return found[: found.index(end)]


class TestHowPeopleReadIt:
    def test_money_is_shown_in_the_minor_unit_six_decimals_only_for_a_tasks_cost(self, dashboard: httpx.Client) -> None:
        page = dashboard.get("/dashboard?month=2026-10").text
        cells = re.findall(r'data-value="(-?[0-9.]+)">([^<]*)<', between(page, '<table class="compare"', "</table>"))
        cells += re.findall(r'data-value="(-?[0-9.]+)">([^<]*\$[^<]*)<', between(page, '<table class="customers"', "</table>"))
        # The CSV's six-decimal costs and break-even prices, rounded half up once to cents on the page.
        assert ("11.700000", "$11.70") in cells and ("5.850000", "$5.85") in cells and ("2.280000", "$2.28") in cells
        for value, text in cells:
            assert text == money(Decimal(value), "USD") and re.fullmatch(r"−?\$[\d,]+\.\d\d", text), (value, text)
        text = text_of(without_histograms(page))
        assert re.findall(r"average cost per task (\S+)", text) == ["$1.200000", "$1.980000", "$4.500000"]
        assert not re.findall(r"\$[\d,]*\.\d{3,}", re.sub(r"average cost per task \S+", "", text))
        tasks = text_of(dashboard.get("/dashboard/customers/acme/tasks?month=2026-10").text)
        assert re.findall(r"\$\S+", tasks) == ["$4.500000", "$0.600000", "$0.750000"]  # per task: six decimals

    def test_times_to_the_second(self, dashboard: httpx.Client) -> None:
        page = dashboard.get("/dashboard?month=2026-10").text
        assert re.search(r"figures as of \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d UTC", page)
        tasks = text_of(dashboard.get("/dashboard/customers/acme/tasks?month=2026-10").text)
        assert re.findall(r"\d{4}-\d\d-\d\d[ T][\d:.]+", tasks) == [
            "2026-10-10 09:00:00", "2026-10-10 10:00:00", "2026-10-20 12:05:00"  # a2 ended at 12:05:00.250
        ]  # fmt: skip

    def test_invoice_lines_have_grouped_quantities_and_priced_units(self, dashboard: httpx.Client) -> None:
        lines = text_of(between(dashboard.get("/dashboard/customers/globex/invoice?month=2026-11").text, "<table", "</table>"))
        assert lines.split() == "Line Description Quantity Unit price Amount 1 Input tokens, price per 1M tokens 100,000 $6.00 $0.60".split()

    def test_the_months_chart_shows_the_twelve_months_it_names(self, dashboard: httpx.Client) -> None:
        chart = between(dashboard.get("/dashboard?month=2026-10").text, "the 12 months to October 2026", "</section>")
        months = re.findall(r'<text class="axis[^"]*"[^>]*>([A-Z][a-z]{2}(?: \d\d)?)</text>', chart)
        assert months == ["Nov 25", "Dec", "Jan 26", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct"]
        assert "No usage before September 2026." in chart  # globex's g2 began on Sep 30

    def test_empty_panels_say_why(self, live_server: LiveServer, make_books: Callable[..., Books],
                                  make_key: Callable[..., str]) -> None:  # fmt: skip
        # Usage of a model without a price, and no plans: nothing billed, no provider cost.
        books = make_books("blank-co", configured=False)
        books.send(usage("x1", "2026-10-05T08:00:00Z", input_tokens=1000), ended_event("x1", "2026-10-05T08:01:00Z"))
        books.rollup()
        with sign_in(live_server, make_key(books.tenant, "read")) as client:
            page = client.get("/dashboard?month=2026-10").text
        empty = [text_of(p) for p in re.findall(r"<p class=\"muted[^\"]*\" data-empty-chart>(.*?)</p>", page, re.S)]
        no_plan = "No customer has a plan yet, so nothing is billed: assign plans with taskmeter config load ."
        assert empty == [  # the 12 months, top customers by revenue and by margin
            "No revenue and no provider cost in these months: figures appear once agents report usage.", no_plan, no_plan,
        ]  # fmt: skip
        assert "<svg" not in between(page, "the 12 months to October 2026", "</section>")
        assert "No customer with a plan has usage this month." in page
        assert "No task failed or was cancelled this month." in page
        assert "No usage of closed months arrived late." in page
        assert "acme-ai/acme-large 1 1" in text_of(between(page, "<h2>Unpriced models</h2>", "</section>")).replace(" / ", "/")
        # The totals say that they leave the unpriced usage out.
        assert "leaves out 1 unpriced usage event" in text_of(between(page, 'data-kpi="provider-cost"', "</div></div>"))

    def test_a_currency_without_decimals(self, live_server: LiveServer, make_books: Callable[..., Books],
                                         make_key: Callable[..., str]) -> None:  # fmt: skip
        books = make_books("yen-co", currency="JPY")
        send_october(books)
        books.rollup()
        books.close("2026-10", now=CLOSE)
        with sign_in(live_server, make_key(books.tenant, "read")) as client:
            page = text_of(without_histograms(client.get("/dashboard?month=2026-10").text))
        assert "$" not in page
        # Amounts have no decimals; a task's cost keeps six, a price per job its own (¥0.5 here).
        assert re.findall(r"· job price (\S+)", page) == ["¥0.5", "¥0.5", "¥1.2"]
        amounts = re.findall(r"−?¥[\d,.]+", re.sub(r"(average cost per task|· job price) \S+", "", page))
        assert amounts and [a for a in amounts if not re.fullmatch(r"−?¥\d{1,3}(,\d{3})*", a)] == [], amounts
        assert re.findall(r"average cost per task (\S+)", page) == ["¥1.200000", "¥1.980000", "¥4.500000"]
        kpis = re.findall(r"(Revenue|Provider cost|Margin) (−?¥[\d,]+)", page)[:3]
        assert kpis == [("Revenue", "¥6"), ("Provider cost", "¥8"), ("Margin", "−¥2")]
