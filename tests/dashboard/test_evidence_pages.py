"""The dashboard's drill-down over HTTP: an invoice line's tasks (paged, with the CSV), a task's
timeline (events and who sent each, settlement, versions, disputes), the month page's outcomes
panel; HTML-escaped, and another tenant's invoice or task is not found like one nobody has."""

from __future__ import annotations

import csv
import html
import io
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from html import unescape
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import select

from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.tenants import Tenant
from pricing import analysis
from pricing.disputes import open_dispute
from pricing.tables import invoice_lines, invoices
from tests.conftest import LiveServer
from tests.dashboard.conftest import csrf_of, sign_in
from tests.reports.conftest import Books


def acme_invoice(books: Books) -> tuple[int, dict[str, int]]:
    """acme's October invoice and its line numbers by kind."""
    with books.engine.connect() as connection:
        invoice_id = connection.execute(select(invoices.c.id).where(invoices.c.customer == "acme")).scalar_one()
        lines = connection.execute(
            select(invoice_lines.c.kind, invoice_lines.c.line_no).where(invoice_lines.c.invoice_id == invoice_id)
        ).all()
    return invoice_id, {kind: no for kind, no in lines}


class TestInvoiceLineTasks:
    def test_the_invoice_links_each_line_to_its_tasks_and_their_csv(self, dashboard: httpx.Client, october_books: Books) -> None:
        invoice_id, lines = acme_invoice(october_books)
        invoice = dashboard.get(f"/dashboard/invoices/{invoice_id}").text
        assert f'href="/dashboard/invoices/{invoice_id}/lines/{lines["jobs"]}"' in invoice
        page = dashboard.get(f"/dashboard/invoices/{invoice_id}/lines/{lines['jobs']}")
        assert page.status_code == 200
        assert 'data-task="a1"' in page.text and 'href="/dashboard/tasks/a1"' in page.text
        assert 'data-task="a2"' not in page.text  # failed: another line's
        failed = dashboard.get(f"/dashboard/invoices/{invoice_id}/lines/{lines['jobs_failed']}").text
        assert 'data-task="a2"' in failed and 'data-task="a1"' not in failed
        download = dashboard.get(f"/dashboard/invoices/{invoice_id}/lines/{lines['jobs']}/tasks.csv")
        assert download.status_code == 200 and download.headers["content-type"].startswith("text/csv")
        assert "attachment" in download.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(download.text)))
        assert [(r["task"], r["status"], r["task_type"]) for r in rows] == [("a1", "completed", "support_ticket")]
        assert f'href="/dashboard/invoices/{invoice_id}/lines/{lines["jobs"]}/tasks.csv"' in page.text

    def test_pages_of_tasks(self, dashboard: httpx.Client, october_books: Books) -> None:
        invoice_id, lines = acme_invoice(october_books)
        page = dashboard.get(f"/dashboard/invoices/{invoice_id}/lines/{lines['jobs']}", params={"page": 2}).text
        assert "data-task=" not in page and "data-next" not in page and "← previous" in page

    def test_a_line_that_does_not_exist_is_not_found(self, dashboard: httpx.Client, october_books: Books) -> None:
        invoice_id, _ = acme_invoice(october_books)
        assert dashboard.get(f"/dashboard/invoices/{invoice_id}/lines/99").status_code == 404
        assert dashboard.get(f"/dashboard/invoices/{invoice_id}/lines/99/tasks.csv").status_code == 404


class TestTaskTimeline:
    def test_events_in_order_with_who_sent_each_and_the_settlement(self, dashboard: httpx.Client, october_books: Books) -> None:
        page = dashboard.get("/dashboard/tasks/a1")
        assert page.status_code == 200
        text = page.text
        types = [t for t in ("task.started", "usage", "task.completed") if t in text]
        assert types == ["task.started", "usage", "task.completed"]
        assert text.index("task.started") < text.index(">usage<") < text.index("task.completed")
        assert "acme-ai/acme-large" in text and "1,000,000" in text
        assert "none (command line or bulk load)" in text  # the scenario's events came without a key
        assert "settled at 2026-10-10 10:00:00" in unescape(text)
        assert 'data-fact="outcome-rules">none (billable once completed)' in text
        assert "INV-acme-ai-202610-0001" in text  # the invoice that billed it, with its price version
        assert '<dd data-fact="price-version"><code>' in text

    def test_an_event_sent_with_a_key_names_it_with_its_actor_and_agent(
        self, dashboard: httpx.Client, live_server: LiveServer, october_books: Books, make_key: Callable[..., str]
    ) -> None:
        key = make_key(october_books.tenant, "ingest")
        event = {"id": "keyed-1", "type": "usage", "time": "2026-11-05T10:00:00Z", "customer": "acme", "task": "k1",
                 "provider": "acme-ai", "model": "acme-large", "input_tokens": 5, "output_tokens": 1,
                 "actor": "<ben>@acme.com", "agent": "ben/codex-3"}  # fmt: skip
        with live_server.client(key) as api:
            assert api.post("/v1/events", json=[event]).json()["accepted"] == 1
            assert api.get("/v1/tasks/k1/events").status_code == 403  # an ingest key reads nothing
        october_books.rollup()
        text = dashboard.get("/dashboard/tasks/k1").text
        assert f"<code>{key.split('_')[1]}</code>" in text and "data-key-id=" in text
        assert "&lt;ben&gt;@acme.com" in text and "ben/codex-3" in text
        assert 'data-fact="settlement">open' in text

    def test_a_task_whose_id_holds_slashes_has_its_page(
        self, dashboard: httpx.Client, live_server: LiveServer, october_books: Books, make_key: Callable[..., str]
    ) -> None:
        task = "acme/repo/pull/7?#%"
        event = {"id": "slashed-1", "type": "usage", "time": "2026-11-05T10:00:00Z", "customer": "acme", "task": task,
                 "provider": "acme-ai", "model": "acme-large", "input_tokens": 5, "output_tokens": 1}  # fmt: skip
        with live_server.client(make_key(october_books.tenant, "ingest")) as api:
            assert api.post("/v1/events", json=[event]).json()["accepted"] == 1
        october_books.rollup()
        page = dashboard.get(f"/dashboard/tasks/{quote(task, safe='')}")
        assert page.status_code == 200 and 'data-fact="settlement">open' in page.text
        assert html.escape(task) in page.text

    def test_a_dispute_shows_on_the_task(self, dashboard: httpx.Client, october_books: Books) -> None:
        with unit_of_work(october_books.engine) as session:
            open_dispute(session, october_books.tenant, "a1", reason="<b>never solved</b>", actor="test",
                         now=datetime(2026, 11, 2, tzinfo=UTC))  # fmt: skip
        text = dashboard.get("/dashboard/tasks/a1").text
        assert 'id="disputes"' in text and "&lt;b&gt;never solved&lt;/b&gt;" in text and "<b>never" not in text

    def test_an_unknown_task_is_not_found(self, dashboard: httpx.Client, october_books: Books) -> None:
        assert dashboard.get("/dashboard/tasks/no-such-task").status_code == 404


def _panel(page: str) -> str:
    panel = page[page.index('id="outcomes"'):]
    return panel[: panel.index("</section>")]


def _not_again(*args: object, **kwargs: object) -> None:
    raise AssertionError("the outcomes were computed again: the page reads them from the month's snapshot")


class TestMonthOutcomes:
    def test_the_month_page_shows_outcomes_per_task_type(self, dashboard: httpx.Client, october_books: Books) -> None:
        page = dashboard.get("/dashboard?month=2026-10").text
        assert 'id="outcomes"' in page
        panel = page[page.index('id="outcomes"'):]
        panel = panel[: panel.index("</section>")]
        # Without outcome rules settled = completed, nothing pending.
        rows = {r.split("</td>")[0].split(">")[-1]: r for r in panel.split("<tr>")[2:]}
        assert 'data-value="1"' in rows["support_ticket"]
        values = [v.split('"')[0] for v in rows["support_ticket"].split('data-value="')[1:]]
        assert values[:6] == ["1", "1", "0", "0", "0", "0"]
        assert Decimal(values[7]) == Decimal(values[6]) > 0  # one settled job: its price is the billed amount


    def test_the_panel_is_kept_with_the_months_snapshot(
        self, dashboard: httpx.Client, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = dashboard.get("/dashboard?month=2026-10").text  # the month's snapshot, outcomes with it
        monkeypatch.setattr(analysis, "month_outcomes", _not_again)
        again = dashboard.get("/dashboard?month=2026-10").text
        assert _panel(again) == _panel(first) and 'table class="outcomes"' in again

    def test_a_slow_month_shows_its_loading_page_then_the_panel(
        self, dashboard: httpx.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        release = threading.Event()
        compute = analysis.month_outcomes

        def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
            release.wait(20)
            return compute(*args, **kwargs)

        monkeypatch.setattr(analysis, "month_outcomes", slow)
        monkeypatch.setattr(settings, "dashboard_wait_seconds", 0.05)
        page = dashboard.get("/dashboard?month=2026-11").text  # open, never computed
        assert "Preparing the figures" in page
        release.set()
        monkeypatch.setattr(settings, "dashboard_wait_seconds", 10)
        page = dashboard.get("/dashboard?month=2026-11").text
        assert 'id="outcomes"' in page and "data-outcomes-note" not in page

    def test_a_customers_month_has_its_own_panel(self, dashboard: httpx.Client) -> None:
        page = dashboard.get("/dashboard?month=2026-10&customer=acme").text
        assert 'table class="outcomes"' in page and ">support_ticket<" in _panel(page)
        assert 'id="outcomes"' in (other := dashboard.get("/dashboard?month=2026-10&customer=globex").text)
        assert ">support_ticket<" not in _panel(other)  # acme's task

    def test_a_dispute_computes_the_panel_again(self, dashboard: httpx.Client, october_books: Books) -> None:
        def disputed() -> str:
            page = dashboard.get("/dashboard?month=2026-10").text
            panel = page[page.index('id="outcomes"'):]
            row = panel[panel.index(">support_ticket<"):]
            return [v.split('"')[0] for v in row[: row.index("</tr>")].split('data-value="')[1:]][5]

        assert disputed() == "0"
        with unit_of_work(october_books.engine) as session:
            open_dispute(session, october_books.tenant, "a1", reason="late", actor="test", now=datetime(2026, 10, 20, tzinfo=UTC))
        assert disputed() == "1"


class TestTenantIsolation:
    def test_another_tenants_invoice_line_and_task_are_not_found_like_nobodys(
        self, live_server: LiveServer, october_books: Books, make_tenant: Callable[..., Tenant], make_key: Callable[..., str]
    ) -> None:
        invoice_id, lines = acme_invoice(october_books)
        other = make_tenant("other-co")
        with sign_in(live_server, make_key(other, "read")) as client:
            for theirs, nobodys in (
                (f"/dashboard/invoices/{invoice_id}/lines/{lines['jobs']}", "/dashboard/invoices/987654/lines/1"),
                (f"/dashboard/invoices/{invoice_id}/lines/{lines['jobs']}/tasks.csv", "/dashboard/invoices/987654/lines/1/tasks.csv"),
                ("/dashboard/tasks/a1", "/dashboard/tasks/never-was"),
            ):  # fmt: skip
                a, b = client.get(theirs), client.get(nobodys)
                assert a.status_code == b.status_code == 404, theirs
                assert "acme" not in a.text and "a1</" not in a.text
                assert csrf_of(a.text)
