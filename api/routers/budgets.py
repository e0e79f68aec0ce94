"""Budgets (admin), the question a runtime asks before it spends (`POST /v1/authorize`, ingest
scope) and the alerts raised (`GET /v1/alerts`). Every answer comes from the counters that
ingestion keeps (`metering.spend.counters`): no route here reads events."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, StringConstraints
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from api.deps import AdminScope, AuditDep, NowDep, ReadScope, SessionDep, cached_principal
from api.errors import BODY_ERRORS, responses
from metering.core.errors import Forbidden
from metering.core.tenants import Principal
from metering.spend import alerts, budget_repository
from metering.spend import counters as spend
from pricing import budget_settlement

router = APIRouter(tags=["budgets"])
_log = logging.getLogger(__name__)

Text = Annotated[str, StringConstraints(min_length=1, max_length=256)]
_EXAMPLE = {
    "scope": {"customer": "acme"}, "measure": "provider_cost", "limit": "500.00", "period": "month",
    "alerts": ["0.5", "0.8", "1"], "forecast": True, "enforce": True,
}  # fmt: skip


class AuthorizeIn(BaseModel):
    """Who is about to spend: the customer, and the actor, agent and task type when known."""

    model_config = ConfigDict(extra="forbid", strict=True)

    customer: Text
    actor: Text | None = None
    agent: Text | None = None
    task_type: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class BudgetStanding(BaseModel):
    id: str
    measure: str
    limit: str
    used: str
    remaining: str
    period_end: datetime
    enforced: bool


class AuthorizeOut(BaseModel):
    allowed: bool
    denied_by: str | None
    budgets: list[BudgetStanding]


class BudgetOut(BaseModel):
    id: str
    scope: dict[str, str]
    measure: str
    limit: str
    period: str
    alerts: list[str]
    forecast: bool
    enforce: bool
    used: str
    remaining: str
    period_start: datetime
    period_end: datetime
    forecast_value: str
    unpriced_events: int
    exceeded: bool


class DeliveryOut(BaseModel):
    webhook: int
    url: str
    status: str  # pending | failing (retrying) | delivered | failed (gave up)
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


class AlertOut(BaseModel):
    id: str
    type: str
    budget: str
    threshold: str
    used: str
    limit: str
    period_start: str
    at: str
    deliveries: list[DeliveryOut]


@router.post("/v1/authorize", response_model=AuthorizeOut, responses=responses(*BODY_ERRORS))
async def post_authorize(
    body: AuthorizeIn, request: Request, now: NowDep, principal: Annotated[Principal, Depends(cached_principal)]
) -> dict[str, Any]:
    """May this work start? Lists every budget whose scope the request falls under; `allowed`
    is false once an enforced one's usage reached its limit (a denial is an answer: 200).

    Answered on the event loop from this process's snapshot of the counters (`metering.spend.counters`,
    "authorization from memory"): no database read and no thread hand-off while the snapshot is
    fresh, so ingestion batches running in the same process delay it little."""
    if not principal.allows("ingest"):
        raise Forbidden("this key lacks the 'ingest' scope")
    tenant_id = principal.tenant.id
    engine = request.app.state.engine
    found = spend.snapshot(engine, tenant_id)
    if found is None or found.age() > spend.SNAPSHOT_MAX_AGE or now >= found.valid_until:
        found = await run_in_threadpool(_read_snapshot, engine, tenant_id, now)
    elif found.age() > spend.SNAPSHOT_REFRESH and not found.refreshing:
        found.refreshing = True
        task = asyncio.create_task(_refresh(found, engine, tenant_id, now))
        _refreshing.add(task)
        task.add_done_callback(_refreshing.discard)
    return spend.authorize_from(found, body.model_dump(), now=now)


_refreshing: set[asyncio.Task[None]] = set()


def _read_snapshot(engine: Engine, tenant_id: int, now: datetime) -> spend.Snapshot:
    with engine.connect() as connection:
        return spend.read_snapshot(connection, tenant_id, now=now)


async def _refresh(found: spend.Snapshot, engine: Engine, tenant_id: int, now: datetime) -> None:
    try:
        await run_in_threadpool(_read_snapshot, engine, tenant_id, now)
    except Exception:  # the next request reads it again; its age bounds how stale an answer is
        _log.exception("reading the budget counters' snapshot failed")
    finally:
        found.refreshing = False


def _described(
    session: Any, tenant_id: int, timezone: str, chosen: list[Any], now: datetime
) -> list[dict[str, Any]]:
    return [
        spend.describe(s, now=now)
        for s in spend.standings(session.connection(), tenant_id, chosen, timezone, now=now)
    ]


@router.get("/v1/budgets", response_model=list[BudgetOut], responses=responses())
def get_budgets(principal: AdminScope, session: SessionDep, now: NowDep) -> list[dict[str, Any]]:
    """Every budget with its current period's usage, remaining and forecast."""
    tenant = principal.tenant
    return _described(
        session, tenant.id, tenant.timezone, list(budget_repository.stored(session, tenant.id).values()), now
    )


@router.get("/v1/budgets/{budget_id}", response_model=BudgetOut, responses=responses(404))
def get_budget(budget_id: str, principal: AdminScope, session: SessionDep, now: NowDep) -> dict[str, Any]:
    tenant = principal.tenant
    return _described(
        session, tenant.id, tenant.timezone, [budget_repository.get(session, tenant.id, budget_id)], now
    )[0]


@router.put("/v1/budgets/{budget_id}", response_model=BudgetOut, responses=responses(*BODY_ERRORS))
def put_budget(
    budget_id: str,
    principal: AdminScope,
    audit: AuditDep,
    session: SessionDep,
    now: NowDep,
    budget: Annotated[
        dict[str, Any], Body(description="a budget as in the config file's `budgets:`", examples=[_EXAMPLE])
    ],
) -> dict[str, Any]:
    """Create or replace a budget. A changed scope, measure or period starts its counters anew."""
    tenant = principal.tenant
    saved, status = budget_repository.put(session, tenant.id, budget_id, budget, now=now)
    budget_settlement.settle_counters(session, tenant, now=now)  # jobs at settlement (outcome rules)
    audit.record("budget.put", f"budget:{budget_id}", status=status)
    return _described(session, tenant.id, tenant.timezone, [saved], now)[0]


@router.delete("/v1/budgets/{budget_id}", status_code=204, responses=responses(404))
def delete_budget(budget_id: str, principal: AdminScope, audit: AuditDep, session: SessionDep) -> None:
    budget_repository.remove(session, principal.tenant.id, budget_id)
    audit.record("budget.delete", f"budget:{budget_id}")


@router.get("/v1/alerts", response_model=list[AlertOut], responses=responses())
def get_alerts(principal: ReadScope, session: SessionDep) -> list[dict[str, Any]]:
    """Budget alerts, newest first, with each webhook delivery: `failing` ones are being
    retried with backoff, `failed` ones were given up after many attempts."""
    return alerts.list_alerts(session, principal.tenant.id)
