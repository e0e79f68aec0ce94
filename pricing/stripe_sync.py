"""Push finalized invoices to Stripe, once each, with totals equal to ours to the cent.

For each finalized invoice of a tenant not yet synced, oldest first:

1. the Stripe customer, created once (its id stored on `customers.stripe_customer_id`);
2. a draft Stripe invoice (`pending_invoice_items_behavior="exclude"`, `auto_advance=False` so
   Stripe does not finalize it by itself while lines are being added; metadata names ours);
3. one invoice item per line, attached to that draft, in minor units;
4. the draft's total and item count checked against ours, then the invoice finalized, and the
   finalized total checked again.

Every call carries an idempotency key derived from our ids (`tm-inv-<id>-create`,
`tm-line-<line id>`, ...), and every Stripe id is committed as soon as Stripe returns it. A crash
anywhere resumes where it stopped: a call that Stripe served but we never recorded is replayed
under its key; past Stripe's 24-hour key memory, items already on the draft are recognized by
their `tm_line_id` metadata and a lost draft by its `tm_invoice_id`.

`stripe_status` of an invoice: NULL (not tried), `pending` (being pushed), `retrying` (a transient
error outlasted the in-run retries; tried again from `stripe_sync_state.next_retry_us`, backing off
exponentially), `synced`, `failed` (a permanent error, in `stripe_error`; retried only on demand).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import Engine, Row, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from metering.core.db import unit_of_work, upsert
from metering.core.jobstate import DEFAULT_LEASE_SECONDS, hold
from metering.core.tenants import Tenant
from pricing.stripe_gateway import StripeGateway, describe, is_account_error, is_transient
from pricing.stripe_tables import stripe_sync_state
from pricing.tables import customers, invoice_lines, invoices

log = logging.getLogger("taskmeter.stripe")

PENDING, RETRYING, SYNCED, FAILED = "pending", "retrying", "synced", "failed"
GUARD = "stripe_sync"
RETRY_BASE = timedelta(minutes=1)
RETRY_CAP = timedelta(hours=6)


class SyncProblem(Exception):
    """A permanent problem found by us rather than by Stripe (a total mismatch, a missing customer)."""


@dataclass
class SyncReport:
    tenant: str
    busy: bool = False  # another worker was syncing this tenant; nothing done
    synced: list[str] = field(default_factory=list)
    retrying: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    aborted: str | None = None  # an account-level error stopped the run

    def summary(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "busy": self.busy, "synced": self.synced,
            "retrying": self.retrying, "failed": self.failed, "aborted": self.aborted,
        }  # fmt: skip


def sync_tenant(
    engine: Engine,
    tenant: Tenant,
    gateway: StripeGateway,
    *,
    now: datetime,
    retry_failed: bool = False,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> SyncReport:
    """Push the tenant's due invoices. One worker at a time per tenant: a concurrent call returns
    at once with `busy`. `retry_failed` also retries invoices whose last error was permanent."""
    report = SyncReport(tenant.name)
    with hold(engine, GUARD, tenant.id, lease_seconds=lease_seconds) as guard:
        if guard is None:
            report.busy = True
            return report
        with unit_of_work(engine) as session:
            due = _due_invoices(session, tenant.id, now=now, retry_failed=retry_failed)
        for invoice_id in due:
            if not _sync_one(engine, tenant, gateway, invoice_id, now=now, report=report):
                break
            if not guard.renew():
                log.warning("Stripe sync of %s lost its guard; stopping", tenant.name)
                break
    return report


def _due_invoices(session: Session, tenant_id: int, *, now: datetime, retry_failed: bool) -> list[int]:
    now_us = _us(now)
    statuses = [PENDING, RETRYING] + ([FAILED] if retry_failed else [])
    query = (
        select(invoices.c.id)
        .outerjoin(stripe_sync_state, stripe_sync_state.c.invoice_id == invoices.c.id)
        .where(
            invoices.c.tenant_id == tenant_id,
            invoices.c.status == "finalized",
            or_(
                invoices.c.stripe_status.is_(None),
                and_(
                    invoices.c.stripe_status.in_(statuses),
                    or_(
                        stripe_sync_state.c.next_retry_us.is_(None),
                        stripe_sync_state.c.next_retry_us <= now_us,
                        invoices.c.stripe_status == FAILED,
                    ),
                ),
            ),
        )
        .order_by(invoices.c.finalized_at, invoices.c.id)
    )
    return list(session.execute(query).scalars())


def _sync_one(
    engine: Engine,
    tenant: Tenant,
    gateway: StripeGateway,
    invoice_id: int,
    *,
    now: datetime,
    report: SyncReport,
) -> bool:
    """Push one invoice and record the outcome; False when the run must stop."""
    number = str(invoice_id)
    try:
        number = _push(engine, tenant, gateway, invoice_id, now=now)
    except stripe.StripeError as error:
        transient = is_transient(error)
        entry = _record_failure(engine, invoice_id, now=now, message=describe(error), transient=transient)
        (report.retrying if transient else report.failed).append(entry)
        if is_account_error(error):
            report.aborted = describe(error)
            return False
        return True
    except SyncProblem as problem:
        report.failed.append(
            _record_failure(engine, invoice_id, now=now, message=str(problem), transient=False)
        )
        return True
    report.synced.append(number)
    return True


def _push(engine: Engine, tenant: Tenant, gateway: StripeGateway, invoice_id: int, *, now: datetime) -> str:
    with unit_of_work(engine) as session:
        invoice = session.execute(select(invoices).where(invoices.c.id == invoice_id)).one()
        lines = session.execute(
            select(invoice_lines)
            .where(invoice_lines.c.invoice_id == invoice_id)
            .order_by(invoice_lines.c.line_no)
        ).all()
        customer = session.execute(
            select(customers.c.stripe_customer_id).where(
                customers.c.tenant_id == tenant.id, customers.c.customer == invoice.customer
            )
        ).one_or_none()
        if invoice.stripe_status != PENDING:
            _set_invoice(session, invoice_id, stripe_status=PENDING)
    tried_before = invoice.stripe_status is not None
    if customer is None:
        raise SyncProblem(f"customer {invoice.customer!r} of invoice {invoice.number} is not configured")

    customer_id = customer.stripe_customer_id or _create_customer(engine, tenant, gateway, invoice.customer)
    stripe_invoice_id = invoice.stripe_invoice_id
    if stripe_invoice_id is None and tried_before:
        stripe_invoice_id = _find_lost_draft(engine, gateway, invoice, customer_id)
    if stripe_invoice_id is None:
        stripe_invoice_id = _create_invoice(engine, tenant, gateway, invoice, customer_id)

    remote = gateway.retrieve_invoice(stripe_invoice_id)
    if remote.status == "draft":
        _add_items(engine, gateway, invoice, lines, customer_id, stripe_invoice_id)
        _check(
            gateway.retrieve_invoice(stripe_invoice_id),
            invoice,
            "draft",
            items=len(gateway.invoice_items(stripe_invoice_id)),
            lines=len(lines),
        )
        remote = gateway.finalize_invoice(stripe_invoice_id, key=f"tm-inv-{invoice.id}-finalize")
    elif remote.status not in ("open", "paid", "uncollectible"):
        raise SyncProblem(
            f"Stripe invoice {stripe_invoice_id} is {remote.status}, not draft or open: settle it by hand"
        )
    _check(remote, invoice, "finalized")

    with unit_of_work(engine) as session:
        _set_invoice(session, invoice_id, stripe_status=SYNCED, stripe_error=None)
        session.execute(delete(stripe_sync_state).where(stripe_sync_state.c.invoice_id == invoice_id))
    log.info("invoice %s pushed to Stripe as %s (%s)", invoice.number, stripe_invoice_id, remote.number)
    return str(invoice.number)


def _create_customer(engine: Engine, tenant: Tenant, gateway: StripeGateway, customer: str) -> str:
    digest = hashlib.sha256(customer.encode()).hexdigest()[:32]
    created = gateway.create_customer(
        {"name": customer, "metadata": {"tm_tenant": tenant.name, "tm_customer": customer}},
        key=f"tm-cus-{tenant.id}-{digest}",
    )
    with unit_of_work(engine) as session:
        session.execute(
            update(customers)
            .where(customers.c.tenant_id == tenant.id, customers.c.customer == customer)
            .values(stripe_customer_id=created.id)
        )
    return str(created.id)


def _invoice_metadata(invoice: Row[Any]) -> dict[str, str]:
    return {
        "tm_invoice_id": str(invoice.id),
        "tm_invoice_number": str(invoice.number),
        "tm_period": invoice.period,
    }


def _create_invoice(
    engine: Engine, tenant: Tenant, gateway: StripeGateway, invoice: Row[Any], customer_id: str
) -> str:
    created = gateway.create_invoice(
        {
            "customer": customer_id,
            "currency": invoice.currency.lower(),
            "pending_invoice_items_behavior": "exclude",
            "auto_advance": False,
            "description": f"{invoice.number} ({invoice.period})",
            "metadata": {**_invoice_metadata(invoice), "tm_tenant": tenant.name},
        },
        key=f"tm-inv-{invoice.id}-create",
    )
    with unit_of_work(engine) as session:
        _set_invoice(session, invoice.id, stripe_invoice_id=created.id)
    return str(created.id)


def _find_lost_draft(
    engine: Engine, gateway: StripeGateway, invoice: Row[Any], customer_id: str
) -> str | None:
    """A Stripe invoice of ours whose id a crash kept us from recording (beyond key replay)."""
    for candidate in gateway.invoices_of(customer_id):
        if metadata_of(candidate).get("tm_invoice_id") == str(invoice.id) and candidate.status != "void":
            with unit_of_work(engine) as session:
                _set_invoice(session, invoice.id, stripe_invoice_id=candidate.id)
            return str(candidate.id)
    return None


def _add_items(
    engine: Engine,
    gateway: StripeGateway,
    invoice: Row[Any],
    lines: Sequence[Row[Any]],
    customer_id: str,
    stripe_invoice_id: str,
) -> None:
    on_stripe = {
        metadata_of(item).get("tm_line_id"): str(item.id) for item in gateway.invoice_items(stripe_invoice_id)
    }
    for line in lines:
        if line.stripe_item_id is not None:
            continue
        item_id = on_stripe.get(str(line.id))
        if item_id is None:
            metadata = {"tm_line_id": str(line.id), "tm_invoice_id": str(invoice.id), "tm_kind": line.kind}
            if line.adjusts_period:
                metadata["tm_adjusts_period"] = line.adjusts_period
            item = gateway.create_invoice_item(
                {
                    "customer": customer_id,
                    "invoice": stripe_invoice_id,
                    "amount": int(line.amount_minor),
                    "currency": invoice.currency.lower(),
                    "description": line.description,
                    "metadata": metadata,
                },
                key=f"tm-line-{line.id}",
            )
            item_id = str(item.id)
        with unit_of_work(engine) as session:
            session.execute(
                update(invoice_lines).where(invoice_lines.c.id == line.id).values(stripe_item_id=item_id)
            )


def metadata_of(obj: Any) -> dict[str, str]:
    """A Stripe object's metadata as a dict (StripeObjects are not dicts in stripe 16)."""
    metadata = getattr(obj, "metadata", None)
    return {} if metadata is None else {str(k): str(v) for k, v in metadata.to_dict().items()}


def _check(
    remote: Any, invoice: Row[Any], stage: str, *, items: int | None = None, lines: int | None = None
) -> None:
    problems = []
    if remote.total != invoice.total_minor:
        problems.append(f"total {remote.total} != ours {invoice.total_minor}")
    if str(remote.currency).lower() != invoice.currency.lower():
        problems.append(f"currency {remote.currency} != ours {invoice.currency.lower()}")
    if items is not None and items != lines:
        problems.append(f"{items} item(s) != our {lines} line(s)")
    if problems:
        raise SyncProblem(
            f"Stripe {stage} invoice {remote.id} does not match {invoice.number}: {'; '.join(problems)}"
        )


def _set_invoice(session: Session, invoice_id: int, **values: Any) -> None:
    session.execute(update(invoices).where(invoices.c.id == invoice_id).values(**values))


def _record_failure(
    engine: Engine, invoice_id: int, *, now: datetime, message: str, transient: bool
) -> dict[str, Any]:
    with unit_of_work(engine) as session:
        attempts = (
            session.execute(
                select(stripe_sync_state.c.attempts).where(stripe_sync_state.c.invoice_id == invoice_id)
            ).scalar_one_or_none()
            or 0
        ) + 1
        next_retry = now + min(RETRY_CAP, RETRY_BASE * 2 ** (attempts - 1)) if transient else None
        values = {
            "attempts": attempts,
            "next_retry_us": _us(next_retry) if next_retry else None,
            "last_error": message,
            "updated_at": now,
        }
        upsert(session, stripe_sync_state, {"invoice_id": invoice_id, **values}, key=["invoice_id"], update=values)
        _set_invoice(
            session, invoice_id, stripe_status=RETRYING if transient else FAILED, stripe_error=message
        )
        number = session.execute(select(invoices.c.number).where(invoices.c.id == invoice_id)).scalar_one()
    log.warning(
        "Stripe sync of invoice %s %s: %s", number, "will be retried" if transient else "failed", message
    )
    entry: dict[str, Any] = {"invoice": number, "error": message, "attempts": attempts}
    if next_retry is not None:
        entry["next_retry_at"] = next_retry.isoformat()
    return entry


def sync_status(session: Session, tenant_id: int) -> dict[str, Any]:
    """The tenant's finalized invoices by Stripe status, and every one not synced, with its error."""
    counts = session.execute(
        select(invoices.c.stripe_status, func.count())
        .where(invoices.c.tenant_id == tenant_id, invoices.c.status == "finalized")
        .group_by(invoices.c.stripe_status)
    ).all()
    rows = session.execute(
        select(invoices, stripe_sync_state.c.attempts, stripe_sync_state.c.next_retry_us)
        .outerjoin(stripe_sync_state, stripe_sync_state.c.invoice_id == invoices.c.id)
        .where(
            invoices.c.tenant_id == tenant_id,
            invoices.c.status == "finalized",
            or_(invoices.c.stripe_status.is_(None), invoices.c.stripe_status != SYNCED),
        )
        .order_by(invoices.c.finalized_at, invoices.c.id)
    ).all()
    return {
        "counts": {status or "not_synced": int(n) for status, n in counts},
        "unsynced": [
            {
                "id": r.id, "number": r.number, "customer": r.customer, "period": r.period,
                "total_minor": r.total_minor, "currency": r.currency,
                "stripe_status": r.stripe_status, "stripe_error": r.stripe_error,
                "stripe_invoice_id": r.stripe_invoice_id, "attempts": r.attempts or 0,
                "next_retry_at": _from_us(r.next_retry_us),
            }
            for r in rows
        ],
    }  # fmt: skip


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _from_us(value: int | None) -> datetime | None:
    return None if value is None else datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)
