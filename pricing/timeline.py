"""A task's timeline, as the dashboard's drill-down shows it: its events in time order with who
sent each (the API key, actor and agent), how it settled under which outcome-rule version, the
invoice (and its price version) that billed it, and its disputes and credit notes. Every read is
scoped by tenant: another tenant's task is not found."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from metering.core.periods import period_of
from metering.core.tables import rollup_state
from metering.core.tenants import Tenant
from metering.events.ingest import from_us
from metering.rollup import repository as usage_reads
from pricing import outcomes_repository
from pricing.disputes import task_settlement, view
from pricing.tables import credit_notes, disputes, invoices


@dataclass(frozen=True)
class Settlement:
    state: str  # settled, pending, awaiting acceptance, reopened, rejected, failed, cancelled, open
    status: str
    completed_at: datetime | None
    settled_at: datetime | None  # when settled (state settled), or when it will (pending)
    reopened: int
    reopened_at: datetime | None
    rejected: int
    rule_version: int | None
    settle_after: timedelta | None
    require_acceptance: bool
    dispute_window: timedelta


@dataclass(frozen=True)
class Timeline:
    task: str
    customer: str
    task_type: str | None
    settlement: Settlement
    events: list[dict[str, Any]]
    more_events: bool
    invoice: dict[str, Any] | None  # the finalized invoice of the task's billing month, if any
    price_version: str | None  # the invoice's, else the rollup's current one
    disputes: list[dict[str, Any]]
    credit_notes: list[dict[str, Any]]


def task_timeline(session: Session, tenant: Tenant, task: str, *, now: datetime, limit: int = 500) -> Timeline:
    """The task's timeline at `now` (NotFound: no such task in the tenant)."""
    info = task_settlement(session, tenant, task)
    row = outcomes_repository.task_frame(session, tenant.id, task).iloc[0]
    task_type = None if pd.isna(row["task_type"]) else str(row["task_type"])
    rule = None
    if info["rule_version"] is not None:
        book = outcomes_repository.rule_book(session, tenant.id)
        version = next(v for v in book.versions if v.version == info["rule_version"])
        rule = version.rule_for(task_type)
    settled = info["settled_us"]
    settlement = Settlement(
        state=_state(info, row, rule is not None, now),
        status=info["status"],
        completed_at=_at(info["completed_us"]),
        settled_at=_at(settled),
        reopened=int(row["reopened"]),
        reopened_at=None if pd.isna(row["reopened_us"]) else from_us(int(row["reopened_us"])),
        rejected=int(row["rejected"]),
        rule_version=info["rule_version"],
        settle_after=rule.settle_after if rule else None,
        require_acceptance=bool(rule and rule.require_acceptance),
        dispute_window=info["dispute_window"],
    )
    events = usage_reads.task_events(session, tenant.id, task, limit=limit + 1)
    billed_us = settled if settled is not None else (None if pd.isna(row["ended_us"]) else int(row["ended_us"]))
    invoice = _invoice(session, tenant, info["customer"], billed_us)
    price_version = invoice["price_version"] if invoice else session.execute(
        select(rollup_state.c.price_version).where(rollup_state.c.tenant_id == tenant.id)
    ).scalar_one_or_none()
    found = session.execute(
        select(disputes).where(disputes.c.tenant_id == tenant.id, disputes.c.task == task).order_by(disputes.c.id)
    ).all()
    notes = session.execute(
        select(credit_notes.c.id, credit_notes.c.invoice_id, credit_notes.c.amount_minor, credit_notes.c.reason,
               credit_notes.c.created_at, credit_notes.c.dispute_id, invoices.c.currency, invoices.c.number)
        .join(invoices, invoices.c.id == credit_notes.c.invoice_id)
        .where(credit_notes.c.tenant_id == tenant.id, credit_notes.c.task == task)
        .order_by(credit_notes.c.id)
    ).all()  # fmt: skip
    return Timeline(
        task, info["customer"], task_type, settlement, events[:limit], len(events) > limit, invoice, price_version,
        [view(d) for d in found], [dict(n._mapping) for n in notes],
    )  # fmt: skip


def _at(micros: int | None) -> datetime | None:
    return None if micros is None else from_us(micros)


def _state(info: dict[str, Any], row: Any, ruled: bool, now: datetime) -> str:
    settled, status = info["settled_us"], info["status"]
    if settled is not None and from_us(settled) <= now:
        return "settled"
    if settled is not None:
        return "pending"
    if status == "completed" and ruled:
        return "awaiting acceptance"
    if status == "open" and int(row["reopened"]):
        return "reopened"
    if status == "failed" and int(row["rejected"]):
        return "rejected"
    return str(status)


def _invoice(session: Session, tenant: Tenant, customer: str, billed_us: int | None) -> dict[str, Any] | None:
    if billed_us is None:
        return None
    label = period_of(from_us(billed_us), tenant.timezone).label
    found = session.execute(
        select(invoices.c.id, invoices.c.number, invoices.c.period, invoices.c.price_version, invoices.c.outcome_versions)
        .where(invoices.c.tenant_id == tenant.id, invoices.c.customer == customer, invoices.c.period == label,
               invoices.c.status == "finalized")
    ).one_or_none()  # fmt: skip
    return None if found is None else dict(found._mapping)
