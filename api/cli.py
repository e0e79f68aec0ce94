"""The `taskmeter` command line. Machine output is JSON on stdout; progress and errors go to
stderr; a failure exits non-zero. The database is TASKMETER_DATABASE_URL, migrated on first use."""

from __future__ import annotations

import argparse
import gc
import getpass
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.settings import Settings, get_settings
from metering import audit
from metering.db import make_engine, sqlite_file, unit_of_work, upgrade_schema
from metering.errors import NotFound, TaskmeterError
from metering.ingest import Prepared, insert_prepared, prepare_rows, validate_lines
from metering.jsonl import LineBatch, read_batches
from metering.schemas import FieldError, RejectedEvent
from metering.tenants import (
    Tenant,
    create_api_key,
    create_tenant,
    get_tenant,
    key_prefix,
    list_tenants,
    parse_scopes,
    revoke_api_key,
    rotate_api_key,
)


def _now() -> datetime:
    return datetime.now(UTC)


def _out(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _err(message: str) -> None:
    sys.stderr.write(message + "\n")


@contextmanager
def open_engine(settings: Settings, *, create: bool = False) -> Iterator[Engine]:
    """The configured database, migrated to the newest schema; disposed when the command ends.

    Only the commands that start a database from nothing (`create`: `tenants create`, `demo`,
    `serve`, `worker`) may create a SQLite file; the others refuse a missing file, naming it,
    rather than leave an empty database behind a typo in TASKMETER_DATABASE_URL."""
    path = sqlite_file(settings.database_url)
    if not create and path is not None and not path.exists():
        raise TaskmeterError(
            f"no database at {path.resolve()}: create it with `taskmeter demo` (a sample tenant) or "
            "`taskmeter tenants create NAME`, or set TASKMETER_DATABASE_URL to an existing database"
        )
    engine = make_engine(settings.database_url)
    try:
        upgrade_schema(engine)
        yield engine
    finally:
        engine.dispose()


def find_tenant(session: Session, name: str) -> Tenant:
    """The tenant named `name`, or NotFound saying how to create it (naming no other tenant)."""
    try:
        return get_tenant(session, name)
    except NotFound:
        if not list_tenants(session):
            raise NotFound(
                f"no tenant named {name!r}: this database has no tenants yet; create one with "
                f"`taskmeter tenants create {name}`, or load the sample tenant with `taskmeter demo`"
            ) from None
        raise NotFound(f"no tenant named {name!r} (create it with `taskmeter tenants create {name}`)") from None


# --- commands -------------------------------------------------------------------------------


def cli_actor() -> str:
    """Who runs the command line, for the audit log: the OS user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment
        return "cli:unknown"


def audit_cli(session: Session, tenant: Tenant, action: str, target: str, **detail: Any) -> None:
    audit.record(session, tenant.id, actor=cli_actor(), action=action, target=target, detail=detail, at=_now())


def cmd_tenants_create(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings, create=True) as engine:
        with unit_of_work(engine) as session:
            tenant = create_tenant(session, args.name, timezone=args.timezone, currency=args.currency, now=_now())
            audit_cli(session, tenant, "tenant.create", f"tenant:{tenant.name}", timezone=tenant.timezone, currency=tenant.currency)
        _out({"id": tenant.id, "name": tenant.name, "timezone": tenant.timezone, "currency": tenant.currency})
    return 0


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine:
        scopes = parse_scopes(args.scopes)
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
            key, key_id = create_api_key(
                session, tenant, scopes, secret=settings.secret_key.get_secret_value().encode(), now=_now(), name=args.name
            )
            audit_cli(session, tenant, "key.create", f"key:{key_prefix(key)}", key_id=key_id, scopes=sorted(scopes))
        _err("This key is shown once; store it now.")
        _out({"tenant": tenant.name, "key_id": key_id, "scopes": sorted(scopes), "key": key})
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
            revoke_api_key(session, tenant, args.prefix, now=_now())
            audit_cli(session, tenant, "key.revoke", f"key:{args.prefix}")
        _out({"tenant": tenant.name, "revoked": args.prefix})
    return 0


def cmd_keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    grace = parse_duration(args.grace)
    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
            key, key_id, ends = rotate_api_key(
                session, tenant, args.prefix, secret=settings.secret_key.get_secret_value().encode(), now=_now(), grace=grace
            )
            audit_cli(session, tenant, "key.rotate", f"key:{args.prefix}", new_key=key_prefix(key), new_key_id=key_id,
                      old_key_ends=ends.isoformat())  # fmt: skip
        _err(f"This key is shown once; store it now. The old key {args.prefix} stops working at {ends.isoformat()}.")
        _out({"tenant": tenant.name, "key_id": key_id, "key": key, "replaces": args.prefix, "old_key_ends": ends.isoformat()})
    return 0


def parse_duration(text: str) -> timedelta:
    """`0`, `90s`, `15m`, `24h`, `7d` (a bare number is seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not number.isdigit():
        raise TaskmeterError(f"invalid duration {text!r}: use a number of seconds, or 15m, 24h, 7d")
    return timedelta(seconds=int(number) * units[unit])


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    with open_engine(settings) as engine:
        path = Path(args.file)
        if not path.is_file():
            raise TaskmeterError(f"no such file: {path}")
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
        rejected_path = path.with_name(path.name.removesuffix(".jsonl") + ".rejected.jsonl")
        summary = ingest_file(engine, tenant.id, path, rejected_path, settings=settings, batch_size=args.batch_size)
        _out(summary)
    return 0


def ingest_file(
    engine: Engine, tenant_id: int, path: Path, rejected_path: Path, *, settings: Settings, batch_size: int = 5000
) -> dict[str, Any]:
    """Stream a JSONL file into the events table, one transaction per batch (a rerun is a replay).

    A reader thread parses and validates the next batch while this one is being inserted.
    """
    from tqdm import tqdm

    totals = {"accepted": 0, "duplicates": 0, "conflicts": 0, "rejected": 0, "lines": 0}
    window = settings.event_window
    rejected_file = None

    def prepare(batch: LineBatch) -> tuple[LineBatch, Prepared]:
        validated = validate_lines(batch.raw)
        return batch, prepare_rows(validated, tenant_id, now=_now(), window=window)

    with (
        path.open("rb") as stream,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, file=sys.stderr, disable=None) as bar,
        ThreadPoolExecutor(1, thread_name_prefix="taskmeter-ingest-reader") as reader,
    ):
        batches = read_batches(stream, batch_size)
        pending = _submit_next(reader, prepare, batches)
        while pending is not None:
            batch, prepared = pending.result()
            pending = _submit_next(reader, prepare, batches)  # at most one batch ahead: bounded memory
            with unit_of_work(engine) as session:
                result = insert_prepared(session, tenant_id, prepared)
            rejections = [(batch.lines[r.index], batch.raw[r.index], r) for r in result.rejected]
            rejections += [
                (number, raw, RejectedEvent(index=-1, id=None, errors=[FieldError(field=f, message=m)]))
                for number, raw, f, m in batch.unreadable
            ]
            if rejections:
                rejected_file = rejected_file or rejected_path.open("w", encoding="utf-8")
                for number, raw, rejection in sorted(rejections, key=lambda r: r[0]):
                    record = {
                        "line": number,
                        "id": rejection.id,
                        "errors": [e.model_dump() for e in rejection.errors],
                        "raw": raw.decode("utf-8", errors="replace"),
                    }
                    rejected_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            totals["accepted"] += result.accepted
            totals["duplicates"] += result.duplicates
            totals["conflicts"] += result.conflicts
            totals["rejected"] += len(rejections)
            totals["lines"] += len(batch.raw) + len(batch.unreadable)
            bar.update(batch.bytes_read)
    if rejected_file is not None:
        rejected_file.close()
        totals["rejected_file"] = str(rejected_path)
        _err(f"{totals['rejected']} line(s) rejected; reasons in {rejected_path}")
    return totals


def _submit_next(pool: ThreadPoolExecutor, work: Callable[[LineBatch], Any], batches: Iterator[LineBatch]) -> Future[Any] | None:
    batch = next(batches, None)
    return None if batch is None else pool.submit(work, batch)


def cmd_rollup(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from metering.pipeline import rollup_tenant

    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            chosen = [find_tenant(session, args.tenant)] if args.tenant else list_tenants(session)
        results = []
        for tenant in chosen:
            with tqdm(total=0, unit="ev", unit_scale=True, file=sys.stderr, disable=None, desc=tenant.name) as bar:

                def progress(done: int, total: int, bar: Any = bar) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                result = rollup_tenant(engine, tenant, now=_now(), progress=progress)
            results.append({
                "tenant": result.tenant, "events_read": result.events_read, "tasks_updated": result.tasks_updated,
                "watermark": result.watermark, "rebuilt": result.rebuilt, "unpriced_models": result.unpriced_models,
                "quarantined": result.quarantined, "seconds": round(result.seconds, 3),
            })  # fmt: skip
            if result.quarantined:
                _err(f"{tenant.name}: {result.quarantined} event(s) could not be rolled up and were moved to the quarantine: "
                     f"`taskmeter quarantine list --tenant {tenant.name}`")  # fmt: skip
            for model in result.unpriced_models:
                _err(f"{tenant.name}: {model['events']} event(s) of {model['provider']}/{model['model']} are unpriced: "
                     "add its price with `taskmeter config load`")  # fmt: skip
    _out(results[0] if args.tenant else results)
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from metering.periods import parse_month
    from metering.pipeline import RollupConflict, rollup_tenant
    from reports.monthly import write_month

    with open_engine(settings) as engine:
        with unit_of_work(engine) as session:
            tenant = find_tenant(session, args.tenant)
        period = parse_month(args.month, tenant.timezone, field="--month")
        try:
            rollup_tenant(engine, tenant, now=_now())
        except RollupConflict:
            pass  # another rollup is committing the same events
        result = write_month(engine, tenant, period, Path(args.out), now=_now())
    for customer in result["unrated_customers"]:
        _err(f"{tenant.name}: {customer!r} has usage in {period.label} but no plan: its amounts are empty")
    _out(result)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api.app import create_app

    with open_engine(settings, create=True) as engine:
        app = create_app(settings, engine)
        # What is loaded by now lives as long as the process: keep it out of the cyclic GC's
        # full collections, which large batches (OTLP, /v1/events) otherwise trigger every few
        # requests, each one rescanning every module, table and model (measured: OTLP/protobuf
        # ingestion 8k → 12k+ spans/s, bench/bench_otlp.py).
        gc.freeze()
        _err(f"taskmeter serving on http://{args.host}:{args.port} (API docs at /docs)")
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from api.demo import load_demo

    with open_engine(settings, create=True) as engine:
        summary = load_demo(engine, settings, now=_now())
    _out(summary)
    last = summary["closed"][-1]["month"]
    _err("The demo key above is shown once. Try:\n"
         f"  taskmeter compare --tenant demo --month {last}\n"
         f"  taskmeter invoices --tenant demo --month {last}   (then: taskmeter invoices show ID --tenant demo)\n"
         f"  taskmeter close --tenant demo --month {last}\n"
         "  taskmeter quote --tenant demo --model anthropic/claude-opus-4-20250514 --input-tokens 20000 --output-tokens 3000")  # fmt: skip
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from api.scheduler import run_once, run_worker

    with open_engine(settings, create=True) as engine:
        if args.once:
            _out(run_once(settings, engine, now=_now()))
            return 0
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        _err("taskmeter worker: rollup, period close, reports and Stripe sync on a clock (Ctrl-C stops)")
        run_worker(settings, engine)
    return 0


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
            sync_tenant(engine, tenant, gateway, now=_now(), retry_failed=args.retry_failed, lease_seconds=settings.job_lease_seconds)
            for tenant in _stripe_tenants(engine, args.tenant)
        ]
    _out({"tenants": [report.summary() for report in reports]})
    for report in reports:
        if report.busy:
            _err(f"{report.tenant}: another worker is syncing this tenant; nothing done")
        for entry in report.failed:
            _err(f"{report.tenant}: invoice {entry['invoice']} failed: {entry['error']}")
        for entry in report.retrying:
            _err(f"{report.tenant}: invoice {entry['invoice']} will be retried at {entry['next_retry_at']}: {entry['error']}")
        if report.aborted:
            _err(f"{report.tenant}: stopped: {report.aborted}")
    return 1 if any(r.failed or r.retrying or r.aborted for r in reports) else 0


def cmd_stripe_status(args: argparse.Namespace, settings: Settings) -> int:
    from pricing.stripe_sync import sync_status

    with open_engine(settings) as engine:
        tenants = _stripe_tenants(engine, args.tenant)
        with unit_of_work(engine) as session:
            statuses = [{"tenant": t.name, **sync_status(session, t.id)} for t in tenants]
    _out({"enabled": settings.stripe_api_key is not None, "tenants": statuses})
    return 0


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskmeter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tenants = sub.add_parser("tenants", help="manage tenants").add_subparsers(dest="action", required=True)
    p = tenants.add_parser("create", help="create a tenant")
    p.add_argument("name")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of its billing months")
    p.add_argument("--currency", default="USD")
    p.set_defaults(func=cmd_tenants_create)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    p = keys.add_parser("create", help="create an API key (printed once)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--scopes", required=True, help="comma-separated: ingest,read,admin")
    p.add_argument("--name", default="")
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

    p = sub.add_parser("ingest", help="ingest a JSONL file of events")
    p.add_argument("file")
    p.add_argument("--tenant", required=True)
    p.add_argument("--batch-size", type=int, default=5000)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("rollup", help="bring per-task usage and cost up to date (all tenants by default)")
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_rollup)

    p = sub.add_parser("report", help="write the monthly CSVs of a tenant-local month into a folder")
    p.add_argument("--tenant", required=True)
    p.add_argument("--month", required=True, help="YYYY-MM, the tenant's calendar month")
    p.add_argument("--out", required=True, help="folder for customers-, invoice-lines-, tasks- and comparison-YYYY-MM.csv")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="serve the API, dashboard and scheduler")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="create the demo tenant with sample data; prints its keys")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("worker", help="run the scheduler alone: rollup, period close, reports, Stripe sync")
    p.add_argument("--once", action="store_true", help="run every job once now, print what it did, and exit")
    p.set_defaults(func=cmd_worker)

    stripe_cmds = sub.add_parser("stripe", help="Stripe sync").add_subparsers(dest="action", required=True)
    p = stripe_cmds.add_parser("sync", help="push finalized invoices to Stripe now")
    p.add_argument("--tenant", help="one tenant (default: all)")
    p.add_argument("--retry-failed", action="store_true", help="also retry invoices whose last error was permanent")
    p.set_defaults(func=cmd_stripe_sync)
    p = stripe_cmds.add_parser("status", help="finalized invoices by Stripe sync status, with errors")
    p.add_argument("--tenant", help="one tenant (default: all)")
    p.set_defaults(func=cmd_stripe_status)

    from api.cli_pricing import add_commands as add_pricing_commands  # it imports this module

    add_pricing_commands(sub)
    from api.cli_quarantine import add_commands as add_quarantine_commands  # it imports this module

    add_quarantine_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, get_settings())
    except TaskmeterError as exc:
        _err(f"error: {exc.message}")
        if exc.detail:
            _err(json.dumps(exc.detail, indent=2, default=str))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
