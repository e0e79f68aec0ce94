"""Plans, customers' plans, the comparison of plans on a month of usage, and quotes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from api.deps import AdminScope, AuditDep, NowDep, ReadScope, SessionDep
from api.errors import BODY_ERRORS, responses
from pricing import analysis, service
from pricing.schemas import (
    CompareIn,
    ComparisonOut,
    CustomerIn,
    CustomerOut,
    PlanOut,
    PlanSaved,
    QuoteIn,
    QuoteOut,
)

router = APIRouter(tags=["pricing"])

_PLAN_EXAMPLE = {
    "id": "jobs", "type": "per_job", "prices": {"default": "0.50", "support_ticket": "1.20"},
    "failed": "0.00", "effective_from": "2026-11-01",
}  # fmt: skip


@router.post("/v1/plans", response_model=PlanSaved, status_code=201, responses=responses(*BODY_ERRORS))
def post_plan(
    principal: AdminScope,
    audit: AuditDep,
    session: SessionDep,
    now: NowDep,
    plan: Annotated[dict[str, Any], Body(description="a plan as in the config file's `plans:`", examples=[_PLAN_EXAMPLE])],
) -> dict[str, Any]:
    """Create a plan, or a new version of one when its terms changed (`effective_from`: the
    tenant-local day it applies from; default today, or since always for a new plan)."""
    saved = service.save_plan(session, principal.tenant, plan, now=now)
    audit.record("plan.save", f"plan:{saved['id']}", version=saved["version"], status=saved["status"])
    return saved


@router.get("/v1/plans", response_model=list[PlanOut], responses=responses())
def get_plans(principal: AdminScope, session: SessionDep) -> list[dict[str, Any]]:
    """Every plan with every version."""
    return service.describe_plans(session, principal.tenant)


@router.get("/v1/plans/{plan_id}", response_model=PlanOut, responses=responses(404))
def get_plan(plan_id: str, principal: AdminScope, session: SessionDep) -> dict[str, Any]:
    return service.describe_plan(session, principal.tenant, plan_id)


@router.put("/v1/customers/{customer}", response_model=CustomerOut, responses=responses(*BODY_ERRORS))
def put_customer(
    customer: str, body: CustomerIn, principal: AdminScope, audit: AuditDep, session: SessionDep, now: NowDep
) -> dict[str, Any]:
    """Put a customer on a plan, with plans to compare it with. Every change is kept."""
    saved = service.assign_plan(
        session, principal.tenant, customer, body.plan, body.compare_with, effective_from=body.effective_from, now=now
    )
    audit.record("customer.assign", f"customer:{customer}", plan=body.plan, compare_with=body.compare_with,
                 effective_from=body.effective_from)  # fmt: skip
    return saved


@router.get("/v1/customers/{customer}", response_model=CustomerOut, responses=responses(404))
def get_customer(customer: str, principal: ReadScope, session: SessionDep) -> dict[str, Any]:
    return service.describe_customer(session, principal.tenant, customer)


@router.post("/v1/compare", response_model=ComparisonOut, responses=responses(*BODY_ERRORS))
def post_compare(body: CompareIn, principal: ReadScope, session: SessionDep, now: NowDep) -> dict[str, Any]:
    """A tenant-local month of usage under each customer's plan and `compare_with` plans (or
    under `plans`): per customer and plan, per task type, per model, and tenant-wide; and per task
    type the month's outcomes (completed, settled, pending, reopened, rejected, disputed jobs and
    the effective price per settled job), settlement counted up to now."""
    tenant = principal.tenant
    period = service.billing_month(body.month, tenant.timezone, field="body.month")
    result = analysis.compare_month(session, tenant, period, plans=body.plans, target_margin=body.target_margin, now=now)
    return analysis.comparison_view(result)


@router.get("/v1/customers/{customer}/compare", response_model=ComparisonOut, responses=responses(404))
def get_customer_compare(
    customer: str,
    principal: ReadScope,
    session: SessionDep,
    now: NowDep,
    month: Annotated[str, Query(examples=["2026-10"])],
    plans: Annotated[str | None, Query(description="comma-separated plan ids (default: its plan and compare_with)")] = None,
    target_margin: Annotated[str, Query()] = "0.6",
) -> dict[str, Any]:
    """One customer's month under its plan and `compare_with` plans (or `plans`)."""
    tenant = principal.tenant
    period = service.billing_month(month, tenant.timezone, field="query.month")
    service.require_customer(session, tenant, customer)
    names = [p.strip() for p in plans.split(",") if p.strip()] if plans else None
    result = analysis.compare_month(session, tenant, period, plans=names, customer=customer, target_margin=target_margin, now=now)
    return analysis.comparison_view(result)


@router.post("/v1/quotes", response_model=QuoteOut, responses=responses(*BODY_ERRORS))
def post_quote(body: QuoteIn, principal: ReadScope, session: SessionDep, now: NowDep) -> dict[str, Any]:
    """What one more task would cost under each plan, and its provider cost. Stores nothing."""
    return analysis.quote_request(session, principal.tenant, body, now=now)
