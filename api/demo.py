"""The demo tenant: four customers on three plans, three months of agent work, the ended months
closed into finalized invoices, and a task reported after its month closed.

The story (README, "What the demo shows"), one customer per point:
- globex's agents review code with a pricier model (claude-opus-4) that needs few tokens per
  job: billed per token at flat rates, each job is cheap and the margin negative; per job
  earns the most.
- initech's research agents read long contexts with a cheap model (gpt-4o-mini): per token
  earns the most; cost-plus falls back to its monthly minimum.
- umbrella's agents fail or are cancelled half the time: per job those tasks are free, while
  their provider cost is paid all the same; cost-plus earns the most.
- acme answers support tickets with gpt-4o, mostly successfully: per job earns the most.
- The two months before `now` are closed. Then a globex task of each is reported late (its
  runtime was offline when the month closed): the next invoice carries an adjustment line naming
  the month (last month's finalized invoice for the month before; this month's draft for last
  month).
- Agents act under a person's account: `ben@globex.example` runs three agents and works
  directly too (see `attribution`).

Deterministic and idempotent: each month's events come from a generator seeded with that month
and the customer, and their ids carry the month, so running the demo again (this month or a
later one) replays the same events (duplicates) and adds only those that `now` has reached
since: events past `now` are held back. Config loading and closing change nothing the second
time. Only a fresh API key is minted on every run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.errors import NotFound
from metering.core.periods import Period, period_of
from metering.core.tenants import Tenant, create_api_key, create_tenant, get_tenant
from metering.events.ingest import ingest_events
from metering.rollup.pipeline import bring_up_to_date
from pricing import invoices, service

DEMO_TENANT = "demo"
CONFIG = Path(__file__).with_name("demo_tenant.yaml")
BATCH = 5000
TASK_ROOM = timedelta(hours=1)  # a task starts this long before its month ends, at the latest
LATE_CUSTOMER = "globex"  # billed per token: a late task changes its token line


@dataclass(frozen=True)
class Profile:
    """How one customer's agents work, a month at a time."""

    customer: str
    tasks: int  # a month
    task_types: tuple[str, ...]
    provider: str
    model: str
    calls: tuple[int, int]  # model calls per task
    input_tokens: tuple[int, int]  # per call, cache reads included
    output_tokens: tuple[int, int]
    cached_pct: int  # share of a later call's input read from the provider's cache
    failed_pct: int
    cancelled_pct: int
    people: tuple[tuple[str, tuple[str | None, ...]], ...]  # an actor and its agents (None: the actor itself)


PROFILES = (
    Profile("acme", 70, ("support_ticket",), "openai", "gpt-4o", (2, 4), (4_000, 16_000), (300, 1_500), 40, 6, 2,
            (("maria@acme.example", ("maria/helpdesk-1", "maria/helpdesk-2")), ("support-bot@acme.example", (None,)))),
    Profile("globex", 45, ("code_review",), "anthropic", "claude-opus-4-20250514", (1, 3), (5_000, 12_000), (600, 1_800),
            30, 5, 2, (("ben@globex.example", ("ben/codex-1", "ben/codex-2", "ben/codex-3", None)),)),
    Profile("initech", 30, ("research",), "openai", "gpt-4o-mini", (6, 10), (30_000, 80_000), (2_000, 5_000), 50, 5, 3,
            (("lena@initech.example", ("lena/researcher",)),)),
    Profile("umbrella", 60, ("support_ticket", "research"), "anthropic", "claude-sonnet-4-20250514", (3, 5),
            (20_000, 40_000), (2_000, 4_000), 20, 35, 15, (("ops@umbrella.example", ("ops/triage", None)),)),
)  # fmt: skip


def attribution(actor: str, agent: str | None) -> dict[str, Any]:
    """The event fields saying whose account a task runs under (`actor`) and which of that
    person's agents does the work (`agent`; None: the person acted directly).

    Demo databases made before events had these fields carried them in `metadata`: their events
    are now conflicts on replay (the first version stands), so recreate such a database.
    """
    return {"actor": actor} | ({"agent": agent} if agent else {})


def _task(profile: Profile, rng: random.Random, task: str, start: datetime) -> list[dict[str, Any]]:
    actor, agents = rng.choice(profile.people)
    common = {"customer": profile.customer, "task": task, **attribution(actor, rng.choice(agents))}
    at = start
    events = [{"id": f"{task}-start", "type": "task.started", "time": at, "task_type": rng.choice(profile.task_types), **common}]
    for call in range(rng.randint(*profile.calls)):
        at += timedelta(seconds=rng.randint(2, 90))
        input_tokens = rng.randint(*profile.input_tokens)
        events.append({
            "id": f"{task}-u{call}", "type": "usage", "time": at, "provider": profile.provider, "model": profile.model,
            "input_tokens": input_tokens, "output_tokens": rng.randint(*profile.output_tokens),
            "cache_read_tokens": input_tokens * profile.cached_pct // 100 if call else 0, **common,
        })  # fmt: skip
    at += timedelta(seconds=rng.randint(1, 30))
    roll = rng.randrange(100)
    outcome = "failed" if roll < profile.failed_pct else "cancelled" if roll < profile.failed_pct + profile.cancelled_pct else "completed"
    events.append({"id": f"{task}-end", "type": f"task.{outcome}", "time": at, **common})
    return events


def month_events(period: Period) -> list[dict[str, Any]]:
    """Every event of the month's demo tasks, `now` aside; each task ends inside the month."""
    span = int((period.end - TASK_ROOM - period.start).total_seconds())
    out: list[dict[str, Any]] = []
    for profile in PROFILES:
        rng = random.Random(f"{period.label}/{profile.customer}")
        for n in range(profile.tasks):
            start = period.start + timedelta(seconds=rng.randrange(span))
            out += _task(profile, rng, f"demo-{period.first_day:%Y%m}-{profile.customer}-{n:03d}", start)
    return out


def late_events(period: Period) -> list[dict[str, Any]]:
    """A globex task of the month (on its 20th, at noon), sent only after the month closed."""
    profile = next(p for p in PROFILES if p.customer == LATE_CUSTOMER)
    rng = random.Random(f"{period.label}/late")
    start = period.start + timedelta(days=19, hours=12)
    return _task(profile, rng, f"demo-{period.first_day:%Y%m}-{profile.customer}-late", start)


def demo_months(now: datetime, timezone: str) -> list[Period]:
    """The month of `now` and the two before it, oldest first."""
    current = period_of(now, timezone)
    return [current.previous().previous(), current.previous(), current]


def demo_events(now: datetime, timezone: str = "UTC") -> list[dict[str, Any]]:
    """The demo months' events that have happened by `now` (late ones aside), times as RFC 3339."""
    return _until(now, [event for period in demo_months(now, timezone) for event in month_events(period)])


def _until(now: datetime, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**e, "time": _iso(e["time"])} for e in events if e["time"] <= now]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _ingest(engine: Engine, tenant: Tenant, events: list[dict[str, Any]], *, now: datetime) -> tuple[int, int]:
    accepted = duplicates = 0
    for start in range(0, len(events), BATCH):
        with unit_of_work(engine) as session:
            result = ingest_events(session, tenant.id, events[start : start + BATCH], now=now)
        accepted += result.accepted
        duplicates += result.duplicates
    return accepted, duplicates


def load_demo(engine: Engine, settings: Settings, *, now: datetime) -> dict[str, Any]:
    """Create (or reuse) the demo tenant with its plans and customers, replay its events, close
    the months before `now` (each followed by its late task), roll up, and mint a fresh admin key."""
    with unit_of_work(engine) as session:
        try:
            tenant = get_tenant(session, DEMO_TENANT)
        except NotFound:
            tenant = create_tenant(session, DEMO_TENANT, timezone="UTC", currency="USD", now=now)
        config = service.load_config(session, tenant, CONFIG.read_text(encoding="utf-8"), now=now)
        customers = [service.describe_customer(session, tenant, c["id"]) for c in config["customers"]]
    *ended, current = demo_months(now, tenant.timezone)
    events = demo_events(now, tenant.timezone)
    accepted, duplicates = _ingest(engine, tenant, events, now=now)
    closed = []
    for period in ended:
        with unit_of_work(engine) as session:
            summary = invoices.close_period(session, tenant, period, now=now)
        late = _until(now, late_events(period))
        late_accepted, late_duplicates = _ingest(engine, tenant, late, now=now)
        events, accepted, duplicates = events + late, accepted + late_accepted, duplicates + late_duplicates
        closed.append({
            "month": period.label, "newly_closed": summary["closed"], "invoices": len(summary["invoices"]),
            "adjustment_lines": sum(i["adjustment_lines"] for i in summary["invoices"]),
        })  # fmt: skip
    bring_up_to_date(engine, tenant, now=now)  # the late tasks too: usage and drafts are current at once
    with unit_of_work(engine) as session:
        key, _ = create_api_key(
            session, tenant, frozenset({"ingest", "read", "admin"}),
            secret=settings.secret_key.get_secret_value().encode(), now=now, name="demo",
        )  # fmt: skip
    return {
        "tenant": tenant.name,
        "events": len(events),
        "accepted": accepted,
        "duplicates": duplicates,
        "plans": [p["id"] for p in config["plans"]],
        "customers": [{"id": c["id"], "plan": c["plan"], "compare_with": c["compare_with"]} for c in customers],
        "closed": closed,
        "open_month": current.label,
        "key": key,
    }
