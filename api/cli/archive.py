"""The `archive` command of `taskmeter`: a tenant's closed months' events as Parquet in a folder
or an object store (`pricing.archive`), dropped from the database on request after a verified
copy, or put back (`--restore`) before a rollup that must rebuild from the first event."""

from __future__ import annotations

import argparse
from typing import Any

from api.cli.common import audit_cli, find_tenant, now, open_engine, out
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.errors import InvalidInput
from metering.core.periods import parse_month
from pricing.archive import archive_tenant, restore_tenant


def cmd_archive(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
        if args.restore:
            restored = restore_tenant(engine, tenant, url=args.to)
            with unit_of_work(engine) as session:
                audit_cli(
                    session,
                    tenant,
                    "archive.restore",
                    f"archive:{args.to or ''}",
                    months=[r["month"] for r in restored],
                )
            out({"tenant": tenant.name, "restored": restored})
            return 0
        if not args.before or not args.to:
            raise InvalidInput(
                "invalid arguments",
                detail=[
                    {"field": "--before/--to", "message": "archive needs --before YYYY-MM and --to DIR|URL"}
                ],
            )
        before = parse_month(args.before, tenant.timezone, field="--before")
        months = archive_tenant(engine, tenant, before=before, url=args.to, drop=args.drop, now=now())
        with unit_of_work(engine) as session:
            audit_cli(session, tenant, "archive.drop" if args.drop else "archive.write", f"archive:{args.to}",
                      months=[m.month for m in months], dropped=sum(m.dropped for m in months))  # fmt: skip
    out({"tenant": tenant.name, "to": args.to, "months": [m.as_dict() for m in months]})
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "archive", help="closed months' events as Parquet in a folder or object store (fsspec URL)"
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--before", help="archive the closed months before this one (YYYY-MM, tenant-local)")
    p.add_argument("--to", help="a folder or an fsspec URL (s3://bucket/path, memory://...)")
    p.add_argument(
        "--drop",
        action="store_true",
        help="delete archived events from the database after verifying the copy",
    )
    p.add_argument(
        "--restore", action="store_true", help="put the dropped months' events back from the archive"
    )
    p.set_defaults(func=cmd_archive)
