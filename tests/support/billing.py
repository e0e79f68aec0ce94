"""Finalized invoices written straight into the tables (as `pricing.invoices.close_period` writes
them), for tests of what happens after the close: Stripe sync and webhooks."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from metering.core.db import unit_of_work
from metering.core.tenants import Tenant
from pricing.tables import customers, invoice_lines, invoices

NOW = datetime(2026, 11, 1, 1, 0, tzinfo=UTC)
_seq = itertools.count(1)


@dataclass(frozen=True)
class Line:
    amount_minor: int
    description: str = "Completed jobs"
    kind: str = "usage"
    quantity: str = "1"
    unit_price: str = "0"
    adjusts_period: str | None = None


def make_customer(engine: Engine, tenant: Tenant, customer: str = "acme", *, plan: str = "jobs") -> None:
    with unit_of_work(engine) as session:
        exists = session.execute(
            select(customers.c.customer).where(
                customers.c.tenant_id == tenant.id, customers.c.customer == customer
            )
        ).first()
        if exists is None:
            session.execute(
                insert(customers).values(
                    tenant_id=tenant.id,
                    customer=customer,
                    plan=plan,
                    compare_with="[]",
                    created_at=NOW,
                    updated_at=NOW,
                )
            )


def make_invoice(
    engine: Engine,
    tenant: Tenant,
    *,
    customer: str = "acme",
    period: str = "2026-10",
    currency: str = "USD",
    lines: list[Line] | None = None,
    finalized_at: datetime = NOW,
) -> int:
    """A finalized invoice with its lines (and the customer, if new); returns its id."""
    lines = (
        lines
        if lines is not None
        else [Line(12_000, "240 completed jobs x 0.50"), Line(990, "Platform fee", kind="fee")]
    )
    make_customer(engine, tenant, customer)
    with unit_of_work(engine) as session:
        invoice_id = session.execute(
            insert(invoices)
            .values(
                tenant_id=tenant.id,
                customer=customer,
                period=period,
                number=None,
                status="draft",
                currency=currency,
                total_minor=0,
                plan="jobs",
                plan_versions='{"jobs": [1]}',
                price_version="test",
                created_at=NOW,
            )  # fmt: skip
            .returning(invoices.c.id)
        ).scalar_one()
        for n, line in enumerate(lines, start=1):
            session.execute(
                insert(invoice_lines).values(
                    invoice_id=invoice_id,
                    line_no=n,
                    kind=line.kind,
                    description=line.description,
                    quantity=line.quantity,
                    unit_price=line.unit_price,
                    amount_exact=str(line.amount_minor),
                    amount_minor=line.amount_minor,
                    adjusts_period=line.adjusts_period,
                )  # fmt: skip
            )
        session.execute(
            update(invoices)
            .where(invoices.c.id == invoice_id)
            .values(
                status="finalized",
                number=f"INV-{tenant.name}-{period.replace('-', '')}-{next(_seq):04d}",
                total_minor=sum(line.amount_minor for line in lines),
                finalized_at=finalized_at,
            )  # fmt: skip
        )
    return int(invoice_id)


def invoice_row(engine: Engine, invoice_id: int) -> Any:
    with engine.connect() as connection:
        return connection.execute(select(invoices).where(invoices.c.id == invoice_id)).one()


def line_rows(engine: Engine, invoice_id: int) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(invoice_lines)
                .where(invoice_lines.c.invoice_id == invoice_id)
                .order_by(invoice_lines.c.line_no)
            )
        )


def stripe_customer_id(engine: Engine, tenant: Tenant, customer: str = "acme") -> str | None:
    with engine.connect() as connection:
        return connection.execute(
            select(customers.c.stripe_customer_id).where(
                customers.c.tenant_id == tenant.id, customers.c.customer == customer
            )
        ).scalar_one()
