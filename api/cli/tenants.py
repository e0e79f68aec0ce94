"""The `tenants` and `keys` commands of `taskmeter`: create a tenant; create, revoke and rotate
its API keys (each audited)."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from api.cli.common import audit_cli, err, find_tenant, now, open_engine, out
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.errors import TaskmeterError
from metering.core.tenants import (
    create_api_key,
    create_tenant,
    key_prefix,
    parse_scopes,
    revoke_api_key,
    rotate_api_key,
)


def cmd_tenants_create(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings, create=True) as engine:
        with unit_of_work(engine) as session:
            tenant = create_tenant(session, args.name, timezone=args.timezone, currency=args.currency, now=now())
            audit_cli(session, tenant, "tenant.create", f"tenant:{tenant.name}", timezone=tenant.timezone, currency=tenant.currency)
        out({"id": tenant.id, "name": tenant.name, "timezone": tenant.timezone, "currency": tenant.currency})
    return 0


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine:
        scopes = parse_scopes(args.scopes)
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
            key, key_id = create_api_key(
                session, tenant, scopes, secret=settings.secret_key.get_secret_value().encode(), now=now(), name=args.name,
                customer=args.customer,
            )  # fmt: skip
            bound = {"customer": args.customer} if args.customer else {}
            audit_cli(session, tenant, "key.create", f"key:{key_prefix(key)}", key_id=key_id, scopes=sorted(scopes), **bound)
        err("This key is shown once; store it now.")
        out({"tenant": tenant.name, "key_id": key_id, "scopes": sorted(scopes), **bound, "key": key})
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
            revoke_api_key(session, tenant, args.prefix, now=now())
            audit_cli(session, tenant, "key.revoke", f"key:{args.prefix}")
        out({"tenant": tenant.name, "revoked": args.prefix})
    return 0


def cmd_keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    grace = parse_duration(args.grace)
    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
            key, key_id, ends = rotate_api_key(
                session, tenant, args.prefix, secret=settings.secret_key.get_secret_value().encode(), now=now(), grace=grace
            )
            audit_cli(session, tenant, "key.rotate", f"key:{args.prefix}", new_key=key_prefix(key), new_key_id=key_id,
                      old_key_ends=ends.isoformat())  # fmt: skip
        err(f"This key is shown once; store it now. The old key {args.prefix} stops working at {ends.isoformat()}.")
        out({"tenant": tenant.name, "key_id": key_id, "key": key, "replaces": args.prefix, "old_key_ends": ends.isoformat()})
    return 0


def parse_duration(text: str) -> timedelta:
    """`0`, `90s`, `15m`, `24h`, `7d` (a bare number is seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not number.isdigit():
        raise TaskmeterError(f"invalid duration {text!r}: use a number of seconds, or 15m, 24h, 7d")
    return timedelta(seconds=int(number) * units[unit])


def add_commands(sub: Any) -> None:
    tenants = sub.add_parser("tenants", help="manage tenants").add_subparsers(dest="action", required=True)
    p = tenants.add_parser("create", help="create a tenant")
    p.add_argument("name")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of its billing months")
    p.add_argument("--currency", default="USD")
    p.set_defaults(func=cmd_tenants_create)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    p = keys.add_parser("create", help="create an API key (printed once)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--scopes", required=True, help="comma-separated: ingest,read,admin; or verdict (with --customer)")
    p.add_argument("--name", default="")
    p.add_argument("--customer", default=None, help="the one customer a verdict key acts for")
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser("revoke", help="revoke an API key by its prefix (the part after tm_)")
    p.add_argument("--tenant", required=True)
    p.add_argument("prefix")
    p.set_defaults(func=cmd_keys_revoke)
    p = keys.add_parser("rotate", help="replace an API key by a new one with the same scopes (printed once)")
    p.add_argument("--tenant", required=True)
    p.add_argument("prefix", help="the old key's prefix (the part after tm_)")
    p.add_argument("--grace", default="0", help="how long the old key keeps working: 0 (default), 90s, 15m, 24h, 7d")
    p.set_defaults(func=cmd_keys_rotate)
