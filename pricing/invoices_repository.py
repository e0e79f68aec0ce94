"""Queries of invoicing: what invoice assembly (`pricing.assembly`) is made from, the tenant's
billing lock, and the invoices and closed months written. Every query is scoped by tenant.

The lock is the tenant's `rollup_state` row: `SELECT ... FOR UPDATE` on PostgreSQL, the write
lock (`BEGIN IMMEDIATE`) on SQLite. Holding it also keeps a concurrent rollup from committing
while the month is read, so every read of a close sees one state of the rollup.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from metering.core.db import upsert, write_lock
from metering.core.money import to_minor
from metering.core.periods import Period, parse_month
from metering.core.tables import rollup_state
from metering.core.tenants import Tenant
from pricing import open_month as figures_month
from pricing import outcomes_repository, repository
from pricing.assembly import (
    AdjustmentReason,
    BilledInvoice,
    ClosedMonth,
    Draft,
    OpenMonth,
    Usage,
    invoice_number,
)
from pricing.repository import RollupState
from pricing.tables import billing_periods, invoice_lines, invoices

# --- what assembly is made from -----------------------------------------------------------------


def open_month(
    session: Session, tenant: Tenant, period: Period, *, customer: str | None = None, now: datetime | None = None,
    from_figures: bool = False, usage: Usage | None = None,
) -> OpenMonth:
    """The month to invoice: its usage (jobs as settled by `now`, default the month's end), the
    plans, and the assignments in force on its last day of the customers with usage or created
    before it ended. `from_figures`: the ended tasks from the per customer-month figures where
    they can stand for them (`pricing.open_month`; drafts of an open month), else from the tasks.
    `usage`: the month's usage when the caller has read it so (its tasks as they bill by the
    month's end), not read again."""
    plans = repository.stored_plans(session, tenant.id)
    if usage is None:
        rows = figures_month.usable_figures(session, tenant.id, period, customer) if from_figures else None
        if rows is not None:
            usage = Usage(repository.token_usage(session, tenant.id, period, customer), figures_month.billed_groups(rows, period))
        else:
            usage = _usage(session, tenant, period, customer, now=now)
    known = repository.customers_created_before(session, tenant.id, period.end, customer)
    assigned = repository.assignments_on(
        session, tenant.id, period.last_day, customers_=usage.customers | known
    )
    return OpenMonth(period, usage, plans, assigned, known)


def _usage(session: Session, tenant: Tenant, period: Period, customer: str | None, *, now: datetime | None = None) -> Usage:
    return Usage(
        repository.token_usage(session, tenant.id, period, customer),
        outcomes_repository.billed_tasks(session, tenant.id, period, customer, now=now, timezone=tenant.timezone),
    )


def closed_periods(session: Session, tenant_id: int, before: str | None = None) -> list[Any]:
    query = select(billing_periods).where(billing_periods.c.tenant_id == tenant_id)
    if before is not None:
        query = query.where(billing_periods.c.period < before)
    return list(session.execute(query.order_by(billing_periods.c.period)).all())


def late_months(
    session: Session, tenant: Tenant, before: Period, state: RollupState, *, customer: str | None = None
) -> tuple[list[ClosedMonth], list[str]]:
    """The closed months before `before` whose usage changed since they were last reconciled (an
    event touched one of their tasks, or the provider prices changed), and every closed month
    checked (reconciled up to `state` once the invoice is written)."""
    changed, checked = [], []
    for row in closed_periods(session, tenant.id, before.label):
        checked.append(row.period)
        month = parse_month(row.period, tenant.timezone)
        reasons = []
        if repository.touched_since(session, tenant.id, row.reconciled_seq, month.start, month.end):
            reasons.append(AdjustmentReason.LATE_USAGE)
        if row.reconciled_price_version != state.price_version:
            reasons.append(AdjustmentReason.REPRICING)
        if reasons:
            changed.append(_closed_month(session, tenant, month, row, customer, tuple(reasons)))
    return changed, checked


def _closed_month(
    session: Session, tenant: Tenant, month: Period, row: Any, customer: str | None,
    reasons: tuple[AdjustmentReason, ...],
) -> ClosedMonth:
    billed, own = _billed(session, tenant.id, month.label, customer)
    usage = _usage(session, tenant, month, customer)
    names = set(own) | usage.customers
    return ClosedMonth(
        month, usage, repository.stored_plans(session, tenant.id, as_of=row.plans_as_of), billed, own,
        repository.assignments_on(session, tenant.id, month.last_day, as_of=row.assignments_as_of, customers_=names),
        repository.assignments_on(session, tenant.id, month.last_day, customers_=names), reasons,
    )  # fmt: skip


def _billed(
    session: Session, tenant_id: int, period: str, customer: str | None
) -> tuple[dict[tuple[str, str], int], dict[str, BilledInvoice]]:
    """Minor units billed for a month per (customer, kind), and the month's invoices by customer."""
    live = [invoices.c.tenant_id == tenant_id, invoices.c.status == "finalized"]
    if customer is not None:
        live.append(invoices.c.customer == customer)
    own = session.execute(select(invoices).where(*live, invoices.c.period == period)).all()
    for_month = or_(
        (invoices.c.period == period) & invoice_lines.c.adjusts_period.is_(None),
        invoice_lines.c.adjusts_period == period,
    )
    rows = session.execute(
        select(invoices.c.customer, invoice_lines.c.kind, func.sum(invoice_lines.c.amount_minor))
        .select_from(invoice_lines.join(invoices, invoices.c.id == invoice_lines.c.invoice_id))
        .where(*live, for_month)
        .group_by(invoices.c.customer, invoice_lines.c.kind)
    ).all()
    return {(c, k): int(n) for c, k, n in rows}, {r.customer: BilledInvoice(r.plan, r.currency) for r in own}


# --- the lock and the closed months -------------------------------------------------------------


def lock_billing(session: Session, tenant_id: int, *, now: datetime) -> RollupState:
    """Take the tenant's billing lock for the rest of the session's transaction."""
    write_lock(session.connection())
    upsert(
        session,
        rollup_state,
        {"tenant_id": tenant_id, "watermark_seq": 0, "price_version": "", "updated_at": now},
        key=["tenant_id"],
    )
    row = session.execute(
        select(rollup_state).where(rollup_state.c.tenant_id == tenant_id).with_for_update()
    ).one()
    return RollupState(int(row.watermark_seq), row.price_version)


def closed(session: Session, tenant_id: int, label: str) -> Any:
    """The month's `billing_periods` row, None while it is open."""
    return session.execute(
        select(billing_periods).where(
            billing_periods.c.tenant_id == tenant_id, billing_periods.c.period == label
        )
    ).one_or_none()


def record_close(
    session: Session, tenant_id: int, period: Period, state: RollupState, *, checked: list[str], now: datetime
) -> None:
    """The month closed at `state`, and the closed months `checked` for late usage reconciled up to it."""
    session.execute(
        insert(billing_periods).values(
            tenant_id=tenant_id, period=period.label, closed_at=now, watermark_seq=state.watermark_seq,
            price_version=state.price_version, plans_as_of=repository.stored_plans(session, tenant_id).newest_id,
            assignments_as_of=repository.newest_assignment_id(session, tenant_id),
            reconciled_seq=state.watermark_seq, reconciled_price_version=state.price_version,
        )
    )  # fmt: skip
    if checked:
        session.execute(
            update(billing_periods)
            .where(billing_periods.c.tenant_id == tenant_id, billing_periods.c.period.in_(checked))
            .values(reconciled_seq=state.watermark_seq, reconciled_price_version=state.price_version)
        )


# --- invoices -----------------------------------------------------------------------------------


def write_invoices(
    session: Session,
    tenant: Tenant,
    period: Period,
    drafts: list[Draft],
    state: RollupState,
    *,
    now: datetime,
) -> None:
    """The drafts as numbered, finalized invoices with their lines (lines are written while an
    invoice is a draft, in the same transaction: the triggers of migration 0003 refuse the rest)."""
    if not drafts:
        return
    rows = [
        {"tenant_id": tenant.id, "customer": d.customer, "period": d.period, "number": None, "status": "draft",
         "currency": d.currency, "total_minor": 0, "plan": d.plan, "plan_versions": json.dumps(d.plan_versions()),
         "price_version": state.price_version, "created_at": now,
         "outcome_versions": json.dumps(list(d.outcome_versions)) if d.outcome_versions else None}
        for d in drafts
    ]  # fmt: skip
    ids = (
        session.execute(insert(invoices).returning(invoices.c.id, sort_by_parameter_order=True), rows)
        .scalars()
        .all()
    )
    lines = [
        {"invoice_id": invoice_id, "line_no": n, "kind": line.kind, "description": line.description,
         "quantity": _text(line.quantity), "unit_price": _text(line.unit_price), "amount_exact": _text(line.amount_exact),
         "amount_minor": to_minor(line.amount, draft.currency), "plan": line.plan, "plan_version": line.plan_version,
         "adjusts_period": line.adjusts_period, "adjustment_reason": line.reason}
        for invoice_id, draft in zip(ids, drafts, strict=True)
        for n, line in enumerate(draft.lines, start=1)
    ]  # fmt: skip
    session.execute(insert(invoice_lines), lines)
    finalize = (
        update(invoices)
        .where(invoices.c.id == bindparam("invoice_id"), invoices.c.status == "draft")
        .values(
            status="finalized",
            number=bindparam("invoice_number"),
            total_minor=bindparam("total"),
            finalized_at=now,
        )
    )
    session.connection().execute(
        finalize,
        [
            {"invoice_id": invoice_id, "invoice_number": invoice_number(tenant, period, seq),
             "total": sum(to_minor(line.amount, draft.currency) for line in draft.lines)}
            for seq, (invoice_id, draft) in enumerate(zip(ids, drafts, strict=True), start=1)
        ],
    )  # fmt: skip


def _text(value: Decimal) -> str:
    return f"{value:f}"


def with_line_counts(
    session: Session, tenant: Tenant, *, period: str | None = None, customer: str | None = None
) -> list[Any]:
    """The tenant's invoices (of a month, of a customer) with their numbers of lines and of
    adjustment lines, by month and number."""
    where = [invoices.c.tenant_id == tenant.id]
    if period is not None:
        where.append(invoices.c.period == period)
    if customer is not None:
        where.append(invoices.c.customer == customer)
    return list(session.execute(
        select(invoices, func.count(invoice_lines.c.id).label("lines"),
               func.count(invoice_lines.c.adjusts_period).label("adjustments"))
        .select_from(invoices.outerjoin(invoice_lines, invoice_lines.c.invoice_id == invoices.c.id))
        .where(*where)
        .group_by(invoices.c.id)
        .order_by(invoices.c.period, invoices.c.number)
    ).all())  # fmt: skip
