"""What every `taskmeter` command shares: the clock, JSON output on stdout and messages on
stderr, the database, finding a tenant by name, and the audit record of a command."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.settings import Settings
from metering.core import audit
from metering.core.db import make_engine, sqlite_file, upgrade_schema
from metering.core.errors import NotFound, TaskmeterError
from metering.core.tenants import Tenant, get_tenant, list_tenants
from metering.core.times import rfc3339


def now() -> datetime:
    return datetime.now(UTC)


def out(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> str:
    """Instants as RFC 3339 UTC (`2026-12-06T03:52:56.751216Z`, as the API writes them; naive
    ones are UTC, as SQLite returns them), decimals in fixed point, anything else as text."""
    if isinstance(value, datetime):
        return rfc3339(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, Decimal):
        return f"{value:f}"
    return str(value)


def err(message: str) -> None:
    sys.stderr.write(message + "\n")


@contextmanager
def open_engine(settings: Settings, *, create: bool = False, migrate: bool = True) -> Iterator[Engine]:
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
        if migrate:  # else the command migrates when it can (`loader` waits for the database)
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


def cli_actor() -> str:
    """Who runs the command line, for the audit log: the OS user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment
        return "cli:unknown"


def audit_cli(session: Session, tenant: Tenant, action: str, target: str, **detail: Any) -> None:
    """Record what a command changed in the tenant's audit log, done by `cli_actor()`."""
    audit.record(session, tenant.id, actor=cli_actor(), action=action, target=target, detail=detail, at=now())
