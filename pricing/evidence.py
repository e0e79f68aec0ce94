"""Evidence: the tasks behind a finalized invoice's line (`GET /v1/invoices/{id}/lines/{n}/tasks`).

The line's month (its own, or the closed month an adjustment line corrects) is read again as
billing reads it (`pricing.outcomes_repository.billed_tasks`) and its tasks chosen by the line:
- `jobs`: the completed (settled) tasks whose task type the line's price key covers;
- `jobs_failed`: the failed and cancelled tasks;
- per-job `tier`, `tier_flat`: every completed task;
- `tokens`, `markup` and per-token `tier`, `tier_flat`: every task with usage in the month;
- `platform_fee`, `minimum`: none (they are monthly terms, no task's).
A month billed under two versions of a plan gives each version's line every task of its key.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from metering.core.errors import NotFound
from metering.core.periods import Period, parse_month
from metering.core.tables import task_usage, task_usage_detail
from metering.core.tenants import Tenant
from metering.costs.prices import settle_nanos
from pricing import outcomes_repository, repository
from pricing.invoices import invoice_row
from pricing.plans import PerJobPlan
from pricing.tables import invoice_lines

EVIDENCE_COLUMNS = (
    "task",
    "customer",
    "task_type",
    "status",
    "billed_at",
    "provider_cost_nanos",
    "outcome_rule_version",
)


def invoice_line(session: Session, tenant: Tenant, invoice_id: int, line_no: int) -> tuple[Any, Any]:
    invoice = invoice_row(session, tenant, invoice_id)
    line = session.execute(
        select(invoice_lines).where(
            invoice_lines.c.invoice_id == invoice.id, invoice_lines.c.line_no == line_no
        )
    ).one_or_none()
    if line is None:
        raise NotFound(f"invoice {invoice_id} has no line {line_no}")
    return invoice, line


def line_tasks(session: Session, tenant: Tenant, invoice_id: int, line_no: int) -> pd.DataFrame:
    """The tasks behind one line, as `EVIDENCE_COLUMNS`, by task id."""
    invoice, line = invoice_line(session, tenant, invoice_id, line_no)
    period = parse_month(line.adjusts_period or invoice.period, tenant.timezone)
    plan = _plan(session, tenant, line)
    per_job = isinstance(plan, PerJobPlan)
    kind = line.kind
    if kind in ("platform_fee", "minimum"):
        return _empty()
    if kind in ("tokens", "markup") or (kind in ("tier", "tier_flat") and not per_job):
        return _usage_tasks(session, tenant, period, invoice.customer)
    tasks = outcomes_repository.billed_tasks(
        session, tenant.id, period, invoice.customer, timezone=tenant.timezone
    )
    status = tasks["status"].to_numpy(dtype=object)
    if kind == "jobs_failed":
        keep = status != "completed"
    elif kind == "jobs" and per_job:
        keep = (status == "completed") & _priced_by(tasks["task_type"], plan, line.description)
    else:
        keep = status == "completed"
    return _evidence(tasks.loc[keep])


def _plan(session: Session, tenant: Tenant, line: Any) -> Any:
    if line.plan is None:
        return None
    stored = repository.stored_plans(session, tenant.id)
    for row in stored.rows:
        if row.plan_id == line.plan and row.version == line.plan_version:
            return row.plan
    return None


def _priced_by(task_types: pd.Series, plan: PerJobPlan, description: str) -> np.ndarray:
    """Whether the line (its description names its price key) prices each task type."""
    codes, names = pd.factorize(task_types, use_na_sentinel=True)
    matches = []
    for name in [*names.tolist(), None]:  # the last one: no task type (code -1)
        key = plan.price_key(name)
        text = "Completed tasks (default price)" if key == "default" else f"Completed {key} tasks"
        matches.append(description == text or description.startswith((f"{text};", f"{text} [")))
    return np.asarray(matches, dtype=bool)[codes]


def _evidence(tasks: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            # object, not pandas' Arrow strings: converting 100,000 names costs a second
            **{
                name: pd.Series(tasks[name].to_numpy(dtype=object), dtype=object)
                for name in ("task", "customer", "task_type", "status")
            },
            "billed_us": _micros(tasks["ended_at"]),
            "provider_cost_nanos": tasks["provider_cost_nanos"].to_numpy(dtype=np.int64),
            "outcome_rule_version": tasks["rule_version"].array
            if "rule_version" in tasks
            else pd.array([None] * len(tasks), dtype="Int64"),
        }
    )
    order = np.argsort(out["task"].to_numpy(dtype=object), kind="stable")
    return out.take(order).reset_index(drop=True)


def _micros(instants: pd.Series) -> pd.array:
    """Tz-aware instants (NaT: none) as nullable int64 microseconds, without a Python object each."""
    index = pd.DatetimeIndex(instants)
    values = index.as_unit("us").asi8 if len(index) else np.zeros(0, dtype=np.int64)
    return pd.arrays.IntegerArray(
        np.where(index.isna(), 0, values).astype(np.int64), np.asarray(index.isna())
    )


def _empty() -> pd.DataFrame:
    return _evidence(
        pd.DataFrame(
            {
                "task": [],
                "customer": [],
                "task_type": [],
                "status": [],
                "ended_at": pd.to_datetime([], utc=True),
                "provider_cost_nanos": np.zeros(0, dtype=np.int64),
            }
        )
    )


def _usage_tasks(session: Session, tenant: Tenant, period: Period, customer: str) -> pd.DataFrame:
    """Tasks with usage in the month's tenant-local days (their month's usage is on the line)."""
    d, t = task_usage_detail, task_usage
    rows = session.execute(
        select(t.c.task, t.c.customer, t.c.task_type, t.c.status, t.c.ended_us, t.c.cost_nanos, t.c.cost_rem)
        .where(
            t.c.tenant_id == tenant.id,
            t.c.task.in_(
                select(d.c.task).where(
                    d.c.tenant_id == tenant.id,
                    d.c.customer == customer,
                    d.c.day >= period.first_day,
                    d.c.day < period.next_first_day,
                )
            ),
        )
        .order_by(t.c.task)
    ).all()
    frame = pd.DataFrame(
        rows, columns=["task", "customer", "task_type", "status", "ended_us", "cost_nanos", "cost_rem"]
    )
    ended = pd.to_numeric(frame["ended_us"]).astype("Int64")
    return _evidence(
        frame.assign(
            ended_at=pd.to_datetime(ended.fillna(0).to_numpy(dtype=np.int64), unit="us", utc=True).where(
                ended.notna().to_numpy()
            ),
            provider_cost_nanos=settle_nanos(
                frame["cost_nanos"].astype(np.int64), frame["cost_rem"].astype(np.int64)
            ),
        )
    )
