"""Use cases of pricing: load a tenant config, store plans and put customers on plans (the
comparison and quotes are in `pricing.analysis`). Services take the caller's session and never
commit.

Dates. Plans and assignments take effect on a tenant-local day. When none is given, the first
version of a plan (or a customer's first assignment) is in force since always, so that usage
already recorded has a price; a change takes effect today, in the tenant's time zone. A version
or assignment equal to the one in force on its day is not stored again: loading the same file
twice changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from metering.core.errors import InvalidInput, NotFound
from metering.core.periods import Period, parse_month
from metering.core.tables import tenant_model_aliases, tenant_prices
from metering.core.tenants import Tenant
from metering.costs.ratecards import RateCardError, TenantPrice
from metering.spend import budget_repository
from pricing import budget_billing, open_month, outcomes_repository, repository
from pricing.config import parse_config, validate_entry, validate_plan
from pricing.outcomes import OutcomeRule, rules_definition
from pricing.plans import CustomerPlan, ModelAlias, Plan, Problems, plan_definition, same_terms
from pricing.repository import StoredPlans


def local_today(now: datetime, timezone: str) -> date:
    return now.astimezone(ZoneInfo(timezone)).date()


def billing_month(text: str, timezone: str, *, field: str = "month") -> Period:
    """A tenant-local month from `YYYY-MM`, within the months every layer can represent
    (`metering.core.periods.parse_month`)."""
    return parse_month(text, timezone, field=field)


def invalid(message: str, problems: Problems) -> InvalidInput:
    return InvalidInput(message, detail=[{"field": path, "message": text} for path, text in problems])


# --- plans --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanChange:
    path: str  # where the entry came from: plans[2], body
    plan: Plan  # dated: effective_from as it will be stored
    created: bool  # False: equal to the version in force on its day
    in_force: Plan | None = None  # the equal version in force, when not created


def plan_changes(
    stored: StoredPlans, entries: Sequence[tuple[str, Plan]], *, default_day: date | None, today: date
) -> tuple[list[PlanChange], Problems]:
    """What storing these plan entries changes, and the problems that forbid it.

    An entry is dated by its own `effective_from`, else `default_day`, else since always for a
    new plan (or a plan the entries give several versions of), else today.
    """
    history: dict[str, list[Plan]] = {}
    for version in stored.current():
        history.setdefault(version.plan_id, []).append(version.plan)
    repeated = Counter(plan.id for _, plan in entries)
    changes, problems = [], []
    for path, entry in entries:
        start = entry.effective_from or default_day
        if start is None and entry.id in history and repeated[entry.id] == 1:
            start = today
        dated = entry.model_copy(update={"effective_from": start})
        versions = history.setdefault(entry.id, [])
        if versions and (problem := _inconsistent(versions[0], dated)):
            problems.append((f"{path}.{problem[0]}", problem[1]))
            continue
        current = _version_on(versions, start)
        created = current is None or not same_terms(current, dated)
        if created:
            versions[:] = sorted([v for v in versions if v.effective_from != start] + [dated], key=_start)
        changes.append(PlanChange(path, dated, created, None if created else current))
    return changes, problems


def _start(plan: Plan) -> date:
    return plan.effective_from or date.min


def _version_on(versions: list[Plan], day: date | None) -> Plan | None:
    found = [v for v in versions if _start(v) <= (day or date.min)]
    return found[-1] if found else None


def _inconsistent(origin: Plan, plan: Plan) -> tuple[str, str] | None:
    for name in ("type", "currency", "basis"):
        if getattr(plan, name) != getattr(origin, name):
            field = plan.basis if name == "basis" else name
            return field, f"versions of {plan.id!r} must keep its {name} ({getattr(origin, name)})"
    return None


def _store_changes(session: Session, tenant: Tenant, changes: list[PlanChange], *, now: datetime) -> list[dict[str, Any]]:
    stored = repository.stored_plans(session, tenant.id)
    out = []
    for change in changes:
        plan = change.plan if change.in_force is None else change.in_force
        version: int | None
        if change.created:
            version = repository.add_plan_version(session, tenant.id, plan, plan_definition(plan), now=now)
        else:
            version = stored.version_number(plan.id, plan.effective_from)
        out.append({"id": plan.id, "effective_from": plan.effective_from, "version": version,
                    "status": "created" if change.created else "unchanged"})  # fmt: skip
    if any(change.created for change in changes):  # the figures' cost buckets follow the job prices
        open_month.keep_edges(session, tenant, now=now)
    return out


def save_plan(session: Session, tenant: Tenant, raw: object, *, now: datetime) -> dict[str, Any]:
    """Store a plan given as a config entry (`POST /v1/plans`); a change makes a new version."""
    problems: Problems = []
    plan = validate_plan(raw, "body", problems)
    if plan is None or problems:
        raise invalid("invalid plan", problems)
    stored = repository.stored_plans(session, tenant.id)
    changes, problems = plan_changes(stored, [("body", plan)], default_day=None, today=local_today(now, tenant.timezone))
    if problems:
        raise invalid("invalid plan", problems)
    [saved] = _store_changes(session, tenant, changes, now=now)
    budget_billing.refresh(session, tenant, now=now)
    return {**saved, "plan": describe_plan(session, tenant, plan.id)}


def describe_plans(session: Session, tenant: Tenant) -> list[dict[str, Any]]:
    stored = repository.stored_plans(session, tenant.id)
    current = {(v.plan_id, v.version) for v in stored.current()}
    plans: dict[str, dict[str, Any]] = {}
    for row in stored.rows:
        entry = plans.setdefault(row.plan_id, {"id": row.plan_id, "type": row.plan.type, "versions": []})
        terms = row.plan.model_dump(mode="json", exclude={"id", "type", "effective_from"}, exclude_defaults=True)
        entry["versions"].append({
            "version": row.version, "effective_from": row.effective_from, "created_at": row.created_at,
            "superseded": (row.plan_id, row.version) not in current, "terms": terms,
        })  # fmt: skip
    return list(plans.values())


def describe_plan(session: Session, tenant: Tenant, plan_id: str) -> dict[str, Any]:
    for plan in describe_plans(session, tenant):
        if plan["id"] == plan_id:
            return plan
    raise NotFound(f"no plan {plan_id!r}")


# --- customers ----------------------------------------------------------------------------------


def assign_plan(
    session: Session,
    tenant: Tenant,
    customer: str,
    plan: str,
    compare_with: Sequence[str] = (),
    *,
    effective_from: date | None = None,
    now: datetime,
) -> dict[str, Any]:
    """Put a customer on a plan (`PUT /v1/customers/{id}`); the history keeps every change."""
    problems: Problems = []
    entry = validate_entry(CustomerPlan, {"id": customer, "plan": plan, "compare_with": list(compare_with)}, "body", problems)
    known = repository.stored_plans(session, tenant.id).book.versions
    references = [("body.plan", plan)] + [(f"body.compare_with[{i}]", p) for i, p in enumerate(compare_with)]
    problems += [(path, f"unknown plan {p!r}") for path, p in references if p not in known]
    if entry is None or problems:
        raise invalid("invalid customer plan", problems)
    _assign(session, tenant, entry, effective_from, now=now)
    budget_billing.refresh(session, tenant, now=now)
    return describe_customer(session, tenant, customer)


def _assign(session: Session, tenant: Tenant, entry: CustomerPlan, effective_from: date | None, *, now: datetime) -> str:
    history = repository.assignment_history(session, tenant.id, entry.id)
    start = effective_from if effective_from is not None or not history else local_today(now, tenant.timezone)
    current = repository.in_force(history, start)
    if current is not None and (current.plan, current.compare_with) == (entry.plan, entry.compare_with):
        return "unchanged"
    repository.add_assignment(session, tenant.id, entry, start, now=now)
    return "created"


def require_customer(session: Session, tenant: Tenant, customer: str) -> None:
    """NotFound unless the customer has a plan or usage (never another tenant's)."""
    if repository.get_customer(session, tenant.id, customer) is None and not repository.has_usage(session, tenant.id, customer):
        raise NotFound(f"no customer {customer!r}")


def describe_customer(session: Session, tenant: Tenant, customer: str) -> dict[str, Any]:
    row = repository.get_customer(session, tenant.id, customer)
    if row is None:
        raise NotFound(f"no customer {customer!r}")
    history = repository.assignment_history(session, tenant.id, customer)
    return {
        "id": customer,
        "plan": row.plan,
        "compare_with": list(history[-1].compare_with) if history else [],
        "stripe_customer_id": row.stripe_customer_id,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "history": [
            {"plan": a.plan, "compare_with": list(a.compare_with), "effective_from": a.effective_from, "created_at": a.created_at}
            for a in history
        ],
    }


# --- the config file ----------------------------------------------------------------------------


def load_config(session: Session, tenant: Tenant, text: str, *, now: datetime) -> dict[str, Any]:
    """Apply a tenant config file: all of it or, when anything is wrong, none of it.

    `prices` (when the file has the section) replaces the tenant's model prices; each plan entry
    becomes a new version when it changed; each customer gets its plan. Problems name their path.
    """
    stored = repository.stored_plans(session, tenant.id)
    config = parse_config(text, known_plans=stored.book.versions)
    problems: Problems = []
    prices = []
    # Entries of one model (by its dates) are the versions of one price.
    by_model: dict[tuple[str, str], list[int]] = {}
    for index, override in enumerate(config.prices):
        by_model.setdefault((override.provider.lower(), override.model.lower()), []).append(index)
    for indexes in by_model.values():
        first = config.prices[indexes[0]]
        versions = [config.prices[i].model_dump(mode="json", exclude_none=True, exclude={"provider", "model"}) for i in indexes]
        try:
            price = TenantPrice.from_mapping({"provider": first.provider, "model": first.model, "versions": versions})
            price.pricing()  # the rate card checks: at most 9 decimals, at most 2000 per million
            prices.append(price)
        except RateCardError as error:
            problems.append((f"prices[{indexes[0]}]", str(error)))
    entries = [(f"plans[{i}]", plan) for i, plan in enumerate(config.plan_entries)]
    today = local_today(now, tenant.timezone)
    changes, plan_problems = plan_changes(stored, entries, default_day=config.effective_from, today=today)
    if problems or plan_problems:
        raise invalid("invalid tenant config", problems + plan_problems)

    summary: dict[str, Any] = {"tenant": tenant.name}
    if "prices" in config.sections:
        summary["prices"] = _replace_prices(session, tenant, prices, now=now)
    if "models" in config.sections:
        summary["models"] = _replace_aliases(session, tenant, config.models, now=now)
    summary["plans"] = _store_changes(session, tenant, changes, now=now)
    if "outcomes" in config.sections:
        summary["outcomes"] = save_rules(session, tenant, config.outcomes, config.effective_from, now=now)
    summary["customers"] = [
        {"id": c.id, "plan": c.plan, "status": _assign(session, tenant, c, config.effective_from, now=now)}
        for c in config.customers
    ]
    if "budgets" in config.sections:
        summary["budgets"] = budget_repository.replace_all(session, tenant.id, config.budgets, now=now)
    budget_billing.refresh(session, tenant, now=now)  # and a new budget generation: prices may have changed
    return summary


def _replace_prices(session: Session, tenant: Tenant, prices: list[TenantPrice], *, now: datetime) -> dict[str, int]:
    """Make the tenant's model prices these; rows whose rates did not change are kept as they
    are (the rollup re-prices a tenant only when its prices change)."""

    def text(value: Decimal | None) -> str | None:
        return None if value is None else f"{value:f}"

    wanted = {
        (p.provider, p.model): {"input": text(p.versions[0].input), "output": text(p.versions[0].output),
                                "cache_read": text(p.versions[0].cache_read), "cache_write": text(p.versions[0].cache_write),
                                "spec": orjson.dumps(p.as_mapping(), option=orjson.OPT_SORT_KEYS).decode()}
        for p in prices
    }  # fmt: skip
    table = tenant_prices
    rows = session.execute(select(table).where(table.c.tenant_id == tenant.id)).all()
    have = {(r.provider, r.model): {k: getattr(r, k) for k in ("input", "output", "cache_read", "cache_write", "spec")} for r in rows}
    counts = {"added": 0, "changed": 0, "removed": 0, "unchanged": 0}
    for key in have.keys() - wanted.keys():
        session.execute(delete(table).where(table.c.tenant_id == tenant.id, table.c.provider == key[0], table.c.model == key[1]))
        counts["removed"] += 1
    for key, rates in wanted.items():
        if key not in have:
            session.execute(insert(table).values(tenant_id=tenant.id, provider=key[0], model=key[1], updated_at=now, **rates))
            counts["added"] += 1
        elif have[key] != rates:
            where = (table.c.tenant_id == tenant.id, table.c.provider == key[0], table.c.model == key[1])
            session.execute(update(table).where(*where).values(updated_at=now, **rates))
            counts["changed"] += 1
        else:
            counts["unchanged"] += 1
    return counts


def _replace_aliases(session: Session, tenant: Tenant, aliases: Sequence[ModelAlias], *, now: datetime) -> dict[str, int]:
    """Make the tenant's model aliases these, in this order (unchanged: nothing is written, so
    the rollup's price version stays)."""
    table = tenant_model_aliases
    wanted = [(a.match, a.provider, a.model) for a in aliases]
    rows = session.execute(select(table).where(table.c.tenant_id == tenant.id).order_by(table.c.position)).all()
    if [(r.match, r.provider, r.model) for r in rows] == wanted:
        return {"aliases": len(wanted), "changed": 0}
    session.execute(delete(table).where(table.c.tenant_id == tenant.id))
    for position, (match, provider, model) in enumerate(wanted):
        session.execute(insert(table).values(tenant_id=tenant.id, position=position, match=match, provider=provider, model=model, updated_at=now))
    return {"aliases": len(wanted), "changed": 1}


# --- outcome rules ------------------------------------------------------------------------------


def save_rules(
    session: Session, tenant: Tenant, rules: Sequence[OutcomeRule], effective_from: date | None, *, now: datetime
) -> dict[str, Any]:
    """Store the `outcomes` section as a new version of the tenant's rules, unless the version in
    force on its day has the same rules. Dated like a plan: the file's `effective_from`, else since
    always for the first version, else today (tenant-local)."""
    book = outcomes_repository.rule_book(session, tenant.id)
    start = effective_from if effective_from is not None or not book.versions else local_today(now, tenant.timezone)
    definition = rules_definition(rules)
    current = book.at(start or date.min)
    if current is not None and rules_definition(current.rules) == definition:
        return {"version": current.version, "effective_from": current.effective_from, "status": "unchanged"}
    version = outcomes_repository.add_rule_version(session, tenant.id, definition, start, now=now)
    return {"version": version, "effective_from": start, "status": "created"}


def describe_rules(session: Session, tenant: Tenant) -> list[dict[str, Any]]:
    """Every version of the tenant's outcome rules, oldest first."""
    book = outcomes_repository.rule_book(session, tenant.id)
    return [
        {"version": v.version, "effective_from": v.effective_from, "rules": [r.definition() for r in v.rules]}
        for v in book.versions
    ]
