"""The `stripe` commands of `taskmeter`: push finalized invoices to Stripe, and their sync status."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import Engine

from api.cli.common import err, find_tenant, now, open_engine, out
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.errors import TaskmeterError
from metering.core.tenants import list_tenants


def _stripe_tenants(engine: Engine, name: str | None) -> list[Any]:
    with unit_of_work(engine) as session:
        return [find_tenant(session, name)] if name else list_tenants(session)


def cmd_stripe_sync(args: argparse.Namespace, settings: Settings) -> int:
    from pricing.stripe_gateway import StripeGateway
    from pricing.stripe_sync import sync_tenant

    if settings.stripe_api_key is None:
        raise TaskmeterError("Stripe sync is off: set TASKMETER_STRIPE_API_KEY")
    with open_engine(settings) as engine:
        gateway = StripeGateway.from_settings(settings)
        reports = [
            sync_tenant(engine, tenant, gateway, now=now(), retry_failed=args.retry_failed, lease_seconds=settings.job_lease_seconds)
            for tenant in _stripe_tenants(engine, args.tenant)
        ]
    out({"tenants": [report.summary() for report in reports]})
    for report in reports:
        if report.busy:
            err(f"{report.tenant}: another worker is syncing this tenant; nothing done")
        for entry in report.failed:
            err(f"{report.tenant}: invoice {entry['invoice']} failed: {entry['error']}")
        for entry in report.retrying:
            err(f"{report.tenant}: invoice {entry['invoice']} will be retried at {entry['next_retry_at']}: {entry['error']}")
        if report.aborted:
            err(f"{report.tenant}: stopped: {report.aborted}")
    return 1 if any(r.failed or r.retrying or r.aborted for r in reports) else 0


def cmd_stripe_status(args: argparse.Namespace, settings: Settings) -> int:
    from pricing.stripe_sync import sync_status

    with open_engine(settings) as engine:
        tenants = _stripe_tenants(engine, args.tenant)
        with unit_of_work(engine) as session:
            statuses = [{"tenant": t.name, **sync_status(session, t.id)} for t in tenants]
    out({"enabled": settings.stripe_api_key is not None, "tenants": statuses})
    return 0


def add_commands(sub: Any) -> None:
    stripe_cmds = sub.add_parser("stripe", help="Stripe sync").add_subparsers(dest="action", required=True)
    p = stripe_cmds.add_parser("sync", help="push finalized invoices to Stripe now")
    p.add_argument("--tenant", help="one tenant (default: all)")
    p.add_argument("--retry-failed", action="store_true", help="also retry invoices whose last error was permanent")
    p.set_defaults(func=cmd_stripe_sync)
    p = stripe_cmds.add_parser("status", help="finalized invoices by Stripe sync status, with errors")
    p.add_argument("--tenant", help="one tenant (default: all)")
    p.set_defaults(func=cmd_stripe_status)
