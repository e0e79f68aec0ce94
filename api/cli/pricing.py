"""The pricing commands of `taskmeter`: `config load`, `compare`, `close`, `invoices` and `quote`
(see api.cli)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from api.cli.common import audit_cli, find_tenant, now, open_engine, out
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.errors import InvalidInput, TaskmeterError
from metering.core.vocabulary import OUTCOMES
from metering.costs.price_check import check_prices
from metering.rollup.pipeline import bring_up_to_date, price_version, tenant_overrides
from pricing import analysis, invoices, service
from pricing.compare import CUSTOMER_COLUMNS
from pricing.config import decode_config
from pricing.schemas import Invoice, QuoteIn, QuoteOut, TenantInvoice
from reports.csvwriter import neutralize


def cmd_config_load(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise TaskmeterError(f"no such file: {path}")
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = find_tenant(session, args.tenant)
        summary = service.load_config(session, tenant, decode_config(path.read_bytes(), str(path)), now=now())
        audit_cli(session, tenant, "config.load", f"config:{path.name}", plans=len(summary["plans"]),
                  customers=len(summary["customers"]), prices=summary.get("prices"))  # fmt: skip
        out(summary)
    return 0


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
        period = service.billing_month(args.month, tenant.timezone, field="--month")
        moment = now()
        bring_up_to_date(engine, tenant, now=moment)
        plans = [p.strip() for p in args.plans.split(",") if p.strip()] if args.plans else None
        with unit_of_work(engine) as session:
            result = analysis.compare_month(
                session, tenant, period, plans=plans, target_margin=args.target_margin, now=moment
            )
    if args.format == "json":
        out(analysis.comparison_view(result))
    elif args.format == "csv" and args.by_person:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(_SPEND_COLUMNS)
        for row in result.spend:
            writer.writerow([neutralize(_cell(row[c])) if c in _SPEND_TEXT else _cell(row[c]) for c in _SPEND_COLUMNS])
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CUSTOMER_COLUMNS)
        for row in analysis.comparison_view(result)["customers"]:
            writer.writerow([_cell(row[c]) for c in CUSTOMER_COLUMNS])
    else:
        view = analysis.comparison_view(result)
        sys.stdout.write(comparison_table(view, by_person=args.by_person))
        if warning := unpriced_warning(view, tenant.name):
            print(warning, file=sys.stderr)
    return 0


def unpriced_warning(view: dict[str, Any], tenant: str) -> str | None:
    """The stderr line a comparison table gets when some usage has no price: its provider cost
    and margins leave that usage out."""
    by_customer = {row["customer"]: row["unpriced_events"] for row in view["customers"]}
    events = sum(by_customer.values())
    if not events:
        return None
    customers = ", ".join(sorted(c for c, n in by_customer.items() if n))
    return (
        f"warning: {events} usage event(s) of {customers} have no price; provider cost and margin leave "
        f"them out (see the unpriced column; `taskmeter prices check --tenant {tenant}` names the models)"
    )


_SPEND_COLUMNS = ("customer", "actor", "agent", "usage_events", "input_tokens", "output_tokens", "provider_cost")
_SPEND_TEXT = frozenset({"customer", "actor", "agent"})


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
    ("target_margin_job_price", "job @ target"), ("unpriced_events", "unpriced"),
)  # fmt: skip


_OUTCOMES = (
    ("task_type", "task type"), ("completed", "completed"), ("settled", "settled"), ("pending", "pending"),
    ("reopened", "reopened"), ("rejected", "rejected"), ("disputed", "disputed"), ("billed_jobs", "billed jobs"),
    ("billed", "billed"), ("price_per_settled_job", "per settled job"),
)  # fmt: skip


def comparison_table(view: dict[str, Any], *, by_person: bool = False) -> str:
    """A readable, aligned table: each customer under each plan (* marks the billed plan), then
    the tenant's totals per plan; `by_person`: then the month's usage per customer, actor and agent."""

    def show(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if key == "margin_pct" and value is not None:
            return f"{value * 100:.2f}%"
        if key == "plan" and row.get("billed"):
            return f"{value} *"
        return _cell(value)

    def render(title: str, rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...], left: int = 2) -> list[str]:
        cells = [[head for _, head in columns]] + [[show(r, key) for key, _ in columns] for r in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        text = [title]
        for n, line in enumerate(cells):
            text.append("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))))
            if n == 0:
                text.append("  ".join("-" * w for w in widths))
        return text

    lines = render(
        f"{view['month']} ({view['currency']}), target margin {view['target_margin']}; * = billed plan", view["customers"], _TABLE
    )
    unpriced: dict[str, int] = {}
    for row in view["customers"]:
        unpriced[row["plan"]] = unpriced.get(row["plan"], 0) + row["unpriced_events"]
    tenant_rows = [{**r, "customer": f"all {r['customers']}", "unpriced_events": unpriced.get(r["plan"], 0)} for r in view["tenant"]]
    lines += ["", *render("Tenant-wide, per plan", tenant_rows, _TABLE)]
    if view.get("outcomes"):
        outcomes = [{**r, "task_type": r["task_type"] or "(none)"} for r in view["outcomes"]]
        title = "Outcomes per task type (price per settled job = billed by per-job plans / their settled jobs)"
        lines += ["", *render(title, outcomes, _OUTCOMES, left=1)]
    if by_person:
        people = [{**r, "actor": r["actor"] or "-", "agent": r["agent"] or "-"} for r in view["spend"]]
        columns = tuple((c, c.replace("_", " ")) for c in _SPEND_COLUMNS)
        lines += ["", *render("Usage by person and agent (- : none given)", people, columns, left=3)]
    return "\n".join(lines) + "\n"


def cmd_prices_check(args: argparse.Namespace, settings: Settings) -> int:
    """`prices check`: the tenant's models and where each price comes from (`metering.costs.price_check`)."""
    with open_engine(settings) as engine, engine.connect() as connection:
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
        report = check_prices(connection, tenant.id, price_version(tenant_overrides(connection, tenant.id)))
    report = {"tenant": tenant.name, **report}
    if args.format == "json":
        out(report)
    else:
        sys.stdout.write(prices_table(report))
    return 0


_PRICE_COLUMNS = (
    ("provider", "provider"), ("model", "model"), ("source", "source"), ("priced_as", "priced as"),
    ("usage_events", "events"), ("unpriced_events", "unpriced"), ("provider_cost", "cost"),
    ("provider_cost_now", "cost now"), ("change", "change"),
)  # fmt: skip


def prices_table(report: dict[str, Any]) -> str:
    snapshot = report["snapshot"]
    head = [
        f"{report['tenant']}: rolled up with {report['rolled_up_with'] or 'nothing yet'}; prices now {report['prices_now']}"
        + ("" if report["up_to_date"] else " (the next rollup re-prices)"),
        f"snapshot: rolled up with {snapshot['rolled_up_with']}, installed {snapshot['installed']}"
        + (" (changed)" if snapshot["changed"] else ""),
    ]
    rows = [[head_ for _, head_ in _PRICE_COLUMNS]] + [[_cell(m[key]) for key, _ in _PRICE_COLUMNS] for m in report["models"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_PRICE_COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    return "\n".join([*head, "", lines[0], "  ".join("-" * w for w in widths), *lines[1:]]) + "\n"


def cmd_close(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
        period = service.billing_month(args.month, tenant.timezone, field="--month")
        with unit_of_work(engine) as session:
            out(invoices.close_period(session, tenant, period, now=now()))
    return 0


def cmd_invoices(args: argparse.Namespace, settings: Settings) -> int:
    """`invoices [list]`: the tenant's invoices (of a month, of a customer); `invoices show ID`:
    one invoice with its lines and credit notes, as `GET /v1/invoices/{id}` answers."""
    if args.action == "show" and (args.id is None or args.month or args.customer):
        raise InvalidInput("invalid arguments", detail=[{"field": "ID", "message": "`invoices show` takes an invoice id, and no --month or --customer"}])
    if args.action == "list" and args.id is not None:
        raise InvalidInput("invalid arguments", detail=[{"field": "ID", "message": "an invoice id goes with `invoices show ID`"}])
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = find_tenant(session, args.tenant)
        if args.action == "show":
            out(Invoice.model_validate(invoices.invoice_view(session, tenant, args.id)).model_dump(mode="json"))
            return 0
        period = service.billing_month(args.month, tenant.timezone, field="--month") if args.month else None
        rows = invoices.tenant_invoices(session, tenant, period=period, customer=args.customer)
    out(_LISTED.dump_python(_LISTED.validate_python(rows), mode="json"))
    return 0


_LISTED = TypeAdapter(list[TenantInvoice])

# Where a quote's problems point when the usage came from flags rather than --body.
_QUOTE_FLAGS = {
    "body.usage[0].input_tokens": "--input-tokens", "body.usage[0].output_tokens": "--output-tokens",
    "body.usage[0].cache_read_tokens": "--cache-read-tokens", "body.usage[0].cache_write_tokens": "--cache-write-tokens",
    "body.usage[0].cache_write_1h_tokens": "--cache-write-1h-tokens",
    "body.usage[0]": "--cache-read-tokens, --cache-write-tokens", "body.usage": "--model", "body.plans": "--plans", "body.units_before": "--units-before",
    "body.at": "--at", "body.task_type": "--task-type",
}  # fmt: skip


_QUOTE_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens")


def cmd_quote(args: argparse.Namespace, settings: Settings) -> int:
    """What one task would cost under each plan (as `POST /v1/quotes`); stores nothing."""
    body = _quote_body(args)
    with open_engine(settings) as engine, unit_of_work(engine) as session:
        tenant = find_tenant(session, args.tenant)
        try:
            result = analysis.quote_request(session, tenant, body, now=now())
        except InvalidInput as error:
            raise _flag_fields(error, args) from None
    out(QuoteOut.model_validate(result).model_dump(mode="json"))
    return 0


def _quote_body(args: argparse.Namespace) -> QuoteIn:
    """The quote request: the JSON of `--body` (a file, or - for stdin), else the flags."""
    flags = [args.model, args.input_tokens, args.output_tokens, args.cache_read_tokens, args.cache_write_tokens,
             args.cache_write_1h_tokens, args.task_type, args.outcome, args.plans, args.units_before, args.at]  # fmt: skip
    if args.body is not None:
        if any(flag is not None for flag in flags):
            raise InvalidInput("invalid arguments", detail=[{"field": "--body", "message": "give the quote as --body or as flags, not both"}])
        raw = _read_json(args.body)
    else:
        raw = {"usage": [], "outcome": args.outcome or "completed", "units_before": args.units_before or 0}
        if args.model is not None:
            provider, _, model = args.model.partition("/")
            if not provider or not model:
                raise InvalidInput("invalid arguments", detail=[{"field": "--model", "message": f"{args.model!r} is not PROVIDER/MODEL, e.g. openai/gpt-4o"}])
            tokens = {name: getattr(args, name) or 0 for name in _QUOTE_TOKENS}
            raw["usage"] = [{"provider": provider, "model": model, **tokens}]
        elif any(getattr(args, n) is not None for n in _QUOTE_TOKENS):
            raise InvalidInput("invalid arguments", detail=[{"field": "--model", "message": "token counts need the model that used them"}])
        if args.task_type is not None:
            raw["task_type"] = args.task_type
        if args.plans is not None:
            raw["plans"] = [p.strip() for p in args.plans.split(",") if p.strip()]
        if args.at is not None:
            _instant(args.at)  # a clear --at error for text without an offset
            raw["at"] = args.at  # QuoteIn takes RFC 3339 text, as the HTTP body gives it
    try:
        return QuoteIn.model_validate(raw)
    except ValidationError as error:
        detail = [{"field": "body" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item["loc"]),
                   "message": item["msg"]} for item in error.errors(include_url=False)]  # fmt: skip
        raise _flag_fields(InvalidInput("invalid quote", detail=detail), args) from None


def _read_json(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as error:
        raise TaskmeterError(f"cannot read {source}: {error.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput("invalid quote", detail=[{"field": "--body", "message": f"not JSON: {error}"}]) from None


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidInput("invalid arguments", detail=[{"field": "--at", "message": f"{text!r} is not an instant with an offset, e.g. 2026-10-15T12:00:00Z"}])
    return moment


def _flag_fields(error: InvalidInput, args: argparse.Namespace) -> InvalidInput:
    """The error with its fields named as the flags that gave them (unchanged for --body)."""
    if args.body is not None or not isinstance(error.detail, list):
        return error
    detail = [{**item, "field": _QUOTE_FLAGS.get(item.get("field", ""), _QUOTE_FLAGS.get(item.get("field", "").split("[")[0], item.get("field")))}
              for item in error.detail]  # fmt: skip
    return InvalidInput(error.message, detail=detail)


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
    p.add_argument("--by-person", action="store_true",
                   help="also the month's usage per customer, actor and agent (table: a section after the plans; csv: those rows instead)")
    p.set_defaults(func=cmd_compare)

    prices = sub.add_parser("prices", help="provider prices").add_subparsers(dest="action", required=True)
    p = prices.add_parser("check", help="the models in the tenant's usage and where each price comes from; unpriced first")
    p.add_argument("--tenant", required=True)
    p.add_argument("--format", choices=("json", "table"), default="json")
    p.set_defaults(func=cmd_prices_check)

    p = sub.add_parser("close", help="finalize the invoices of a month that has ended")
    p.add_argument("--tenant", required=True)
    p.add_argument("--month", required=True, help="tenant-local month, e.g. 2026-10")
    p.set_defaults(func=cmd_close)

    p = sub.add_parser("invoices", help="a tenant's invoices (list), or one invoice with its lines (show ID)")
    p.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    p.add_argument("id", nargs="?", type=int, metavar="ID", help="the invoice's id (with show)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--month", help="list one tenant-local month, e.g. 2026-10 (default: all)")
    p.add_argument("--customer", help="list one customer's invoices")
    p.set_defaults(func=cmd_invoices)

    p = sub.add_parser("quote", help="what one task would cost under each plan (stores nothing)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--model", metavar="PROVIDER/MODEL", help="the model the task uses, e.g. openai/gpt-4o")
    p.add_argument("--input-tokens", type=int, help="all input tokens, cache reads and writes included")
    p.add_argument("--output-tokens", type=int)
    p.add_argument("--cache-read-tokens", type=int)
    p.add_argument("--cache-write-tokens", type=int)
    p.add_argument("--cache-write-1h-tokens", type=int, help="the 1-hour cache writes among --cache-write-tokens")
    p.add_argument("--task-type")
    p.add_argument("--outcome", choices=OUTCOMES, help="default: completed")
    p.add_argument("--plans", help="comma-separated plan ids (default: every plan in force)")
    p.add_argument("--units-before", type=int, help="the month's usage so far in the plan's unit (tiers, allowances)")
    p.add_argument("--at", help="price at this instant, e.g. 2026-10-15T12:00:00Z (default: now)")
    p.add_argument("--body", metavar="FILE", help="the JSON body of POST /v1/quotes instead of the flags (- reads stdin)")
    p.set_defaults(func=cmd_quote)
