"""The `rollup` command of `taskmeter`: per-task usage and cost brought up to date."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from api.cli.common import err, find_tenant, now, open_engine, out
from api.cluster import cluster_executor
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.tenants import list_tenants


def cmd_rollup(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from metering.rollup.archive_guard import check_rebuild
    from metering.rollup.pipeline import rollup_tenant

    with open_engine(settings) as engine, cluster_executor(settings) as executor:
        with unit_of_work(engine) as session:
            chosen = [find_tenant(session, args.tenant)] if args.tenant else list_tenants(session)
        results = []
        for tenant in chosen:
            with tqdm(total=0, unit="ev", unit_scale=True, file=sys.stderr, disable=None, desc=tenant.name) as bar:

                def progress(done: int, total: int, bar: Any = bar) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                check_rebuild(engine, tenant)  # a rebuild would miss months dropped to the archive
                result = rollup_tenant(engine, tenant, now=now(), progress=progress, executor=executor)
            results.append({
                "tenant": result.tenant, "events_read": result.events_read, "tasks_updated": result.tasks_updated,
                "watermark": result.watermark, "rebuilt": result.rebuilt, "unpriced_models": result.unpriced_models,
                "quarantined": result.quarantined, "seconds": round(result.seconds, 3),
                # A price change applied from the rollup's rows: the models re-priced and their buckets.
                "repriced": None if result.repriced is None else {
                    "models": [f"{p}/{m}" for p, m in result.repriced.models], "buckets": result.repriced.buckets,
                },
            })  # fmt: skip
            if result.quarantined:
                err(f"{tenant.name}: {result.quarantined} event(s) could not be rolled up and were moved to the quarantine: "
                     f"`taskmeter quarantine list --tenant {tenant.name}`")  # fmt: skip
            for model in result.unpriced_models:
                err(f"{tenant.name}: {model['events']} event(s) of {model['provider']}/{model['model']} are unpriced: "
                     "add its price with `taskmeter config load`")  # fmt: skip
    out(results[0] if args.tenant else results)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("rollup", help="bring per-task usage and cost up to date (all tenants by default)")
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_rollup)
