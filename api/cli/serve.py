"""The long-running and start-up commands of `taskmeter`: `serve` (API, dashboard and
scheduler), `worker` (the scheduler alone) and `demo` (a sample tenant)."""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Any

from api.cli.common import err, now, open_engine, out
from api.settings import Settings


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
        err(f"taskmeter serving on http://{args.host}:{args.port} (API docs at /docs)")
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from api.demo import load_demo

    with open_engine(settings, create=True) as engine:
        summary = load_demo(engine, settings, now=now())
    out(summary)
    last = summary["closed"][-1]["month"]
    err("The demo key above is shown once. Try:\n"
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
            out(run_once(settings, engine, now=now()))
            return 0
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        err("taskmeter worker: rollup, period close, reports and Stripe sync on a clock (Ctrl-C stops)")
        run_worker(settings, engine)
    return 0


def add_commands(sub: Any) -> None:
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
