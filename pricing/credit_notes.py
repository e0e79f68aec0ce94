"""Credit notes: manual corrections of a finalized invoice, which itself never changes.

The credits of an invoice never exceed its total. They are not usage: late usage adjustments
(`pricing.assembly`) compare a month's rating with the lines billed for it, credits aside.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from metering.core.errors import Conflict, InvalidInput
from metering.core.money import from_minor, parse_decimal, round_money, to_minor
from metering.core.tenants import Tenant
from pricing.invoices import credit_note_view, invoice_row
from pricing.plans import MAX_AMOUNT
from pricing.tables import credit_notes


def create_credit_note(
    session: Session, tenant: Tenant, invoice_id: int, *, amount: object, reason: str, now: datetime
) -> dict[str, Any]:
    """Credit part or all of a finalized invoice (a manual correction; the invoice itself stays
    as it was). Credits never exceed the invoice total."""
    row = invoice_row(session, tenant, invoice_id, lock=True)
    if row.status != "finalized":
        raise Conflict(f"invoice {invoice_id} is {row.status}: only a finalized invoice can be credited")
    try:
        value = parse_decimal(amount)
    except ValueError as error:
        raise InvalidInput("invalid credit note", detail=[{"field": "body.amount", "message": str(error)}]) from None
    problems = []
    if value <= 0:
        problems.append("must be greater than 0")
    elif value >= MAX_AMOUNT:
        problems.append("is too large")
    elif round_money(value, row.currency) != value:
        problems.append(f"must be a whole number of {row.currency}'s minor unit")
    if not reason.strip() or "\x00" in reason:
        message = "must not be empty" if not reason.strip() else "must not contain NUL characters"
        raise InvalidInput("invalid credit note", detail=[{"field": "body.reason", "message": message}])
    if problems:
        raise InvalidInput("invalid credit note", detail=[{"field": "body.amount", "message": problems[0]}])
    minor = to_minor(round_money(value, row.currency), row.currency)
    credited = session.execute(
        select(func.coalesce(func.sum(credit_notes.c.amount_minor), 0)).where(credit_notes.c.invoice_id == row.id)
    ).scalar_one()
    if credited + minor > row.total_minor:
        left = from_minor(row.total_minor - credited, row.currency)
        raise Conflict(f"credit notes would exceed the invoice total: at most {left} {row.currency} is left to credit")
    note_id = session.execute(
        insert(credit_notes)
        .values(invoice_id=row.id, tenant_id=tenant.id, amount_minor=minor, reason=reason.strip(), created_at=now)
        .returning(credit_notes.c.id)
    ).scalar_one()
    note = session.execute(select(credit_notes).where(credit_notes.c.id == note_id)).one()
    return credit_note_view(note, row.currency) | {"invoice_number": row.number}
