"""The quarantine commands of `taskmeter` (see metering.rollup.quarantine): list the events the
rollup set aside, release one (back through validation and ingestion) or drop it; both audited."""

from __future__ import annotations

import argparse
from typing import Any

from api.cli.common import audit_cli, now, open_engine, out
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.tenants import get_tenant, list_tenants
from metering.rollup import quarantine


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = get_tenant(session, args.tenant)
        rows = quarantine.listing(session, tenant.id, limit=args.limit)
        out({"tenant": tenant.name, "count": quarantine.count(session, tenant.id), "events": rows})
    return 0


def cmd_release(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = _tenant_of(session, args.id)
        released = quarantine.release(session, tenant.id, args.id, now=now(), window=settings.event_window)
        audit_cli(session, tenant, "quarantine.release", f"event:{released['event_id']}", quarantine_id=args.id)
        out({"tenant": tenant.name, **released})
    return 0


def cmd_drop(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = _tenant_of(session, args.id)
        dropped = quarantine.drop(session, tenant.id, args.id)
        audit_cli(session, tenant, "quarantine.drop", f"event:{dropped['event_id']}", quarantine_id=args.id, reason=dropped["reason"])
        out({"tenant": tenant.name, **dropped})
    return 0


def _tenant_of(session: Any, quarantine_id: int) -> Any:
    tenant_id = quarantine.tenant_of(session, quarantine_id)
    return next(t for t in list_tenants(session) if t.id == tenant_id)


def add_commands(sub: Any) -> None:
    commands = sub.add_parser("quarantine", help="events the rollup could not process").add_subparsers(dest="action", required=True)
    p = commands.add_parser("list", help="a tenant's quarantined events, newest first, with their reasons")
    p.add_argument("--tenant", required=True)
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_list)
    p = commands.add_parser("release", help="send a quarantined event back through validation and ingestion")
    p.add_argument("id", type=int, help="the quarantine entry's id (from `quarantine list`)")
    p.set_defaults(func=cmd_release)
    p = commands.add_parser("drop", help="delete a quarantined event for good (audited)")
    p.add_argument("id", type=int, help="the quarantine entry's id (from `quarantine list`)")
    p.set_defaults(func=cmd_drop)
