"""The `taskmeter` command line. Machine output is JSON on stdout; progress and errors go to
stderr; a failure exits non-zero. The database is TASKMETER_DATABASE_URL, migrated on first use."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

from api.cli import (
    archive,
    budgets,
    ingest,
    loader,
    pricing,
    quarantine,
    reports,
    rollup,
    serve,
    stripe,
    tenants,
)
from api.cli.common import err
from api.settings import Settings, get_settings
from metering.core.errors import TaskmeterError

# The command groups, in the order `taskmeter --help` lists them; each adds its own subcommands.
GROUPS = (tenants, ingest, rollup, reports, serve, stripe, pricing, budgets, quarantine, loader, archive)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskmeter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, get_settings())
    except TaskmeterError as exc:
        err(f"error: {exc.message}")
        if exc.detail:
            err(json.dumps(exc.detail, indent=2, default=str))
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "main"]
