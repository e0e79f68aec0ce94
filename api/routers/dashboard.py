"""The finance dashboard at /dashboard: sign-in with a read-scoped key, then a tenant's month
(all customers or one), its invoices and tasks, and the month's CSVs.

Pages are rendered on the server (`reports.month_page`, `reports.pages`) with charts as inline
SVG; the one stylesheet and script are files of the package. Every response carries a
Content-Security-Policy without inline script or style. Everything is scoped by the tenant of
the signed-in key: another tenant's customer or invoice is simply not found.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api import dashboard_http as web
from api.csv_http import csv_response
from api.dashboard_refresh import SnapshotRefresher
from api.routers import dashboard_auth
from metering.core.errors import InvalidInput, NotFound
from metering.core.periods import Period, parse_month, period_of
from metering.core.tenants import Tenant
from metering.rollup import quarantine
from metering.spend import alerts, budget_repository
from metering.spend import counters as spend
from pricing import evidence, timeline
from pricing.service import require_customer
from reports import budget_page, dashboard, evidence_pages, month_page, pages, repository, snapshots
from reports import evidence as evidence_csv
from reports.billed import month_invoices
from reports.columns import TASKS
from reports.month_data import begin_snapshot
from reports.tasks import task_batches


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    for name in ("dashboard_refresher",):
        worker = getattr(app.state, name, None)
        if worker is not None:  # let a computation under way finish with the engine still open
            await run_in_threadpool(worker.shutdown)


router = APIRouter(prefix="/dashboard", include_in_schema=False, lifespan=_lifespan, route_class=web.DashboardRoute)
router.include_router(dashboard_auth.router)

TASKS_PER_PAGE = pages.TASKS_PER_PAGE
MONTHS_LISTED = 36


def _refresher(request: Request) -> SnapshotRefresher:
    state = request.app.state
    if getattr(state, "dashboard_refresher", None) is None:
        state.dashboard_refresher = SnapshotRefresher(state.engine)
    return state.dashboard_refresher  # type: ignore[no-any-return]


# --- the month ----------------------------------------------------------------------------------------------


@router.get("")
def month(
    request: Request,
    signed: web.SignedInPage,
    month: Annotated[str | None, Query()] = None,
    customer: Annotated[str | None, Query()] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    tenant = signed.tenant
    now = datetime.now(UTC)
    engine = web.engine(request)
    with Session(engine) as session:
        closed = repository.closed_months(session, tenant.id)
        try:
            period = _chosen_month(month, tenant, closed, now)
        except InvalidInput:
            return signed.not_found(f"There is no month {month!r}: months look like 2026-10.")
        if customer:
            try:
                require_customer(session, tenant, customer)
            except NotFound:
                return signed.not_found(f"There is no customer {customer!r}.")
        months = _months(session, tenant, period, now)
        choices = sorted(set(repository.known_customers(session, tenant.id)))
        stripe_failures = tuple(
            f for f in repository.stripe_failures(session, tenant.id) if customer in (None, "", f["customer"])
        )
        quarantined = quarantine.count(session, tenant.id)
    if customer:
        view, series = _customer_month(engine, tenant, period, customer, closed, now)
        as_of, freshness = None, "live"
    else:
        found = _tenant_month(request, tenant, period, closed, now)
        if found is None:
            return signed.html(pages.loading(period.label, **signed.chrome))
        snapshot, freshness = found
        view = snapshot.view()
        as_of = snapshot.computed_at
        with Session(engine) as session:
            series, missing = snapshots.tenant_series(session, tenant, period)
        for other in missing:
            _refresher(request).request(tenant, other)
    rows = view.outcome_rows()  # of the snapshot (or this page's customer month), as the other panels
    outcomes = rows if rows is not None else "No outcomes: the month cannot be rated (a plan is not in force)."
    names = sorted(set(choices) | {row["customer"] for row in view.customers})
    body = month_page.render(
        month_page.MonthPage(
            tenant.name, view, series, months, names, signed.csrf, web.VERSION, as_of, freshness, page,
            stripe_failures, quarantined, outcomes,
        )
    )
    return signed.html(body)


def _chosen_month(text: str | None, tenant: Tenant, closed: set[str], now: datetime) -> Period:
    """The month asked for; by default the latest closed month, else the current one."""
    if text:
        return parse_month(text, tenant.timezone)
    if closed:
        return parse_month(max(closed), tenant.timezone)
    return period_of(now, tenant.timezone)


def _months(session: Session, tenant: Tenant, chosen: Period, now: datetime) -> list[str]:
    current = period_of(now, tenant.timezone)
    first = repository.first_day(session, tenant.id)
    labels = [current]
    while len(labels) < MONTHS_LISTED and first is not None and labels[-1].first_day > first.replace(day=1):
        labels.append(labels[-1].previous())
    out = {p.label for p in labels} | {chosen.label}
    return sorted(out, reverse=True)


def _customer_month(
    engine: Engine, tenant: Tenant, period: Period, customer: str, closed: set[str], now: datetime
) -> tuple[Any, Any]:
    """One customer's month, computed for this page (a customer's month is small)."""
    with Session(engine) as session:
        try:
            begin_snapshot(session)
            view = dashboard.month_view(session, tenant, period, customer=customer, now=now)
            series = dashboard.customer_series(session, tenant, period, customer, closed=closed)
        finally:
            session.rollback()
    return view, series


def _tenant_month(
    request: Request, tenant: Tenant, period: Period, closed: set[str], now: datetime
) -> tuple[snapshots.Snapshot, str] | None:
    """The month's snapshot and how fresh it is, computed or renewed as needed; None while a
    first snapshot is still being computed."""
    engine = web.engine(request)
    with Session(engine) as session:
        snapshot = snapshots.load(session, tenant.id, period.label)
        current = snapshots.fingerprint(session, tenant, period, closed)
        mark = repository.watermark(session, tenant.id)
        timed = snapshots.timed(session, tenant, period, now=now)
    state = snapshots.freshness(snapshot, current, mark, closed=period.label in closed, now=now, timed=timed)
    if state == "fresh":
        return snapshot, state  # type: ignore[return-value]
    future = _refresher(request).request(tenant, period)
    if state == "aging" and snapshot is not None:
        return snapshot, state
    try:
        future.result(timeout=request.app.state.settings.dashboard_wait_seconds)
    except concurrent.futures.TimeoutError:
        return (snapshot, "stale") if snapshot is not None else None
    with Session(engine) as session:
        renewed = snapshots.load(session, tenant.id, period.label)
    return (renewed, "fresh") if renewed is not None else None


# --- invoices, tasks, CSVs -----------------------------------------------------------------------------------


@router.get("/quarantine")
def quarantine_page(request: Request, signed: web.SignedInPage) -> Response:
    with Session(web.engine(request)) as session:
        rows = quarantine.listing(session, signed.tenant.id, limit=100)
        total = quarantine.count(session, signed.tenant.id)
    return signed.html(pages.quarantine(rows, total, **signed.chrome))


@router.get("/budgets")
def budgets_page(request: Request) -> Response:
    principal = web.signed_in(request)
    if principal is None:
        return web.to_sign_in(request)
    tenant = principal.tenant
    seed, token = web.csrf(request)
    now = datetime.now(UTC)
    with Session(web.engine(request)) as session:
        chosen = list(budget_repository.stored(session, tenant.id).values())
        described = [spend.describe(s, now=now) for s in spend.standings(session.connection(), tenant.id, chosen, tenant.timezone, now=now)]
        raised = alerts.list_alerts(session, tenant.id, limit=100)
    return web.html(request, budget_page.render(described, raised, tenant=tenant.name, csrf=token, version=web.VERSION), seed=seed)


@router.get("/invoices/{invoice_id}")
def invoice_page(request: Request, signed: web.SignedInPage, invoice_id: int) -> Response:
    with Session(web.engine(request)) as session:
        found = repository.finalized_invoices(session, signed.tenant.id, None, invoice_id=invoice_id)
    if not found:
        return signed.not_found(f"There is no invoice {invoice_id}.")
    return signed.html(pages.invoice(found[0], **signed.chrome))


@router.get("/invoices/{invoice_id}/lines/{line_no}")
def line_tasks_page(
    request: Request,
    signed: web.SignedInPage,
    invoice_id: int,
    line_no: int,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Response:
    """The tasks behind an invoice line, a page at a time, with the CSV of all of them."""
    per_page = evidence_pages.LINE_TASKS_PER_PAGE
    if not 0 < line_no < 2**31:  # no such line, and a database integer cannot even hold it
        return signed.not_found(f"Invoice {invoice_id} has no line {line_no}.")
    with Session(web.engine(request)) as session:
        try:
            invoice, line = evidence.invoice_line(session, signed.tenant, invoice_id, line_no)
            frame = evidence.line_tasks(session, signed.tenant, invoice_id, line_no)
        except NotFound:
            return signed.not_found(f"Invoice {invoice_id} has no line {line_no}.")
    found = evidence_csv.page(frame, offset=(page - 1) * per_page, limit=per_page)
    body = evidence_pages.line_tasks(
        invoice, line, found["tasks"], total=found["total"], page=page, currency=invoice.currency, **signed.chrome
    )
    return signed.html(body)


@router.get("/invoices/{invoice_id}/lines/{line_no}/tasks.csv")
def line_tasks_csv(request: Request, signed: web.SignedInPage, invoice_id: int, line_no: int) -> Response:
    """Every task behind an invoice line as CSV, streamed (the API's evidence CSV)."""
    if not 0 < line_no < 2**31:
        return signed.not_found(f"Invoice {invoice_id} has no line {line_no}.")
    with Session(web.engine(request)) as session:
        try:
            frame = evidence.line_tasks(session, signed.tenant, invoice_id, line_no)
        except NotFound:
            return signed.not_found(f"Invoice {invoice_id} has no line {line_no}.")
    filename = f"invoice-{invoice_id}-line-{line_no}-tasks.csv"
    return StreamingResponse(
        evidence_csv.csv_chunks(frame),
        media_type="text/csv; charset=utf-8",
        headers={**web.SECURITY_HEADERS, "Cache-Control": "no-store",
                 "Content-Disposition": f'attachment; filename="{filename}"'},
    )  # fmt: skip


@router.get("/tasks/{task:path}")
def task_page(request: Request, signed: web.SignedInPage, task: str) -> Response:
    """A task's timeline: its events and who sent each, its settlement, versions and disputes."""
    with Session(web.engine(request)) as session:
        try:
            found = timeline.task_timeline(session, signed.tenant, task, now=datetime.now(UTC))
        except NotFound:
            return signed.not_found(f"There is no task {task!r}.")
    return signed.html(evidence_pages.task_timeline(found, **signed.chrome))


@router.get("/customers/{customer}/invoice")
def draft_invoice_page(
    request: Request, signed: web.SignedInPage, customer: str, month: Annotated[str, Query()]
) -> Response:
    with Session(web.engine(request)) as session:
        period = _customer_period(signed, session, customer, month)
        if isinstance(period, Response):
            return period
        invoices = month_invoices(session, signed.tenant, period, customer=customer).invoices
    if not invoices:
        return signed.not_found(f"{customer} has nothing to bill in {period.label}.")
    if invoices[0].id is not None:
        return web.redirect(request, f"/dashboard/invoices/{invoices[0].id}")
    return signed.html(pages.invoice(invoices[0], **signed.chrome))


@router.get("/customers/{customer}/tasks")
def tasks_page(
    request: Request,
    signed: web.SignedInPage,
    customer: str,
    month: Annotated[str, Query()],
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Response:
    with Session(web.engine(request)) as session:
        period = _customer_period(signed, session, customer, month)
        if isinstance(period, Response):
            return period
        begin_snapshot(session)
        rows, more = _task_rows(session, signed.tenant, period, customer, page)
        session.rollback()
    body = pages.tasks(
        customer, period.label, rows, page=page, more=more, currency=signed.tenant.currency, **signed.chrome
    )
    return signed.html(body)


def _customer_period(signed: web.SignedIn, session: Session, customer: str, month: str) -> Period | Response:
    """The month of one of the tenant's customers, or the page saying what is not found."""
    try:
        require_customer(session, signed.tenant, customer)
        return parse_month(month, signed.tenant.timezone)
    except (NotFound, InvalidInput) as error:
        return signed.not_found(error.message)


def _task_rows(
    session: Session, tenant: Tenant, period: Period, customer: str, page: int
) -> tuple[list[dict[str, str]], bool]:
    """The page's tasks, as the tasks CSV has them (its running cost needs the pages before)."""
    skip, rows = (page - 1) * TASKS_PER_PAGE, []
    with closing(task_batches(session, tenant, period, customer=customer, batch_size=2000)) as batches:
        for batch in batches:
            for values in zip(*(batch[c] for c in TASKS.columns), strict=True):
                if skip:
                    skip -= 1
                    continue
                if len(rows) == TASKS_PER_PAGE:
                    return rows, True
                rows.append({c: str(v) for c, v in zip(TASKS.columns, values, strict=True)})
    return rows, False


@router.get("/reports/{month}/{name}.csv")
def download(request: Request, signed: web.SignedInPage, month: str, name: str) -> Response:
    try:
        response = csv_response(web.engine(request), signed.tenant, month, name)
    except (NotFound, InvalidInput) as error:
        return signed.not_found(error.message)
    response.headers.update({**web.SECURITY_HEADERS, "Cache-Control": "no-store"})
    return response
