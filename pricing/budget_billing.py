"""The `billed` budget measure's rules: each customer's plan in force today, reduced to what
ingestion can add event by event (`metering.spend.budgets.BilledRule`).

The reduction, and where it differs from the invoice (so a `billed` budget approximates the
invoice's usage lines of the period so far):
- per_token `rates` (and `model_rates`): exact per event (tokens x rate per million);
- per_token `markup`: provider cost x (1 + markup), exact per event;
- per_job `prices`: the price of each completed task by task_type, `failed` for failed and
  cancelled ones, exact;
- `tiers`: every unit at the first step's price (graduated or volume alike): a rating of the
  period so far cannot know the tier a period ends in, and the first step is the usual highest
  price, so the figure errs towards the limit;
- `included` allowances, `minimum` and `platform_fee` are left out: they are monthly lines
  unrelated to the spend a budget limits.
Rules are rewritten whenever plans or customers' plans change; a plan version that starts later
takes effect at the next change. Each rewrite (also after the tenant's prices or model aliases
change: the config file ends with one) re-counts the money budgets' open periods from the stored
events (`metering.spend.recount`), so spend already counted is re-priced with the new prices and plans
(and jobs recounted at settlement when the tenant has outcome rules, `pricing.budget_settlement`).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from metering.core.errors import InvalidInput
from metering.core.tenants import Tenant
from metering.core.vocabulary import TOKEN_CLASSES
from metering.spend.budget_tables import budget_billing
from metering.spend.budgets import BilledRule
from pricing import budget_settlement, repository
from pricing.plans import PerJobPlan, PerTokenPlan, Plan


def rule_of(plan: Plan) -> BilledRule:
    first = plan.tiers.steps[0].price if plan.tiers else None
    if isinstance(plan, PerTokenPlan):
        if plan.markup is not None:
            return BilledRule("markup", markup=plan.markup)
        if first is not None:
            return BilledRule("rates", rates=dict.fromkeys(TOKEN_CLASSES, first))
        rates = {c: plan.rates.of(c) for c in TOKEN_CLASSES} if plan.rates else {}
        cards = tuple(
            (card.provider, card.model, {c: card.of(c) for c in TOKEN_CLASSES}) for card in plan.model_rates
        )
        return BilledRule("rates", rates=rates, model_rates=cards)
    assert isinstance(plan, PerJobPlan)
    prices = {"default": first} if first is not None else dict(plan.prices or {})
    return BilledRule("jobs", prices=prices, failed=plan.failed)


def refresh(session: Session, tenant: Tenant, *, now: datetime) -> int:
    """Rewrite the tenant's rules from the plans in force today; returns how many customers have one."""
    today = now.astimezone(ZoneInfo(tenant.timezone)).date()
    book = repository.stored_plans(session, tenant.id).book
    rows = []
    for customer, assignment in repository.assignments_on(session, tenant.id, today).items():
        try:
            plan = book.at(assignment.plan, today)
        except InvalidInput:  # a plan not in force yet bills nothing today
            continue
        rows.append(
            {
                "tenant_id": tenant.id,
                "customer": customer,
                "rule": orjson.dumps(rule_of(plan).to_json()).decode(),
            }
        )
    session.execute(delete(budget_billing).where(budget_billing.c.tenant_id == tenant.id))
    if rows:
        session.execute(insert(budget_billing), rows)
    budget_settlement.recount_after_change(session, tenant, now=now)  # a new budget generation, then recount
    return len(rows)
