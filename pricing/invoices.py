"""Invoices: one per customer and tenant-local month, a draft while the month is open, finalized
for good when it closes.

- The draft (`upcoming_invoice`) is recomputed from current usage on every read: the month
  assembled (`pricing.assembly`: rated under the customer's plan, plus adjustment lines for late
  usage of closed months when the month before it is closed, else they belong to the invoice of
  that month).
- `close_period` finalizes a month for every customer: it rolls the tenant's events up (once),
  takes the tenant's billing lock, assembles the month and the late usage of closed months, and
  writes numbered invoices (`INV-<tenant>-<yyyymm>-<seq>`) with their lines, the plan versions
  and the provider price version used. The month is then closed: closing again returns what was
  closed.
- A finalized invoice never changes: lines are only written while an invoice is a draft in the
  same transaction, and database triggers (migration 0003) refuse any other change.

Assembly is pure; the reads, the lock and the writes are `pricing.invoices_repository`'s.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from metering.core.errors import Conflict, InvalidInput, NotFound
from metering.core.money import from_minor
from metering.core.periods import Period, period_of
from metering.core.tenants import Tenant
from metering.rollup.archive_guard import check_rebuild
from metering.rollup.pipeline import bring_up_to_date
from pricing import invoices_repository as store
from pricing import repository
from pricing.assembly import Assembly, Draft, Usage, assemble
from pricing.assembly import invoice_number as invoice_number  # numbers are part of what closing writes
from pricing.pending import pending_jobs
from pricing.repository import RollupState
from pricing.service import billing_month, require_customer
from pricing.tables import credit_notes, invoice_lines, invoices

# --- drafts -------------------------------------------------------------------------------------


def month_assembly(
    session: Session,
    tenant: Tenant,
    period: Period,
    state: RollupState,
    *,
    customer: str | None = None,
    adjust: bool = True,
    now: datetime | None = None,
    from_figures: bool = False,
    usage: Usage | None = None,
) -> tuple[Assembly, list[str]]:
    """The invoices of a month as they stand, and the closed months checked for late usage
    (`adjust`: whether this month's invoices carry it). Customers that cannot be billed are
    listed in the assembly's refusals, not drafted. `now` bounds the settlement of jobs under
    outcome rules (default: the month's end). `from_figures`: an open month's drafts, its ended
    tasks read from the per customer-month figures where they can be (`pricing.open_month`).
    `usage`: the month's usage when already read (`pricing.invoices_repository.open_month`)."""
    month = store.open_month(session, tenant, period, customer=customer, now=now, from_figures=from_figures, usage=usage)
    late, checked = store.late_months(session, tenant, period, state, customer=customer) if adjust else ([], [])
    return assemble(tenant, month, late), checked


def month_drafts(assembly: Assembly) -> list[Draft]:
    """The drafts of a month's assembly (`month_assembly`), refusing the month (InvalidInput)
    when a customer cannot be billed."""
    if assembly.refusals:
        raise assembly.refusals[0].error()
    return assembly.drafts


def upcoming_invoice(session: Session, tenant: Tenant, customer: str, *, now: datetime, month: str | None = None) -> dict[str, Any]:
    """The draft of a customer's invoice for an open month (default: the month of `now`)."""
    period = billing_month(month, tenant.timezone, field="query.month") if month else period_of(now, tenant.timezone)
    if store.closed(session, tenant.id, period.label) is not None:
        raise Conflict(f"{period.label} is closed: its invoices are final", detail={"month": period.label})
    require_customer(session, tenant, customer)
    state = repository.rollup_position(session, tenant.id)
    # Late usage goes on the next invoice closed: this one only if the month before is closed.
    adjust = store.closed(session, tenant.id, period.previous().label) is not None
    # One customer's tasks come through the (tenant, customer, ended_us) index: cheaper than the
    # figures' path (measured: BENCHMARKS.md "Monthly reports and the dashboard").
    assembly, _ = month_assembly(session, tenant, period, state, customer=customer, adjust=adjust, now=now)
    drafts = month_drafts(assembly)
    assignment = repository.assignments_on(session, tenant.id, period.last_day, customers_=[customer]).get(customer)
    draft = drafts[0] if drafts else Draft(customer, period.label, tenant.currency, assignment.plan if assignment else "", ())
    return {
        **_draft_view(draft),
        "id": None,
        "number": None,
        "status": "draft",
        "period_start": period.start,
        "period_end": period.end,
        "as_of": now,
        "price_version": state.price_version,
        "pending": pending_jobs(session, tenant, period, customer, now=now),
    }


def _draft_view(draft: Draft) -> dict[str, Any]:
    return {
        "customer": draft.customer,
        "period": draft.period,
        "currency": draft.currency,
        "plan": draft.plan,
        "plan_versions": draft.plan_versions(),
        "outcome_versions": list(draft.outcome_versions),
        "total": draft.total,
        "lines": [
            {"line_no": n, "kind": line.kind, "description": line.description, "quantity": line.quantity,
             "unit_price": line.unit_price, "amount": line.amount, "amount_exact": line.amount_exact,
             "plan": line.plan, "plan_version": line.plan_version, "adjusts_period": line.adjusts_period,
             "adjustment_reason": line.reason}
            for n, line in enumerate(draft.lines, start=1)
        ],
    }  # fmt: skip


# --- close --------------------------------------------------------------------------------------


def close_period(session: Session, tenant: Tenant, period: Period, *, now: datetime) -> dict[str, Any]:
    """Finalize every invoice of a tenant-local month that has ended; a no-op when it is closed.

    It brings the tenant's usage up to date itself (`metering.rollup.pipeline.bring_up_to_date`, once:
    callers do not roll up before it) with connections of its own before taking the lock, so the
    session must not have begun a transaction (on SQLite, a write already made by it would block
    them): it refuses otherwise.
    """
    if now < period.end:
        raise InvalidInput(f"{period.label} has not ended yet (it ends {period.end.isoformat()})", detail={"month": period.label})
    if session.in_transaction():
        raise RuntimeError("close_period brings usage up to date before its transaction: call it first in its unit of work")
    check_rebuild(session.get_bind(), tenant)  # type: ignore[arg-type]
    bring_up_to_date(session.get_bind(), tenant, now=now)  # type: ignore[arg-type]
    state = store.lock_billing(session, tenant.id, now=now)
    if (closed := store.closed(session, tenant.id, period.label)) is not None:
        closed_at = closed.closed_at if closed.closed_at.tzinfo else closed.closed_at.replace(tzinfo=UTC)  # SQLite: naive UTC
        return _close_summary(session, tenant, period, closed_at, closed=False)
    assembly, checked = month_assembly(session, tenant, period, state)
    store.write_invoices(session, tenant, period, month_drafts(assembly), state, now=now)
    store.record_close(session, tenant.id, period, state, checked=checked, now=now)
    return _close_summary(session, tenant, period, now, closed=True)


def _close_summary(session: Session, tenant: Tenant, period: Period, closed_at: datetime, *, closed: bool) -> dict[str, Any]:
    rows = store.with_line_counts(session, tenant, period=period.label)
    totals: dict[str, Decimal] = {}
    for row in rows:
        totals[row.currency] = totals.get(row.currency, from_minor(0, row.currency)) + from_minor(row.total_minor, row.currency)
    return {
        "tenant": tenant.name,
        "month": period.label,
        "closed": closed,  # False: it was closed before, nothing changed
        "closed_at": closed_at,
        "invoices": [
            {"id": r.id, "number": r.number, "customer": r.customer, "status": r.status, "currency": r.currency,
             "total": from_minor(r.total_minor, r.currency), "lines": r.lines, "adjustment_lines": r.adjustments}
            for r in rows
        ],  # fmt: skip
        "totals": totals,
    }


# --- finalized invoices -------------------------------------------------------------------------


def invoice_row(session: Session, tenant: Tenant, invoice_id: int, *, lock: bool = False) -> Any:
    if not 0 < invoice_id < 2**63:  # no such id, and a database integer cannot even hold it
        raise NotFound(f"no invoice {invoice_id}")
    query = select(invoices).where(invoices.c.tenant_id == tenant.id, invoices.c.id == invoice_id)
    row = session.execute(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise NotFound(f"no invoice {invoice_id}")
    return row


def invoice_view(session: Session, tenant: Tenant, invoice_id: int) -> dict[str, Any]:
    row = invoice_row(session, tenant, invoice_id)
    money = row.currency
    lines = session.execute(select(invoice_lines).where(invoice_lines.c.invoice_id == row.id).order_by(invoice_lines.c.line_no)).all()
    notes = session.execute(select(credit_notes).where(credit_notes.c.invoice_id == row.id).order_by(credit_notes.c.id)).all()
    credited = sum(n.amount_minor for n in notes)
    return {
        "id": row.id, "number": row.number, "status": row.status, "customer": row.customer, "period": row.period,
        "currency": money, "plan": row.plan, "plan_versions": json.loads(row.plan_versions),
        "price_version": row.price_version, "outcome_versions": json.loads(row.outcome_versions or "[]"),
        "total": from_minor(row.total_minor, money), "total_minor": row.total_minor,
        "credited": from_minor(credited, money), "amount_due": from_minor(row.total_minor - credited, money),
        "created_at": row.created_at, "finalized_at": row.finalized_at,
        "stripe_invoice_id": row.stripe_invoice_id, "stripe_status": row.stripe_status, "stripe_error": row.stripe_error,
        "payment_status": row.payment_status,
        "lines": [
            {"line_no": line.line_no, "kind": line.kind, "description": line.description, "quantity": Decimal(line.quantity),
             "unit_price": Decimal(line.unit_price), "amount": from_minor(line.amount_minor, money),
             "amount_exact": Decimal(line.amount_exact), "plan": line.plan, "plan_version": line.plan_version,
             "adjusts_period": line.adjusts_period, "adjustment_reason": line.adjustment_reason}
            for line in lines
        ],
        "credit_notes": [credit_note_view(n, money) for n in notes],
    }  # fmt: skip


def customer_invoices(session: Session, tenant: Tenant, customer: str) -> list[dict[str, Any]]:
    rows = session.execute(
        select(invoices).where(invoices.c.tenant_id == tenant.id, invoices.c.customer == customer).order_by(invoices.c.period)
    ).all()
    if not rows:
        require_customer(session, tenant, customer)
    return [
        {"id": r.id, "number": r.number, "status": r.status, "period": r.period, "currency": r.currency,
         "total": from_minor(r.total_minor, r.currency), "finalized_at": r.finalized_at}
        for r in rows
    ]  # fmt: skip


def tenant_invoices(session: Session, tenant: Tenant, *, period: Period | None = None, customer: str | None = None) -> list[dict[str, Any]]:
    """The tenant's invoices, of one month and of one customer when given, by month and number,
    with their numbers of lines and of adjustment lines (`taskmeter invoices`)."""
    rows = store.with_line_counts(session, tenant, period=period.label if period else None, customer=customer)
    if not rows and customer is not None:
        require_customer(session, tenant, customer)
    return [
        {"id": r.id, "number": r.number, "customer": r.customer, "status": r.status, "period": r.period,
         "currency": r.currency, "total": from_minor(r.total_minor, r.currency), "finalized_at": r.finalized_at,
         "lines": r.lines, "adjustment_lines": r.adjustments}
        for r in rows
    ]  # fmt: skip


def credit_note_view(row: Any, currency: str) -> dict[str, Any]:
    return {"id": row.id, "invoice_id": row.invoice_id, "amount": from_minor(row.amount_minor, currency),
            "currency": currency, "reason": row.reason, "created_at": row.created_at,
            "stripe_credit_note_id": row.stripe_credit_note_id, "task": row.task, "dispute_id": row.dispute_id}  # fmt: skip
