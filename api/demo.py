"""The demo tenant: four customers, three task types, four models, three months of tasks.

Deterministic for a given month: event ids carry the month the demo was anchored in, so running
the demo twice in a month replays the same events (all duplicates) instead of doubling them.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from api.settings import Settings
from metering.db import unit_of_work
from metering.errors import NotFound
from metering.ingest import ingest_events
from metering.tenants import create_api_key, create_tenant, get_tenant

DEMO_TENANT = "demo"
CUSTOMERS = ("acme", "globex", "initech", "umbrella")
TASK_TYPES = ("support_ticket", "code_review", "research")
MODELS = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-20250514"),
    ("google", "gemini-2.5-flash"),
)


def demo_events(now: datetime, tasks_per_month: int = 150) -> list[dict[str, Any]]:
    anchor = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    rng = random.Random(anchor.strftime("%Y%m"))
    start = (anchor - timedelta(days=62)).replace(day=1)
    # Times are spread over the whole current month, so they do not depend on `now`; events
    # that lie in the future are held back until a later run.
    span = ((anchor + timedelta(days=32)).replace(day=1) - start).total_seconds()
    out: list[dict[str, Any]] = []
    total_tasks = tasks_per_month * 3
    for n in range(total_tasks):
        customer = rng.choice(CUSTOMERS)
        task_type = rng.choice(TASK_TYPES)
        task = f"demo-{anchor:%Y%m}-{n:05d}"
        at = start + timedelta(seconds=rng.uniform(0, span))
        base = {"customer": customer, "task": task}
        task_events = [{"id": f"{task}-start", "type": "task.started", "time": at, "task_type": task_type, **base}]
        provider, model = rng.choice(MODELS)
        for step in range(rng.randint(1, 6)):
            at += timedelta(seconds=rng.uniform(2, 90))
            input_tokens = rng.randint(800, 40_000)
            cache_read = rng.randint(0, input_tokens // 2) if step else 0
            output_tokens = rng.randint(100, 4000)
            event = {
                "id": f"{task}-u{step}",
                "type": "usage",
                "time": at,
                "provider": provider,
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_read_tokens": cache_read,
                "metadata": {"agent": f"{task_type}-agent"},
                **base,
            }
            task_events.append(event)
        at += timedelta(seconds=rng.uniform(1, 30))
        roll = rng.random()
        outcome = "task.completed" if roll < 0.8 else "task.failed" if roll < 0.95 else "task.cancelled"
        task_events.append({"id": f"{task}-end", "type": outcome, "time": at, **base})
        out.extend({**e, "time": _iso(e["time"])} for e in task_events if e["time"] <= now)
    return out


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def load_demo(engine: Engine, settings: Settings, *, now: datetime) -> dict[str, Any]:
    """Create (or reuse) the demo tenant, replay its sample events, and mint a fresh admin key."""
    with unit_of_work(engine) as session:
        try:
            tenant = get_tenant(session, DEMO_TENANT)
        except NotFound:
            tenant = create_tenant(session, DEMO_TENANT, timezone="UTC", currency="USD", now=now)
    events = demo_events(now)
    accepted = duplicates = 0
    for start in range(0, len(events), 5000):
        with unit_of_work(engine) as session:
            result = ingest_events(session, tenant.id, events[start : start + 5000], now=now)
        accepted += result.accepted
        duplicates += result.duplicates
    with unit_of_work(engine) as session:
        key, _ = create_api_key(
            session, tenant, frozenset({"ingest", "read", "admin"}),
            secret=settings.secret_key.get_secret_value().encode(), now=now, name="demo",
        )  # fmt: skip
    return {"tenant": tenant.name, "events": len(events), "accepted": accepted, "duplicates": duplicates, "key": key}
