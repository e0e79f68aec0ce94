"""The spend-control commands of `taskmeter`: a tenant's budgets with their current usage, and
the webhooks that receive budget alerts (`webhooks add` prints the signing secret once)."""

from __future__ import annotations

import argparse
from typing import Any

from api.cli.common import audit_cli, find_tenant, now, open_engine, out
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.spend import alerts, budget_repository
from metering.spend import counters as spend


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    at = now()
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = find_tenant(session, args.tenant)
        chosen = list(budget_repository.stored(session, tenant.id).values())
        rows = spend.standings(session.connection(), tenant.id, chosen, tenant.timezone, now=at)
        out({"tenant": tenant.name, "budgets": [spend.describe(s, now=at) for s in rows]})
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    at = now()
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = find_tenant(session, args.tenant)
        budget = budget_repository.get(session, tenant.id, args.id)
        (standing,) = spend.standings(session.connection(), tenant.id, [budget], tenant.timezone, now=at)
        alerts_of = [a for a in alerts.list_alerts(session, tenant.id) if a["budget"] == budget.id]
        out({"tenant": tenant.name, **spend.describe(standing, now=at), "alerts": alerts_of})
    return 0


def cmd_webhook_add(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = find_tenant(session, args.tenant)
        hook, secret = alerts.add_webhook(session, tenant.id, args.url, box=settings.secret_box(), now=now())
        audit_cli(session, tenant, "webhook.add", f"webhook:{hook}", url=args.url)
    # The secret is shown here once, and never logged: the receiver keeps it to verify signatures.
    out({"tenant": tenant.name, "id": hook, "url": args.url, "secret": secret})
    return 0


def cmd_webhook_list(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = find_tenant(session, args.tenant)
        out({"tenant": tenant.name, "webhooks": alerts.list_webhooks(session, tenant.id)})
    return 0


def cmd_webhook_reseal(args: argparse.Namespace, settings: Settings) -> int:
    """Seal every webhook secret with the newest of TASKMETER_ENCRYPTION_KEYS (key rotation)."""
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        out({"resealed": alerts.reseal_webhooks(session.connection(), settings.secret_box())})
    return 0


def cmd_webhook_remove(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = find_tenant(session, args.tenant)
        alerts.remove_webhook(session, tenant.id, args.id)
        audit_cli(session, tenant, "webhook.remove", f"webhook:{args.id}")
        out({"tenant": tenant.name, "removed": args.id})
    return 0


def add_commands(sub: Any) -> None:
    commands = sub.add_parser(
        "budgets", help="a tenant's budgets and their usage this period"
    ).add_subparsers(dest="action", required=True)
    p = commands.add_parser("list", help="every budget with used, remaining and forecast")
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=cmd_list)
    p = commands.add_parser("show", help="one budget with its alerts and their deliveries")
    p.add_argument("id")
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=cmd_show)
    hooks = sub.add_parser("webhooks", help="where budget alerts are sent").add_subparsers(
        dest="action", required=True
    )
    p = hooks.add_parser("add", help="add a webhook; prints its signing secret once")
    p.add_argument("url")
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=cmd_webhook_add)
    p = hooks.add_parser("list", help="the tenant's webhooks (without secrets)")
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=cmd_webhook_list)
    p = hooks.add_parser("reseal", help="re-encrypt every webhook secret with the newest encryption key")
    p.set_defaults(func=cmd_webhook_reseal)
    p = hooks.add_parser("remove", help="remove a webhook and its pending deliveries")
    p.add_argument("id", type=int)
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=cmd_webhook_remove)
