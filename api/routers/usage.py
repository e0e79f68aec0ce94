"""Usage reads: one task, usage over days grouped, a customer's running month, unpriced models.

All of them read the rollup tables (never the events), so their latency does not grow with
history.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import NowDep, ReadOrVerdict, ReadScope, SessionDep
from api.errors import responses
from metering.core.errors import InvalidInput, NotFound
from metering.core.periods import parse_day, parse_instant, period_of
from metering.core.vocabulary import TaskStatus
from metering.rollup import repository
from pricing.service import require_customer

router = APIRouter(tags=["usage"])


class Billable(BaseModel):
    input: int
    cache_read: int
    cache_write: int
    output: int


class UsageFigures(BaseModel):
    usage_events: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    billable: Billable
    provider_cost: Decimal
    unpriced_events: int
    priced: bool


class ModelUsage(UsageFigures):
    provider: str
    model: str


class TaskUsage(UsageFigures):
    task: str
    customer: str
    task_type: str | None
    status: TaskStatus
    started_at: datetime | None
    ended_at: datetime | None
    first_event_at: datetime
    last_event_at: datetime
    events: int
    models: list[ModelUsage]


class UsageRow(UsageFigures):
    provider: str | None = None
    model: str | None = None
    day: date | None = None
    task_type: str | None = None
    customer: str | None = None
    actor: str | None = None  # group_by actor or agent; null: usage whose events named no actor
    agent: str | None = None  # group_by agent; null: the actor's own usage (no agent named)


class UsageReport(BaseModel):
    customer: str | None
    from_: date = Field(serialization_alias="from")
    to: date
    group_by: str
    rows: list[UsageRow]
    total: UsageFigures


class Outcomes(BaseModel):
    completed: int
    failed: int
    cancelled: int
    open: int


class CurrentUsage(BaseModel):
    customer: str
    month: str
    period_start: datetime
    period_end: datetime
    as_of: datetime
    total: UsageFigures
    by_model: list[UsageRow]
    tasks: Outcomes


class UnpricedModel(BaseModel):
    provider: str
    model: str
    events: int
    tokens: int


@router.get("/v1/tasks/{task:path}", response_model=TaskUsage, responses=responses(404))
def get_task(task: str, principal: ReadOrVerdict, session: SessionDep) -> TaskUsage:
    """A task's usage, provider cost (6 decimals), status, and its usage by model."""
    found = repository.task(session, principal.tenant.id, task)
    if found is None or (principal.customer is not None and found["customer"] != principal.customer):
        raise NotFound(f"no task {task!r}")
    return TaskUsage(**found)


@router.get("/v1/usage", response_model=UsageReport, responses=responses(404))
def get_usage(
    principal: ReadScope,
    session: SessionDep,
    now: NowDep,
    customer: str | None = None,
    from_: Annotated[str | None, Query(alias="from", description="first tenant-local day, YYYY-MM-DD (default: 1st of this month)")] = None,
    to: Annotated[str | None, Query(description="day after the last, YYYY-MM-DD (exclusive; default: 1st of next month)")] = None,
    group_by: Annotated[
        Literal["model", "task_type", "day", "customer", "actor", "agent"],
        Query(description="actor: one row per actor; agent: one row per actor and agent (an agent acts for its actor)"),
    ] = "model",
) -> UsageReport:
    """Usage and provider cost over tenant-local days [from, to), grouped. Usage counts for the
    actor and agent of its own events."""
    period = period_of(now, principal.tenant.timezone)
    first_day = parse_day(from_, field="query.from") if from_ is not None else period.first_day
    end_day = parse_day(to, field="query.to") if to is not None else period.next_first_day
    if end_day <= first_day:
        raise InvalidInput("empty range", detail=[{"field": "query.to", "message": "must be after from"}])
    if customer is not None:
        require_customer(session, principal.tenant, customer)
    rows, total = repository.usage(
        session, principal.tenant.id, first_day=first_day, end_day=end_day, group_by=group_by, customer=customer
    )
    return UsageReport(customer=customer, from_=first_day, to=end_day, group_by=group_by, rows=rows, total=total)


@router.get("/v1/customers/{customer}/usage/current", response_model=CurrentUsage, responses=responses(404))
def get_current_usage(
    customer: str,
    principal: ReadScope,
    session: SessionDep,
    now: NowDep,
    at: Annotated[str | None, Query(description="as of this instant instead of now (RFC 3339 with offset)")] = None,
) -> CurrentUsage:
    """The customer's running month (tenant time zone): usage, cost, and task outcomes so far."""
    tenant = principal.tenant
    as_of = parse_instant(at, field="query.at") if at is not None else now
    period = period_of(as_of, tenant.timezone)
    rows, total = repository.usage(
        session, tenant.id, first_day=period.first_day, end_day=period.next_first_day, group_by="model", customer=customer
    )
    outcomes = repository.task_outcomes(session, tenant.id, period, customer)
    # A customer with usage or tasks this month is known; only a quiet month needs the lookup.
    if not rows and not any(outcomes.values()):
        require_customer(session, tenant, customer)
    return CurrentUsage(
        customer=customer,
        month=period.label,
        period_start=period.start,
        period_end=period.end,
        as_of=as_of,
        total=total,
        by_model=rows,
        tasks=outcomes,
    )


@router.get("/v1/models/unpriced", response_model=list[UnpricedModel], responses=responses())
def get_unpriced_models(principal: ReadScope, session: SessionDep) -> list[UnpricedModel]:
    """Models seen in usage that neither genai-prices nor the tenant's prices know: their events
    are counted but not priced (never at zero) until a price is added with `config load`."""
    return [UnpricedModel(**m) for m in repository.unpriced_models(session, principal.tenant.id)]
