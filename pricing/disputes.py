"""Disputes of billed jobs (DESIGN.md "Outcome truth"): open, then resolve (accept or reject).

- Opening: the task must have completed; a dispute is possible until `dispute_window` after the
  task settled (`pricing.outcomes`; without rules: 30 days after it completed), else 409. One
  dispute per task at a time; an `Idempotency-Key` replays the same answer.
- Accepting: when the task's settlement month is closed and an invoice billed it, a credit note
  for what that task was billed (the month rated as closed, with and without the task: exact to
  the minor unit), never more than the invoice's remaining credit, linked to the task and the
  dispute. When the month is open the task is not billed at all (`billed_tasks` leaves it out).
- Rejecting changes nothing billed. Each step goes to the audit log (by the caller: the API's
  `AuditTrail`, the CLI's), and services never commit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from metering.core.errors import Conflict, InvalidInput, NotFound
from metering.core.money import to_minor
from metering.core.periods import period_of
from metering.core.tenants import Tenant
from metering.events.ingest import from_us
from pricing import outcomes_repository, repository
from pricing.outcomes import RuleBook
from pricing.rating import rate_month
from pricing.tables import billing_periods, credit_notes, disputes, invoices
from pricing.usage import TASK_COLUMNS

DEFAULT_DISPUTE_WINDOW = timedelta(days=30)
MAX_TEXT = 2000


def view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "task": row.task, "customer": row.customer, "status": row.status, "reason": row.reason,
        "note": row.note, "opened_at": _aware(row.opened_at), "opened_by": row.opened_by,
        "resolved_at": _aware(row.resolved_at), "resolved_by": row.resolved_by,
        "invoice_id": row.invoice_id, "credit_note_id": row.credit_note_id,
    }  # fmt: skip


def _aware(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _text(value: str, field: str, *, required: bool) -> str | None:
    text = value.strip()
    if required and not text:
        raise InvalidInput("invalid dispute", detail=[{"field": field, "message": "must not be empty"}])
    if "\x00" in text or len(text) > MAX_TEXT:
        message = (
            "must not contain NUL characters" if "\x00" in text else f"must be at most {MAX_TEXT} characters"
        )
        raise InvalidInput("invalid dispute", detail=[{"field": field, "message": message}])
    return text or None


def _row(session: Session, tenant_id: int, dispute_id: int, *, lock: bool = False) -> Any:
    if not 0 < dispute_id < 2**63:
        raise NotFound(f"no dispute {dispute_id}")
    query = select(disputes).where(disputes.c.tenant_id == tenant_id, disputes.c.id == dispute_id)
    row = session.execute(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise NotFound(f"no dispute {dispute_id}")
    return row


def get_dispute(
    session: Session, tenant: Tenant, dispute_id: int, *, customer: str | None = None
) -> dict[str, Any]:
    row = _row(session, tenant.id, dispute_id)
    if customer is not None and row.customer != customer:
        raise NotFound(f"no dispute {dispute_id}")
    return view(row)


def task_settlement(
    session: Session, tenant: Tenant, task: str, *, customer: str | None = None
) -> dict[str, Any]:
    """The task as settlement sees it: its row, `settled_us` (None: not settled), and its rule's
    dispute window. NotFound for another customer's task (`customer`), as for no task."""
    book = outcomes_repository.rule_book(session, tenant.id)
    frame = outcomes_repository.task_frame(session, tenant.id, task)
    if frame.empty or (customer is not None and frame["customer"].iloc[0] != customer):
        raise NotFound(f"no task {task!r}")
    settled = outcomes_repository.settled_frame(frame, book, tenant.timezone).iloc[0]
    return {
        "task": task,
        "customer": settled["customer"],
        "status": settled["status"],
        "completed_us": None if _na(settled["completed_us"]) else int(settled["completed_us"]),
        "settled_us": None if _na(settled["settled_us"]) else int(settled["settled_us"]),
        "rule_version": None if _na(settled["rule_version"]) else int(settled["rule_version"]),
        "dispute_window": _window(book, settled),
    }


def _na(value: Any) -> bool:
    return bool(pd.isna(value))


def _window(book: RuleBook, task: Any) -> timedelta:
    if _na(task["rule_version"]):
        return DEFAULT_DISPUTE_WINDOW
    version = next(v for v in book.versions if v.version == int(task["rule_version"]))
    rule = version.rule_for(None if _na(task["task_type"]) else task["task_type"])
    return rule.dispute_window if rule is not None else DEFAULT_DISPUTE_WINDOW


def open_dispute(
    session: Session,
    tenant: Tenant,
    task: str,
    *,
    reason: str,
    actor: str,
    now: datetime,
    customer: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Open a dispute of a task; returns it and whether it was created (False: an
    `idempotency_key` replay)."""
    text = _text(reason, "body.reason", required=True)
    if idempotency_key is not None:
        found = session.execute(
            select(disputes).where(
                disputes.c.tenant_id == tenant.id, disputes.c.idempotency_key == idempotency_key
            )
        ).one_or_none()
        if found is not None:
            if found.task != task or (customer is not None and found.customer != customer):
                raise Conflict(
                    "this Idempotency-Key was used for another request",
                    detail={"idempotency_key": idempotency_key},
                )
            return view(found), False
    info = task_settlement(session, tenant, task, customer=customer)
    start_us = info["settled_us"] if info["settled_us"] is not None else info["completed_us"]
    if start_us is None or (info["status"] != "completed" and info["settled_us"] is None):
        raise Conflict(
            f"task {task!r} is {info['status']}: only a completed task can be disputed", detail={"task": task}
        )
    closes = from_us(start_us) + info["dispute_window"]
    if now > closes:
        raise Conflict(
            f"the dispute window of task {task!r} ended {closes.isoformat()}",
            detail={"task": task, "window_ended": closes.isoformat()},
        )
    current = session.execute(
        select(disputes.c.id, disputes.c.status).where(
            disputes.c.tenant_id == tenant.id, disputes.c.task == task, disputes.c.status != "rejected"
        )
    ).first()
    if current is not None:
        raise Conflict(
            f"task {task!r} already has an {current.status} dispute ({current.id})",
            detail={"dispute": current.id},
        )
    try:
        with session.begin_nested():
            dispute_id = session.execute(
                insert(disputes)
                .values(
                    tenant_id=tenant.id, customer=info["customer"], task=task, reason=text, status="open",
                    opened_at=now, opened_by=actor[:128], idempotency_key=idempotency_key,
                )
                .returning(disputes.c.id)
            ).scalar_one()  # fmt: skip
    except IntegrityError:  # the same Idempotency-Key, committed by a concurrent request
        raise Conflict("this Idempotency-Key is in use by a concurrent request; retry it") from None
    return view(_row(session, tenant.id, dispute_id)), True


def resolve_dispute(
    session: Session, tenant: Tenant, dispute_id: int, *, accept: bool, note: str, actor: str, now: datetime
) -> tuple[dict[str, Any], bool]:
    """Accept or reject an open dispute; returns it and whether this call resolved it (False: it
    was resolved the same way before, which answers the same)."""
    row = _row(session, tenant.id, dispute_id, lock=True)
    outcome = "accepted" if accept else "rejected"
    if row.status != "open":
        if row.status == outcome:
            return view(row), False
        raise Conflict(f"dispute {dispute_id} was {row.status} already", detail={"status": row.status})
    values: dict[str, Any] = {
        "status": outcome,
        "note": _text(note, "body.note", required=False),
        "resolved_at": now,
        "resolved_by": actor[:128],
    }
    if accept:
        values |= _credit(session, tenant, row, now=now)
    session.execute(update(disputes).where(disputes.c.id == row.id).values(**values))
    return view(_row(session, tenant.id, dispute_id)), True


def _credit(session: Session, tenant: Tenant, row: Any, *, now: datetime) -> dict[str, Any]:
    """When the task's month is closed and invoiced: a credit note for what the task was billed."""
    info = task_settlement(session, tenant, row.task)
    billed_us = info["settled_us"]
    if billed_us is None:
        return {}
    period = period_of(from_us(billed_us), tenant.timezone)
    closed = session.execute(
        select(billing_periods).where(
            billing_periods.c.tenant_id == tenant.id, billing_periods.c.period == period.label
        )
    ).one_or_none()
    if closed is None:
        return {}  # an open month: billed_tasks leaves the task out
    invoice = session.execute(
        select(invoices)
        .where(
            invoices.c.tenant_id == tenant.id,
            invoices.c.customer == row.customer,
            invoices.c.period == period.label,
        )
        .with_for_update()
    ).one_or_none()
    if invoice is None or invoice.status != "finalized":
        return {}
    amount = task_amount(
        session, tenant, period, row.customer, row.task, invoice.plan, plans_as_of=closed.plans_as_of
    )
    credited = session.execute(
        select(func.coalesce(func.sum(credit_notes.c.amount_minor), 0)).where(
            credit_notes.c.invoice_id == invoice.id
        )
    ).scalar_one()
    minor = max(0, min(to_minor(amount, invoice.currency), invoice.total_minor - int(credited)))
    if minor == 0:
        return {"invoice_id": invoice.id}
    note_id = session.execute(
        insert(credit_notes)
        .values(
            invoice_id=invoice.id, tenant_id=tenant.id, amount_minor=minor, created_at=now, task=row.task, dispute_id=row.id,
            reason=f"Dispute {row.id} accepted: task {row.task}",
        )
        .returning(credit_notes.c.id)
    ).scalar_one()  # fmt: skip
    return {"invoice_id": invoice.id, "credit_note_id": note_id}


def task_amount(
    session: Session,
    tenant: Tenant,
    period: Any,
    customer: str,
    task: str,
    plan: str,
    *,
    plans_as_of: int | None = None,
) -> Decimal:
    """What the month billed for one task: the customer's month rated with and without it (the
    plans as the close saw them), so tiers, allowances and minimums count as they did."""
    stored = repository.stored_plans(session, tenant.id, as_of=plans_as_of)
    tokens = repository.token_usage(session, tenant.id, period, customer)
    tasks = outcomes_repository.billed_tasks(session, tenant.id, period, customer, timezone=tenant.timezone)[
        list(TASK_COLUMNS)
    ]
    if not (tasks["task"] == task).any():
        return Decimal(0)

    def total(frame: Any) -> Decimal:
        rated = rate_month(
            month=period.first_day, customers={customer: plan}, plans=stored.book, token_usage=tokens, tasks=frame,
            currency=tenant.currency, tz=tenant.timezone,
        )  # fmt: skip
        return rated.totals()[customer]

    return total(tasks) - total(tasks[tasks["task"] != task].reset_index(drop=True))
