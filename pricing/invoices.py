"""Invoices: one per customer and tenant-local month, a draft while the month is open, finalized
for good when it closes.

- The draft (`upcoming_invoice`) is recomputed from current usage on every read: the month rated
  under the customer's plan (`pricing.rating`), plus adjustment lines for late usage of closed
  months (`pricing.adjustments`) when the month before it is closed (else they belong to the
  invoice of that month).
- `close_period` finalizes a month for every customer: it rolls the tenant's events up, takes
  the tenant's billing lock, rates the month and the late usage of closed months, and writes
  numbered invoices (`INV-<tenant>-<yyyymm>-<seq>`) with their lines, the plan versions and the
  provider price version used. The month is then closed: closing again returns what was closed.
- A finalized invoice never changes. This module only writes lines while an invoice is a draft
  in the same transaction, and database triggers (migration 0003) refuse any other change.

The lock is the tenant's `rollup_state` row: `SELECT ... FOR UPDATE` on PostgreSQL, the write
lock (`BEGIN IMMEDIATE`) on SQLite. Holding it also keeps a concurrent rollup from committing
while the month is read, so every read of the close sees one state of the rollup.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from metering.db import is_sqlite, upsert
from metering.errors import Conflict, InvalidInput, NotFound
from metering.periods import Period, period_of
from metering.pipeline import bring_up_to_date
from metering.tables import rollup_state
from metering.tenants import Tenant
from pricing import outcomes_repository, repository
from pricing.adjustments import Line, from_minor, late_adjustments, to_minor
from pricing.pending import pending_jobs
from pricing.rating import rate_month
from pricing.repository import RollupState, StoredPlans, last_day
from pricing.service import billing_month, require_customer
from pricing.tables import billing_periods, credit_notes, invoice_lines, invoices

NUMBER_LENGTH = 64


@dataclass(frozen=True)
class Draft:
    customer: str
    period: str
    currency: str
    plan: str
    lines: tuple[Line, ...]
    outcome_versions: tuple[int, ...] = ()  # the outcome rule versions that settled its tasks

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), from_minor(0, self.currency))

    def plan_versions(self) -> dict[str, list[int]]:
        used: dict[str, set[int]] = defaultdict(set)
        for line in self.lines:
            if line.plan is not None and line.plan_version is not None:
                used[line.plan].add(line.plan_version)
        return {plan: sorted(versions) for plan, versions in sorted(used.items())}


# --- drafts -------------------------------------------------------------------------------------


def _month_lines(
    session: Session, tenant: Tenant, period: Period, stored: StoredPlans, *, customer: str | None, now: datetime | None = None
) -> tuple[dict[str, str], dict[str, str], dict[str, list[Line]], dict[str, tuple[int, ...]]]:
    """The month rated: plan, currency and lines per customer billed for it (customers with
    usage, and customers that had a plan before the month ended), and the outcome rule versions
    that settled each customer's tasks. `now` bounds settlement (default: the month's end)."""
    tokens = repository.token_usage(session, tenant.id, period, customer)
    tasks = outcomes_repository.billed_tasks(session, tenant.id, period, customer, now=now, timezone=tenant.timezone)
    users = set(tokens["customer"]) | set(tasks["customer"])
    known = repository.customers_created_before(session, tenant.id, period.end, customer)
    assigned = repository.assignments_on(session, tenant.id, last_day(period), customers_=users | known)
    if orphans := sorted(users - set(assigned)):
        detail = [{"field": "customer", "message": f"{c!r} has usage in {period.label} but no plan"} for c in orphans]
        raise InvalidInput(f"usage of customers without a plan in {period.label}", detail=detail)
    # A customer without usage is billed (platform fee, minimum) only once its plan is in force.
    plans = {name: a.plan for name, a in assigned.items() if name in users or _in_force(stored, a.plan, period)}
    rated = rate_month(
        month=period.first_day, customers=plans, plans=stored.book, token_usage=tokens, tasks=tasks,
        currency=tenant.currency, tz=tenant.timezone,
    )  # fmt: skip
    currency = {name: stored.book.history(plan)[-1].currency or tenant.currency for name, plan in plans.items()}
    lines: dict[str, list[Line]] = defaultdict(list)
    for line in rated.lines:
        version = stored.version_number(line.plan, line.version)
        lines[line.customer].append(
            Line(str(line.kind), line.description, line.quantity, line.unit_price, line.amount_exact, line.amount, line.plan, version)
        )
    return plans, currency, lines, _rule_versions(tasks)


def _rule_versions(tasks: Any) -> dict[str, tuple[int, ...]]:
    if "rule_version" not in tasks or tasks.empty:
        return {}
    used = tasks.loc[tasks["rule_version"].notna(), ["customer", "rule_version"]].drop_duplicates()
    out: dict[str, set[int]] = defaultdict(set)
    for name, version in used.itertuples(index=False):
        out[name].add(int(version))
    return {name: tuple(sorted(versions)) for name, versions in out.items()}


def _in_force(stored: StoredPlans, plan: str, period: Period) -> bool:
    try:
        stored.book.at(plan, last_day(period))
    except InvalidInput:
        return False
    return True


def month_drafts(
    session: Session,
    tenant: Tenant,
    period: Period,
    state: RollupState,
    *,
    customer: str | None = None,
    adjust: bool = True,
    now: datetime | None = None,
) -> tuple[list[Draft], list[str]]:
    """The invoices of a month as they stand, by customer, and the closed months checked for
    late usage. A customer with nothing to bill gets no invoice."""
    stored = repository.stored_plans(session, tenant.id)
    plans, currency, lines, rule_versions = _month_lines(session, tenant, period, stored, customer=customer, now=now)
    checked: list[str] = []
    if adjust:
        late = late_adjustments(session, tenant, period, state, customer=customer)
        checked = late.checked
        for name, extra in late.lines.items():
            if name in currency and currency[name] != late.currency[name]:
                raise InvalidInput(
                    f"{name!r}: late usage billed in {late.currency[name]} cannot go on a {currency[name]} invoice"
                )
            currency.setdefault(name, late.currency[name])
            plans.setdefault(name, extra[0].plan or "")
            lines[name].extend(extra)
    drafts = [
        Draft(name, period.label, currency[name], plans[name], tuple(lines[name]), rule_versions.get(name, ()))
        for name in sorted(lines)
        if lines[name]
    ]
    return drafts, checked


def upcoming_invoice(session: Session, tenant: Tenant, customer: str, *, now: datetime, month: str | None = None) -> dict[str, Any]:
    """The draft of a customer's invoice for an open month (default: the month of `now`)."""
    period = billing_month(month, tenant.timezone, field="query.month") if month else period_of(now, tenant.timezone)
    if _closed(session, tenant.id, period.label) is not None:
        raise Conflict(f"{period.label} is closed: its invoices are final", detail={"month": period.label})
    require_customer(session, tenant, customer)
    state = repository.rollup_position(session, tenant.id)
    # Late usage goes on the next invoice closed: this one only if the month before is closed.
    adjust = _closed(session, tenant.id, period.previous().label) is not None
    drafts, _ = month_drafts(session, tenant, period, state, customer=customer, adjust=adjust, now=now)
    assignment = repository.assignments_on(session, tenant.id, last_day(period), customers_=[customer]).get(customer)
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
             "plan": line.plan, "plan_version": line.plan_version, "adjusts_period": line.adjusts_period}
            for n, line in enumerate(draft.lines, start=1)
        ],
    }  # fmt: skip


# --- close --------------------------------------------------------------------------------------


def close_period(session: Session, tenant: Tenant, period: Period, *, now: datetime) -> dict[str, Any]:
    """Finalize every invoice of a tenant-local month that has ended; a no-op when it is closed.

    It brings the tenant's usage up to date itself (`metering.pipeline.bring_up_to_date`, once)
    with connections of its own before taking the lock, so the session must not have begun a
    transaction (on SQLite, a write already made by it would block them): it refuses otherwise.
    """
    if now < period.end:
        raise InvalidInput(f"{period.label} has not ended yet (it ends {period.end.isoformat()})", detail={"month": period.label})
    if session.in_transaction():
        raise RuntimeError("close_period brings usage up to date before its transaction: call it first in its unit of work")
    bring_up_to_date(session.get_bind(), tenant, now=now)  # type: ignore[arg-type]
    state = lock_billing(session, tenant.id, now=now)
    if (closed := _closed(session, tenant.id, period.label)) is not None:
        closed_at = closed.closed_at if closed.closed_at.tzinfo else closed.closed_at.replace(tzinfo=UTC)  # SQLite: naive UTC
        return _close_summary(session, tenant, period, closed_at, closed=False)
    stored = repository.stored_plans(session, tenant.id)
    drafts, checked = month_drafts(session, tenant, period, state)
    _write_invoices(session, tenant, period, drafts, state, now=now)
    session.execute(
        insert(billing_periods).values(
            tenant_id=tenant.id, period=period.label, closed_at=now, watermark_seq=state.watermark_seq,
            price_version=state.price_version, plans_as_of=stored.newest_id,
            assignments_as_of=repository.newest_assignment_id(session, tenant.id),
            reconciled_seq=state.watermark_seq, reconciled_price_version=state.price_version,
        )
    )  # fmt: skip
    if checked:
        session.execute(
            update(billing_periods)
            .where(billing_periods.c.tenant_id == tenant.id, billing_periods.c.period.in_(checked))
            .values(reconciled_seq=state.watermark_seq, reconciled_price_version=state.price_version)
        )
    return _close_summary(session, tenant, period, now, closed=True)


def lock_billing(session: Session, tenant_id: int, *, now: datetime) -> RollupState:
    """Take the tenant's billing lock for the rest of the session's transaction."""
    connection = session.connection()
    if is_sqlite(connection):
        dbapi = connection.connection.dbapi_connection
        if not dbapi.in_transaction:  # type: ignore[union-attr]
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        # else: the transaction has written already, so it holds the write lock
    upsert(
        session,
        rollup_state,
        {"tenant_id": tenant_id, "watermark_seq": 0, "price_version": "", "updated_at": now},
        key=["tenant_id"],
    )
    row = session.execute(select(rollup_state).where(rollup_state.c.tenant_id == tenant_id).with_for_update()).one()
    return RollupState(int(row.watermark_seq), row.price_version)


def _closed(session: Session, tenant_id: int, label: str) -> Any:
    return session.execute(
        select(billing_periods).where(billing_periods.c.tenant_id == tenant_id, billing_periods.c.period == label)
    ).one_or_none()


def invoice_number(tenant: Tenant, period: Period, seq: int) -> str:
    """`INV-<tenant>-<yyyymm>-<seq>`; a tenant name too long for 64 characters is shortened and
    suffixed with `.<tenant id>` (names have no dots, so numbers stay unique)."""
    tail = f"-{period.first_day:%Y%m}-{seq:04d}"
    name = tenant.name
    if len("INV-") + len(name) + len(tail) > NUMBER_LENGTH:
        suffix = f".{tenant.id}"
        name = name[: NUMBER_LENGTH - len("INV-") - len(tail) - len(suffix)] + suffix
    return f"INV-{name}{tail}"


def _write_invoices(session: Session, tenant: Tenant, period: Period, drafts: list[Draft], state: RollupState, *, now: datetime) -> None:
    if not drafts:
        return
    rows = [
        {"tenant_id": tenant.id, "customer": d.customer, "period": d.period, "number": None, "status": "draft",
         "currency": d.currency, "total_minor": 0, "plan": d.plan, "plan_versions": json.dumps(d.plan_versions()),
         "price_version": state.price_version, "created_at": now,
         "outcome_versions": json.dumps(list(d.outcome_versions)) if d.outcome_versions else None}
        for d in drafts
    ]  # fmt: skip
    ids = session.execute(insert(invoices).returning(invoices.c.id, sort_by_parameter_order=True), rows).scalars().all()
    lines = [
        {"invoice_id": invoice_id, "line_no": n, "kind": line.kind, "description": line.description,
         "quantity": _text(line.quantity), "unit_price": _text(line.unit_price), "amount_exact": _text(line.amount_exact),
         "amount_minor": to_minor(line.amount, draft.currency), "plan": line.plan, "plan_version": line.plan_version,
         "adjusts_period": line.adjusts_period}
        for invoice_id, draft in zip(ids, drafts, strict=True)
        for n, line in enumerate(draft.lines, start=1)
    ]  # fmt: skip
    session.execute(insert(invoice_lines), lines)
    finalize = (
        update(invoices)
        .where(invoices.c.id == bindparam("invoice_id"), invoices.c.status == "draft")
        .values(status="finalized", number=bindparam("invoice_number"), total_minor=bindparam("total"), finalized_at=now)
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


def _with_line_counts(session: Session, tenant: Tenant, *, period: str | None = None, customer: str | None = None) -> list[Any]:
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


def _close_summary(session: Session, tenant: Tenant, period: Period, closed_at: datetime, *, closed: bool) -> dict[str, Any]:
    rows = _with_line_counts(session, tenant, period=period.label)
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
             "adjusts_period": line.adjusts_period}
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
    rows = _with_line_counts(session, tenant, period=period.label if period else None, customer=customer)
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
