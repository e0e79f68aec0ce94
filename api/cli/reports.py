"""The `report` command of `taskmeter`: the monthly CSVs of a tenant-local month."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from api.cli.common import err, find_tenant, now, open_engine, out
from api.settings import Settings
from metering.core.db import unit_of_work


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from metering.core.periods import parse_month
    from metering.rollup.pipeline import bring_up_to_date
    from reports.monthly import write_month

    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
        period = parse_month(args.month, tenant.timezone, field="--month")
        bring_up_to_date(engine, tenant, now=now())
        result = write_month(engine, tenant, period, Path(args.out), now=now())
    for customer in result["unrated_customers"]:
        err(f"{tenant.name}: {customer!r} has usage in {period.label} but no plan: its amounts are empty")
    out(result)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("report", help="write the monthly CSVs of a tenant-local month into a folder")
    p.add_argument("--tenant", required=True)
    p.add_argument("--month", required=True, help="YYYY-MM, the tenant's calendar month")
    p.add_argument("--out", required=True, help="folder for customers-, invoice-lines-, tasks- and comparison-YYYY-MM.csv")
    p.set_defaults(func=cmd_report)
