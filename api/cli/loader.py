"""The `loader` command of `taskmeter`: the ingest log (TASKMETER_INGEST_LOG) into the database.

Run as many as the database takes; they share one durable consumer, so each message goes to one
of them at a time. Each acknowledges a batch only after its transaction committed: killed at any
point, a loader loses nothing and stores nothing twice (`metering.events.loader`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from sqlalchemy import Engine

from api.cli.common import err, now, open_engine, out
from api.ingest_log import log_config
from api.settings import Settings
from metering.core.db import is_unavailable, upgrade_schema
from metering.core.errors import TaskmeterError


def cmd_loader(args: argparse.Namespace, settings: Settings) -> int:
    from metering.events.loader import run

    if settings.ingest_log is None:
        raise TaskmeterError("set TASKMETER_INGEST_LOG (nats://host:4222) to the log the API writes to")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = log_config(settings)

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)  # finish the batch in hand, then stop
        with open_engine(settings, migrate=False) as engine:
            await _schema_when_up(engine, stop)
            return await run(
                config, engine, clock=now, window=settings.event_window, batch=args.batch, stop=stop,
                idle_exit=args.exit_when_idle,
            )  # fmt: skip

    err(f"loading {config.stream} ({config.url}) into the database; stop with Ctrl-C or SIGTERM")
    stats = asyncio.run(main())
    out({
        "stored": stats.stored, "duplicates": stats.duplicates, "conflicts": stats.conflicts,
        "quarantined": stats.quarantined, "batches": stats.batches,
    })  # fmt: skip
    return 0


async def _schema_when_up(engine: Engine, stop: asyncio.Event) -> None:
    """Migrate the database, waiting for it while it is away: a loader started during an outage
    waits, as it does when the outage comes later."""
    said = False
    while not stop.is_set():
        try:
            await asyncio.to_thread(upgrade_schema, engine)
            return
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if not said:
                err(f"the database is unavailable ({type(exc).__name__}); waiting for it")
                said = True
        await asyncio.sleep(1)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("loader", help="load the ingest log (TASKMETER_INGEST_LOG) into the database")
    p.add_argument("--batch", type=int, default=500, help="messages per fetch and transaction (default 500)")
    p.add_argument(
        "--exit-when-idle", type=float, default=None, metavar="SECONDS",
        help="stop once the log has had nothing for this long (a catch-up run; default: run until stopped)",
    )  # fmt: skip
    p.set_defaults(func=cmd_loader)
