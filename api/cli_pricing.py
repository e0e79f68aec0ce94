"""The pricing commands of `taskmeter`: `config load`, `compare` and `close` (see api.cli)."""

from __future__ import annotations

import argparse
import csv
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from api.cli import _now, _out, audit_cli, open_engine
from api.settings import Settings
from metering.db import unit_of_work
from metering.errors import TaskmeterError
from metering.pipeline import RollupConflict, rollup_tenant
from metering.tenants import get_tenant
from pricing import analysis, invoices, service
from pricing.compare import CUSTOMER_COLUMNS
from pricing.config import decode_config


def cmd_config_load(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise TaskmeterError(f"no such file: {path}")
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = get_tenant(session, args.tenant)
        summary = service.load_config(session, tenant, decode_config(path.read_bytes(), str(path)), now=_now())
        audit_cli(session, tenant, "config.load", f"config:{path.name}", plans=len(summary["plans"]),
                  customers=len(summary["customers"]), prices=summary.get("prices"))  # fmt: skip
        _out(summary)
    return 0


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            tenant = get_tenant(session, args.tenant)
        period = service.billing_month(args.month, tenant.timezone, field="--month")
        try:
            rollup_tenant(engine, tenant, now=_now())
        except RollupConflict:
            pass  # another rollup is committing the same events
        plans = [p.strip() for p in args.plans.split(",") if p.strip()] if args.plans else None
        with unit_of_work(engine) as session:
            result = analysis.compare_month(session, tenant, period, plans=plans, target_margin=args.target_margin)
    if args.format == "json":
        _out(analysis.comparison_view(result))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CUSTOMER_COLUMNS)
        for row in analysis.comparison_view(result)["customers"]:
            writer.writerow([_cell(row[c]) for c in CUSTOMER_COLUMNS])
    else:
        sys.stdout.write(comparison_table(analysis.comparison_view(result)))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_TABLE = (
    ("customer", "customer"), ("plan", "plan"), ("revenue", "revenue"), ("provider_cost", "provider cost"),
    ("margin", "margin"), ("margin_pct", "margin %"), ("tasks_completed", "done"), ("tasks_failed", "failed"),
    ("revenue_per_completed_task", "per done task"), ("break_even_job_price", "break-even job"),
    ("target_margin_job_price", "job @ target"),
)  # fmt: skip


def comparison_table(view: dict[str, Any]) -> str:
    """A readable, aligned table: each customer under each plan (* marks the billed plan), then
    the tenant's totals per plan."""

    def show(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if key == "margin_pct" and value is not None:
            return f"{value * 100:.2f}%"
        if key == "plan" and row.get("billed"):
            return f"{value} *"
        return _cell(value)

    def render(title: str, rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> list[str]:
        cells = [[head for _, head in columns]] + [[show(r, key) for key, _ in columns] for r in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        text = [title]
        for n, line in enumerate(cells):
            text.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))))
            if n == 0:
                text.append("  ".join("-" * w for w in widths))
        return text

    lines = render(
        f"{view['month']} ({view['currency']}), target margin {view['target_margin']}; * = billed plan", view["customers"], _TABLE
    )
    tenant_rows = [{**r, "customer": f"all {r['customers']}"} for r in view["tenant"]]
    lines += ["", *render("Tenant-wide, per plan", tenant_rows, _TABLE)]
    return "\n".join(lines) + "\n"


def cmd_close(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            tenant = get_tenant(session, args.tenant)
        period = service.billing_month(args.month, tenant.timezone, field="--month")
        with unit_of_work(engine) as session:
            _out(invoices.close_period(session, tenant, period, now=_now()))
    return 0


def add_commands(sub: Any) -> None:
    config = sub.add_parser("config", help="tenant configuration").add_subparsers(dest="action", required=True)
    p = config.add_parser("load", help="apply a config file: prices, plans, customers (all or nothing)")
    p.add_argument("file")
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=cmd_config_load)

    p = sub.add_parser("compare", help="a month of usage under several plans, side by side")
    p.add_argument("--tenant", required=True)
    p.add_argument("--month", required=True, help="tenant-local month, e.g. 2026-10")
    p.add_argument("--plans", help="comma-separated plan ids (default: each customer's plan and compare_with)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--target-margin", default="0.6", help="for the job price reaching this margin (default 0.6)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("close", help="finalize the invoices of a month that has ended")
    p.add_argument("--tenant", required=True)
    p.add_argument("--month", required=True, help="tenant-local month, e.g. 2026-10")
    p.set_defaults(func=cmd_close)
