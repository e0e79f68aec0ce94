"""What a month billed: its finalized invoices once it is closed, else the drafts as they stand
(`pricing.invoices.month_assembly`, with late usage of closed months when the month before is
closed, exactly as `upcoming_invoice` shows them).

Customers that cannot be billed (usage but no plan, late usage in another currency) are listed
as `unrated` (their reports show no amount); the others are drafted as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from metering.core.money import to_minor
from metering.core.periods import Period
from metering.core.tenants import Tenant
from pricing import repository as pricing_repository
from pricing.assembly import Draft, Usage
from pricing.invoices import month_assembly
from reports import repository
from reports.repository import InvoiceRecord, LineRecord


@dataclass(frozen=True)
class MonthInvoices:
    period: Period
    closed: bool
    invoices: tuple[InvoiceRecord, ...]  # closed: by number; open: drafts by customer
    unrated: tuple[str, ...] = ()  # open month: customers with usage but no plan

    def by_customer(self) -> dict[str, InvoiceRecord]:
        return {invoice.customer: invoice for invoice in self.invoices}


def month_invoices(session: Session, tenant: Tenant, period: Period, *, closed: set[str] | None = None,
                   customer: str | None = None, usage: Usage | None = None) -> MonthInvoices:  # fmt: skip
    """The month's invoices: finalized when the month is closed, else drafts (of `usage`, the
    month's usage as it bills, when the caller has read it: `reports.month_data.rating_input`)."""
    closed = repository.closed_months(session, tenant.id) if closed is None else closed
    if period.label in closed:
        return MonthInvoices(
            period, True, tuple(repository.finalized_invoices(session, tenant.id, period.label, customer))
        )
    state = pricing_repository.rollup_position(session, tenant.id)
    adjust = period.previous().label in closed
    assembly, _ = month_assembly(session, tenant, period, state, customer=customer, adjust=adjust, from_figures=True,
                                 usage=usage)  # fmt: skip
    return MonthInvoices(period, False, tuple(_record(d) for d in assembly.drafts), tuple(sorted(assembly.unrated)))


def _record(draft: Draft) -> InvoiceRecord:
    lines = tuple(
        LineRecord(n, line.kind, line.description, f"{line.quantity:f}", f"{line.unit_price:f}",
                   to_minor(line.amount, draft.currency), line.adjusts_period)
        for n, line in enumerate(draft.lines, start=1)
    )  # fmt: skip
    total = sum(line.amount_minor for line in lines)
    return InvoiceRecord(
        None, None, draft.customer, draft.period, "draft", draft.currency, draft.plan, total, 0, lines
    )
