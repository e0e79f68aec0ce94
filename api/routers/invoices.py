"""Invoices: the upcoming draft of a customer's month, finalized invoices, credit notes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from api.deps import AdminScope, AuditDep, NowDep, ReadOrVerdict, SessionDep, own_customer
from api.errors import BODY_ERRORS, responses
from metering.core.errors import NotFound
from pricing import credit_notes, invoices
from pricing.schemas import CreditNote, CreditNoteIn, DraftInvoice, Invoice, InvoiceSummary

router = APIRouter(tags=["invoices"])

InvoiceId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the invoice's id")]


@router.get("/v1/customers/{customer}/invoices/upcoming", response_model=DraftInvoice, responses=responses(404, 409))
def get_upcoming_invoice(
    customer: str,
    principal: ReadOrVerdict,
    session: SessionDep,
    now: NowDep,
    month: Annotated[str | None, Query(description="an open month (default: the current one)", examples=["2026-10"])] = None,
) -> dict[str, Any]:
    """The draft of the customer's invoice for an open month, recomputed from current usage;
    late usage of closed months shows as adjustment lines naming their month."""
    own_customer(principal, customer)
    return invoices.upcoming_invoice(session, principal.tenant, customer, now=now, month=month)


@router.get("/v1/customers/{customer}/invoices", response_model=list[InvoiceSummary], responses=responses(404))
def get_customer_invoices(customer: str, principal: ReadOrVerdict, session: SessionDep) -> list[dict[str, Any]]:
    """The customer's finalized invoices, oldest month first."""
    own_customer(principal, customer)
    return invoices.customer_invoices(session, principal.tenant, customer)


@router.get("/v1/invoices/{invoice_id}", response_model=Invoice, responses=responses(404))
def get_invoice(invoice_id: InvoiceId, principal: ReadOrVerdict, session: SessionDep) -> dict[str, Any]:
    """An invoice with its lines and credit notes."""
    found = invoices.invoice_view(session, principal.tenant, invoice_id)
    if principal.customer is not None and found["customer"] != principal.customer:
        raise NotFound(f"no invoice {invoice_id}")
    return found


@router.post(
    "/v1/invoices/{invoice_id}/credit-notes",
    response_model=CreditNote,
    status_code=201,
    responses=responses(*BODY_ERRORS, 404, 409),
)
def post_credit_note(
    invoice_id: InvoiceId, body: CreditNoteIn, principal: AdminScope, audit: AuditDep, session: SessionDep, now: NowDep
) -> dict[str, Any]:
    """Credit part or all of a finalized invoice; the invoice itself never changes."""
    note = credit_notes.create_credit_note(session, principal.tenant, invoice_id, amount=body.amount, reason=body.reason, now=now)
    audit.record("credit_note.create", f"invoice:{invoice_id}", credit_note=note["id"], amount=note["amount"],
                 currency=note["currency"], reason=note["reason"])  # fmt: skip
    return note
