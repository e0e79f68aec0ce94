"""Pending jobs of the upcoming invoice: completed tasks whose settlement has not come yet
(`pricing.outcomes`), shown apart from the billed lines with what they would add if they
settled this month: the month rated with them minus the month rated without them, so tiers,
allowances and minimums count exactly as they will."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
from sqlalchemy.orm import Session

from metering.core.money import from_minor
from metering.core.periods import Period
from metering.core.tenants import Tenant
from metering.costs.prices import settle_nanos
from pricing import outcomes_repository, repository
from pricing.rating import rate_month
from pricing.repository import last_day
from pricing.usage import TASK_COLUMNS


def pending_jobs(
    session: Session, tenant: Tenant, period: Period, customer: str, *, now: datetime
) -> dict[str, Any]:
    """`{"count", "amount"}`: the customer's completed tasks awaiting settlement at `now`, and
    what they would add to this month's invoice."""
    pending = outcomes_repository.pending_tasks(
        session, tenant.id, customer, now=now, timezone=tenant.timezone
    )
    assignment = repository.assignments_on(session, tenant.id, last_day(period), customers_=[customer]).get(
        customer
    )
    stored = repository.stored_plans(session, tenant.id)
    currency = (stored.book.history(assignment.plan)[-1].currency if assignment else None) or tenant.currency
    amount = from_minor(0, currency)
    if len(pending) and assignment is not None:
        billed = outcomes_repository.billed_tasks(
            session, tenant.id, period, customer, now=now, timezone=tenant.timezone
        )
        at = min(max(now, period.start), period.end - timedelta(microseconds=1))
        as_settled = pending.assign(
            status="completed",
            ended_at=pd.Timestamp(at).tz_convert("UTC").as_unit("ns"),
            provider_cost_nanos=settle_nanos(pending["cost_nanos"], pending["cost_rem"]),
        )[list(TASK_COLUMNS)]
        tokens = repository.token_usage(session, tenant.id, period, customer)
        plans = {customer: assignment.plan}

        def total(tasks: pd.DataFrame) -> Decimal:
            rated = rate_month(
                month=period.first_day, customers=plans, plans=stored.book, token_usage=tokens, tasks=tasks,
                currency=tenant.currency, tz=tenant.timezone,
            )  # fmt: skip
            return rated.totals()[customer]

        amount = total(pd.concat([billed[list(TASK_COLUMNS)], as_settled], ignore_index=True)) - total(
            billed[list(TASK_COLUMNS)]
        )
    return {"count": len(pending), "amount": amount, "currency": currency}
