"""A property test of the whole path: generated batches with extreme but valid values go through
ingest (the HTTP API, in process) → rollup → close (finalize the past months) → reports (the
monthly CSVs) → the dashboard's pages → every GET of the API (enumerated from the app's routes, so
that a new route is covered without editing this file; path parameters are ids that exist).

Extremes: every field at its bounds (ids and names of maximum length, non-ASCII and emoji, control
characters), token counts up to 10**12 with their subsets at their limits, metadata at its key and
size limits; the tenant in any IANA time zone, +14:00 and -12:00 included; event times at the ends
of months and years (midnight in the tenant's zone and the microsecond before it), at the earliest
accepted instant (2000-01-01T00:00:00Z) and the latest (now + 7 days); events out of order, late
(after their month is closed) and replayed.

Checked: no answer is a 5xx; every accepted event is stored; the rollup's tokens per customer and
tenant-local month, and its completed and failed tasks, equal an exact reference computed from the
generated events (in the customers and tasks CSVs and in `GET /v1/usage`), and so does the provider
cost of the tenant-priced models; every finalized invoice's total is the sum of its rounded lines;
no amount is written in scientific notation. Names with "/" have no URL: their GETs may answer
404 (or 307), never 5xx.

`TASKMETER_PROPERTY_EXAMPLES` (default 4: about 15 s on SQLite, 30 s on PostgreSQL) sets how many
generated histories run.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import available_timezones

import pyarrow.dataset  # noqa: F401 - a Cython module checks datetime.date at import: before freezegun fakes it
import pytest
import yaml
from fastapi.testclient import TestClient
from freezegun import freeze_time
from hypothesis import HealthCheck, Phase, given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from api.app import create_app
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.money import minor_unit, quantize
from metering.core.periods import Period, period_of
from metering.core.tenants import Tenant, create_api_key, create_tenant, parse_scopes
from metering.events.schemas import MAX_TOKENS
from metering.rollup.pipeline import rollup_tenant
from pricing import service
from pricing.invoices import close_period
from pricing.tables import invoices as invoice_table
from reports.columns import REPORTS
from reports.monthly import write_month
from tests.conftest import TEST_SECRET
from tests.security.conftest import flat_routes, sign_in
from tests.support.integrity import event_count, invoice_problems

EXAMPLES = int(os.environ.get("TASKMETER_PROPERTY_EXAMPLES", "4"))
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE = timedelta(days=7)
US = timedelta(microseconds=1)

# The clock: fixed instants at the edges of months and years, in UTC and in the extreme zones.
CLOCKS = (
    datetime(2026, 12, 6, 2, 0, tzinfo=UTC),
    datetime(2027, 1, 1, 0, 0, tzinfo=UTC),  # a UTC new year
    datetime(2026, 12, 31, 10, 0, tzinfo=UTC),  # new year on Kiritimati (+14:00)
    datetime(2027, 1, 1, 11, 59, 59, 999_999, tzinfo=UTC),  # the last microsecond of 2026 at -12:00
    datetime(2028, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC),  # a leap day's end
)
EXTREME_ZONES = ("Pacific/Kiritimati", "Etc/GMT+12", "UTC", "Asia/Kathmandu", "America/St_Johns",
                 "Australia/Lord_Howe", "Pacific/Chatham", "America/Los_Angeles")  # fmt: skip
ZONES = st.one_of(st.sampled_from(EXTREME_ZONES), st.sampled_from(sorted(available_timezones())))
OFFSETS = (0, 14 * 60, -12 * 60, 5 * 60 + 45, -(3 * 60 + 30))  # minutes east of UTC, as events give them

# Text: any Unicode a client may send (NUL is refused by ingestion), emoji and marks included.
CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
EMOJI = st.sampled_from(["🙂", "👩‍💻", "🇩🇪", "é", "ß", "中", "\u202e", "\n", ",", '"', "=", "\t", "/", "%", "?", "#"])


def texts(max_size: int, min_size: int = 1) -> st.SearchStrategy[str]:
    """Text up to `max_size` characters, often exactly that long."""
    pieces = st.lists(st.one_of(CHARS, EMOJI), min_size=min_size, max_size=12).map("".join)
    full = st.tuples(st.one_of(CHARS, EMOJI), pieces).map(lambda p: (p[1] + p[0] * max_size)[:max_size])
    return st.one_of(pieces.map(lambda s: s[:max_size]), full).filter(lambda s: len(s) >= min_size)


def unique_texts(n: int, max_size: int) -> st.SearchStrategy[list[str]]:
    """`n` distinct names; the first characters number them, so cutting at `max_size` keeps them distinct."""
    return st.lists(texts(max_size), min_size=n, max_size=n).map(
        lambda names: [(f"{i}" + name)[:max_size] for i, name in enumerate(names)]
    )


TOKENS = st.one_of(st.sampled_from([0, 1, MAX_TOKENS - 1, MAX_TOKENS, MAX_TOKENS]), st.integers(0, MAX_TOKENS))
MODELS = (
    ("acme-ai", "acme-max"),  # the tenant's price at the cap of 2000 per million tokens
    ("acme-ai", "acme-large"),
    ("openai", "gpt-4o"),  # genai-prices
    ("p" * 64, "unpriced-🙂" + "m" * 118),  # unknown (128 characters): counted, never priced at zero
)
PRICES = [
    {"provider": "acme-ai", "model": "acme-max", "input": "2000", "output": "2000", "cache_read": "2000", "cache_write": "2000"},
    {"provider": "acme-ai", "model": "acme-large", "input": "3.00", "output": "15.00", "cache_read": "0.30", "cache_write": "3.75"},
]  # fmt: skip
PLANS = [
    {"id": "tokens", "type": "per_token", "rates": {"input": "6.00", "output": "30.00", "cache_read": "0.60", "cache_write": "7.50"}},
    {"id": "markup", "type": "per_token", "markup": "0.40", "minimum": "100.00"},
    {"id": "jobs", "type": "per_job", "prices": {"default": "0.50", "support_ticket": "1.20"}, "failed": "0.10", "platform_fee": "9.99"},
    {"id": "jobs-tiered", "type": "per_job", "tiers": {"mode": "graduated", "steps": [
        {"up_to": 1, "price": "1.00"}, {"up_to": 3, "price": "0.805"}, {"up_to": None, "price": "0.605"}]}},
    {"id": "tokens-tiered", "type": "per_token", "included": 1000, "tiers": {"mode": "volume", "steps": [
        {"up_to": 1000, "price": "9.999"}, {"up_to": None, "price": "0.003"}]}},
]  # fmt: skip
PLAN_IDS = [p["id"] for p in PLANS]
SCIENTIFIC = re.compile(r"^-?\d+(\.\d+)?[eE][+-]?\d+$")


# --- the generated history -----------------------------------------------------------------------


@dataclass
class History:
    tenant_name: str
    timezone: str
    currency: str
    clock: datetime  # now, for the first phase
    later: datetime  # now, for the second phase (late events, more months closed)
    customers: dict[str, str]  # customer → plan
    first: list[list[dict[str, Any]]]  # batches of the first phase
    second: list[list[dict[str, Any]]]  # batches of the second phase: late events and replays
    events: list[dict[str, Any]] = field(default_factory=list)  # every distinct event, in ingest order

    def __repr__(self) -> str:
        """Short: long texts cut, metadata counted (the blob of a failure reproduces it exactly)."""
        phases = [[[brief(e) for e in batch] for batch in batches] for batches in (self.first, self.second)]
        return (f"History({self.tenant_name!r}, {self.timezone}, {self.currency}, clock={self.clock.isoformat()}, "
                f"later={self.later.isoformat()}, customers={ {brief(c): p for c, p in self.customers.items()} }, "
                f"first={phases[0]}, second={phases[1]})")  # fmt: skip

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how Hypothesis prints a failing example
        printer.text(repr(self))


def brief(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= 24 else f"{value[:12]!r}…({len(value)})"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: (f"{len(v)} keys" if k == "metadata" else brief(v)) for k, v in value.items()}
    return value


def month_edges(moment: datetime, zone: str) -> list[datetime]:
    """The starts (UTC) of the tenant-local months around `moment`, and of its year."""
    period = period_of(moment, zone)
    edges = [period.previous().previous().start, period.previous().start, period.start, period.end,
             Period(date(period.first_day.year, 1, 1), zone).start]  # fmt: skip
    return edges


def event_times(zone: str, latest: datetime) -> st.SearchStrategy[datetime]:
    """Valid event times, biased to the edges: a tenant-local midnight that starts a month, the
    microsecond before it, the earliest and latest accepted instants."""
    edges = [*month_edges(latest - FUTURE, zone), *month_edges(EARLIEST, zone), Period(date(2000, 2, 1), zone).start]
    near_edge = st.tuples(st.sampled_from(edges), st.sampled_from([timedelta(0), -US, US, timedelta(hours=12)]))
    anywhere = st.integers(0, (latest - EARLIEST) // US).map(lambda n: EARLIEST + n * US)
    chosen = st.one_of(near_edge.map(sum_instants), st.sampled_from([EARLIEST, latest]), anywhere)
    return chosen.map(lambda t: min(max(t, EARLIEST), latest))


def sum_instants(pair: tuple[datetime, timedelta]) -> datetime:
    return pair[0] + pair[1]


def rfc3339(moment: datetime, offset_minutes: int) -> str:
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    text = local.isoformat()
    return text.replace("+00:00", "Z") if offset_minutes == 0 else text


@st.composite
def metadata(draw: st.DrawFn) -> dict[str, str] | None:
    kind = draw(st.sampled_from(["none", "small", "full"]))
    if kind == "none":
        return None
    if kind == "small":
        return draw(st.dictionaries(texts(128), texts(1024, min_size=0), max_size=3))
    # 64 keys of 128 characters and values of 1024, emoji among them: the limits exactly.
    fill = draw(st.sampled_from(["k", "🙂", "é"]))
    return {f"{i:02d}".ljust(128, fill): fill * 1024 for i in range(64)}


@st.composite
def usage_tokens(draw: st.DrawFn) -> dict[str, int]:
    input_tokens, output_tokens = draw(TOKENS), draw(TOKENS)
    split = draw(st.sampled_from(["none", "all_read", "all_write", "both_full", "any"]))
    read = write = 0
    if split == "all_read":
        read = input_tokens
    elif split == "all_write":
        write = input_tokens
    elif split == "both_full":
        read = input_tokens // 2
        write = input_tokens - read
    elif split == "any":
        read = draw(st.integers(0, input_tokens))
        write = draw(st.integers(0, input_tokens - read))
    reasoning = draw(st.sampled_from([0, output_tokens, output_tokens // 3]))
    tokens = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    for name, value in (("cache_read_tokens", read), ("cache_write_tokens", write), ("reasoning_tokens", reasoning)):
        if value or draw(st.booleans()):
            tokens[name] = value
    return tokens


@st.composite
def histories(draw: st.DrawFn) -> History:
    zone = draw(ZONES)
    clock = draw(st.sampled_from(CLOCKS))
    later = clock + draw(st.sampled_from([timedelta(0), timedelta(days=1), timedelta(days=35)]))
    tenant_name = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=0, max_size=60))
    customers = draw(unique_texts(draw(st.integers(1, 3)), 256))
    plans = {c: draw(st.sampled_from(PLAN_IDS)) for c in customers}
    tasks = draw(unique_texts(draw(st.integers(1, 4)), 256))
    times = event_times(zone, later + FUTURE)
    ids = itertools.count()
    events = []
    for task in tasks:
        customer = draw(st.sampled_from(customers))
        kinds = draw(st.lists(st.sampled_from(["usage", "usage", "task.started", "task.completed", "task.failed",
                                               "task.cancelled"]), min_size=1, max_size=5))  # fmt: skip
        for kind in kinds:
            event: dict[str, Any] = {
                "id": (f"{next(ids)}~" + draw(texts(128)))[:128],
                "type": kind,
                "time": draw(times),
                "customer": customer,
                "task": task,
            }
            if draw(st.booleans()):
                event["task_type"] = draw(st.one_of(st.just("support_ticket"), texts(128)))
            if kind == "usage":
                event["provider"], event["model"] = draw(st.sampled_from(MODELS))
                event.update(draw(usage_tokens()))
            if (meta := draw(metadata())) is not None:
                event["metadata"] = meta
            event["offset"] = draw(st.sampled_from(OFFSETS))
            events.append(event)
    # At most two events at the rate cap: three can cost more than 2**63 - 1 nano-units, which the
    # rollup refuses (tests/metering/test_summarize.py, TestSumsNeverWrapAround).
    for event in [e for e in events if e.get("model") == "acme-max"][2:]:
        event["model"] = "acme-large"
    order = draw(st.permutations(range(len(events))))
    late = draw(st.sets(st.sampled_from(range(len(events))))) if len(events) > 1 else set()
    must_wait = {i for i, e in enumerate(events) if e["time"] > clock + FUTURE}
    first = [events[i] for i in order if i not in late | must_wait]
    second = [events[i] for i in order if i in late | must_wait]
    replays = draw(st.lists(st.sampled_from(first), max_size=3)) if first else []
    return History(
        tenant_name=tenant_name,
        timezone=zone,
        currency=draw(st.sampled_from(["USD", "JPY", "KWD"])),
        clock=clock,
        later=later,
        customers=plans,
        first=split(draw, first),
        second=split(draw, second + replays),
        events=[*first, *second],
    )


def split(draw: st.DrawFn, events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The events in one or two batches (the order kept)."""
    if len(events) < 2:
        return [events] if events else []
    cut = draw(st.integers(1, len(events) - 1)) if draw(st.booleans()) else len(events)
    return [events[:cut], events[cut:]] if cut < len(events) else [events]


def wire(event: dict[str, Any]) -> dict[str, Any]:
    """The event as a client sends it."""
    sent = {k: v for k, v in event.items() if k != "offset"}
    sent["time"] = rfc3339(event["time"], event["offset"])
    return sent


# --- the reference: what the rollup must say, computed exactly from the generated events ----------


@dataclass
class Reference:
    tokens: dict[tuple[str, str], Counter[str]]  # (month, customer) → token sums
    outcomes: dict[tuple[str, str], Counter[str]]  # (month, customer) → completed/failed/cancelled
    costs: dict[tuple[str, str, str], Decimal]  # (month, provider, model) → exact provider cost
    months: set[str]


# The tenant's own prices (PRICES) per token: input (cache excluded), cache read, cache write, output.
RATES = {(p["provider"], p["model"]): {k: Decimal(p[k]) / 10**6 for k in ("input", "output", "cache_read", "cache_write")}
         for p in PRICES}  # fmt: skip


def exact_cost(event: dict[str, Any]) -> Decimal:
    rate = RATES[event["provider"], event["model"]]
    read, write = event.get("cache_read_tokens", 0), event.get("cache_write_tokens", 0)
    return (rate["input"] * (event["input_tokens"] - read - write) + rate["cache_read"] * read
            + rate["cache_write"] * write + rate["output"] * event["output_tokens"])  # fmt: skip


TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def reference(events: list[dict[str, Any]], zone: str) -> Reference:
    """Usage counts in the tenant-local month of each usage event; a task's outcome in the month of
    its last terminal event (by time, then by ingestion order); a task's customer is its events'."""
    tokens: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    outcomes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    costs: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    months = set()
    last_terminal: dict[str, tuple[datetime, int, dict[str, Any]]] = {}
    for order, event in enumerate(events):
        label = period_of(event["time"], zone).label
        months.add(label)
        if event["type"] == "usage":
            tokens[label, event["customer"]].update({f: event.get(f, 0) for f in TOKEN_FIELDS})
            tokens[label, event["customer"]]["usage_events"] += 1
            if (event["provider"], event["model"]) in RATES:
                costs[label, event["provider"], event["model"]] += exact_cost(event)
        elif event["type"] != "task.started":
            key = (event["time"], order)
            if event["task"] not in last_terminal or key > last_terminal[event["task"]][:2]:
                last_terminal[event["task"]] = (*key, event)
    for event in (e for _, _, e in last_terminal.values()):
        outcomes[period_of(event["time"], zone).label, event["customer"]][event["type"].removeprefix("task.")] += 1
    return Reference(tokens, outcomes, costs, months)


# --- running the path ---------------------------------------------------------------------------


class Caller:
    """The app in process, the tenant's keys, and the requests made so far."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}

    def get(self, url: str, **kwargs: Any) -> Any:
        response = self.client.get(url, headers=self.headers, follow_redirects=False, **kwargs)
        assert response.status_code < 500, (url, kwargs, response.status_code, response.text[:2000])
        check_no_scientific(response, url)
        return response


# Texts that name things, not numbers: an API key's prefix is random hex and can read as
# '759e69258975', and the history's ids are generated texts.
NAMES = frozenset({"prefix", "name", "id", "task", "customer", "actor", "agent", "provider", "model", "task_type"})


def check_no_scientific(response: Any, url: str) -> None:
    """No number is written as 1E+12, in JSON or CSV (names are texts, whatever they look like)."""
    kind = response.headers.get("content-type", "")
    if kind.startswith("application/json"):
        for key, value in walk(response.json()):
            assert not (key not in NAMES and isinstance(value, str) and SCIENTIFIC.match(value)), (url, key, value)
    elif kind.startswith("text/csv"):
        rows = csv.reader(io.StringIO(response.text))
        header = next(rows, [])
        for row in rows:
            for column, cell in zip(header, row, strict=False):
                assert column in NAMES or not SCIENTIFIC.match(cell), (url, column, cell)


def walk(value: Any, key: str | None = None) -> Iterator[tuple[str | None, Any]]:
    """Each leaf of a JSON document with the key it sits under."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from walk(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item, key)
    else:
        yield key, value


def ingest(api: Caller, batches: list[list[dict[str, Any]]]) -> int:
    accepted = 0
    for batch in batches:
        response = api.client.post("/v1/events", json=[wire(e) for e in batch], headers=api.headers)
        assert response.status_code == 200, response.text[:2000]
        body = response.json()
        assert body["rejected"] == [], body["rejected"][:3]
        assert body["conflicts"] == 0, body
        accepted += body["accepted"]
    return accepted


def close_ended_months(engine: Engine, tenant: Tenant, months: set[str], now: datetime) -> list[str]:
    closed = []
    for label in sorted(months):
        period = Period(date(int(label[:4]), int(label[5:]), 1), tenant.timezone)
        if period.end <= now:
            with unit_of_work(engine) as session:
                close_period(session, tenant, period, now=now)
            closed.append(label)
    return closed


def check_rollup(api: Caller, ref: Reference, tenant: Tenant, reports_dir: Path, engine: Engine, now: datetime) -> None:
    for label in sorted(ref.months):
        period = Period(date(int(label[:4]), int(label[5:]), 1), tenant.timezone)
        written = write_month(engine, tenant, period, reports_dir, now=now)
        files = {f["name"]: Path(f["path"]) for f in written["files"]}
        rows = {row["customer"]: row for row in read_csv(files["customers"])}
        by_tasks: dict[str, Counter[str]] = defaultdict(Counter)  # the tasks file sums to the customers file
        for task in read_csv(files["tasks"]):
            by_tasks[task["customer"]].update({f: int(task[f]) for f in TOKEN_FIELDS})
        want = {c: +Counter({f: tokens[f] for f in TOKEN_FIELDS}) for (m, c), tokens in ref.tokens.items() if m == label}
        assert {c: +t for c, t in by_tasks.items() if +t} == {c: t for c, t in want.items() if t}, label
        served = api.get(f"/v1/reports/{label}/customers.csv")
        assert served.status_code == 200
        assert {r["customer"]: r for r in csv.DictReader(io.StringIO(served.text))} == rows
        want_customers = {c for (m, c) in [*ref.tokens, *ref.outcomes] if m == label}
        assert want_customers <= set(rows), (label, want_customers - set(rows))
        for customer in want_customers:
            row, tokens, outcome = rows[customer], ref.tokens.get((label, customer), Counter()), ref.outcomes.get((label, customer), Counter())
            got = {f: int(row[f]) for f in TOKEN_FIELDS}
            assert got == {f: tokens[f] for f in TOKEN_FIELDS}, (label, customer)
            assert (int(row["tasks_completed"]), int(row["tasks_failed"]), int(row["tasks_cancelled"])) == (
                outcome["completed"], outcome["failed"], outcome["cancelled"]), (label, customer)  # fmt: skip
        # The API's usage of the month, by customer, from the same rollup.
        usage = api.get("/v1/usage", params={"from": str(period.first_day), "to": str(period.next_first_day), "group_by": "customer"})
        assert usage.status_code == 200, usage.text
        by_customer = {r["customer"]: r for r in usage.json()["rows"]}
        by_model = api.get("/v1/usage", params={"from": str(period.first_day), "to": str(period.next_first_day)})
        costs = {(r["provider"], r["model"]): Decimal(r["provider_cost"]) for r in by_model.json()["rows"]}
        for (month, provider, model), cost in ref.costs.items():
            if month == label:
                assert costs[provider, model] == quantize(cost, 6), (label, provider, model)
        for (month, customer), tokens in ref.tokens.items():
            if month == label:
                assert {f: by_customer[customer][f] for f in (*TOKEN_FIELDS, "usage_events")} == {
                    f: tokens[f] for f in (*TOKEN_FIELDS, "usage_events")}, (label, customer)  # fmt: skip


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def check_invoices(api: Caller, engine: Engine, tenant: Tenant, closed: set[str]) -> list[int]:
    for label in sorted(closed):
        assert invoice_problems(engine, tenant.id, label) == []
    with engine.connect() as connection:
        ids = [int(i) for i in connection.scalars(select(invoice_table.c.id).where(invoice_table.c.tenant_id == tenant.id))]
    places = minor_unit(tenant.currency)
    for invoice_id in ids:
        body = api.get(f"/v1/invoices/{invoice_id}").json()
        lines = [Decimal(line["amount"]) for line in body["lines"]]
        assert all(amount == amount.quantize(Decimal(1).scaleb(-places)) for amount in lines), body["lines"]
        assert Decimal(body["total"]) == sum(lines, Decimal(0)), body
    return ids


def every_get(api: Caller, app: Any, values: dict[str, list[Any]], queries: dict[str, list[Any]], *, prefix: str) -> int:
    """Every GET route under `prefix`: each existing id in its path parameters, each known value
    of its query parameters (rotated over the ids), once without the optional ones."""
    asked = 0
    for route in flat_routes(app):
        if "GET" not in route.methods or not route.path.startswith(prefix) or route.dependant is None:
            continue
        names = [p.name for p in route.dependant.path_params]
        combos = list(itertools.product(*[values["static" if route.path.endswith("/static/{name}") else n] for n in names]))
        params = [p for p in route.dependant.query_params if p.alias in queries or p.field_info.is_required()]
        for i in range(max(len(combos), *(len(queries[p.alias]) for p in params), 1)):
            url = route.path
            for name, value in zip(names, combos[i % len(combos)], strict=True):
                url = url.replace(f"{{{name}}}", quote(str(value), safe=""))
            chosen = {p.alias: queries[p.alias][i % len(queries[p.alias])] for p in params}
            required = {p.alias: chosen[p.alias] for p in params if p.field_info.is_required()}
            if i < len(combos) and required != chosen:  # once without the optional ones
                api.get(url, params=required)
                asked += 1
            api.get(url, params=chosen)
            asked += 1
    return asked


# --- the test -----------------------------------------------------------------------------------


@pytest.fixture
def tenants_made() -> Iterator[itertools.count[int]]:
    yield itertools.count()


# No shrinking: an example costs seconds, and a failure prints its whole history.
@hypothesis_settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                     phases=(Phase.explicit, Phase.reuse, Phase.generate), print_blob=True)
@given(history=histories())
def test_the_whole_path_never_fails_and_loses_nothing(history: History, engine: Engine, database_url: str,
                                                      tmp_path: Path, tenants_made: itertools.count[int]) -> None:  # fmt: skip
    note(repr(history))
    n = next(tenants_made)
    settings = Settings(env="test", database_url=database_url, secret_key=TEST_SECRET, scheduler_enabled=False,
                        reports_dir=tmp_path / "reports", rate_limit_per_minute=0)  # fmt: skip
    reports_dir = tmp_path / f"reports-{n}"
    app = create_app(settings, engine)
    with TestClient(app) as client:  # FastAPI reads route signatures on first use: before dates are faked
        for unknown in ("/-", "/dashboard/-", "/dashboard/-/-", "/v1/-"):
            assert client.get(unknown).status_code == 404
    with freeze_time(history.clock):
        with unit_of_work(engine) as session:
            tenant = create_tenant(session, f"{n}-{history.tenant_name}"[:64], timezone=history.timezone,
                                   currency=history.currency, now=history.clock)  # fmt: skip
            service.load_config(session, tenant, yaml.safe_dump({"prices": PRICES, "plans": PLANS}, allow_unicode=True), now=history.clock)
            key, _ = create_api_key(session, tenant, parse_scopes("ingest,read,admin"), secret=TEST_SECRET.encode(), now=history.clock)
        with TestClient(app, follow_redirects=False) as client:
            api = Caller(client, key)
            without_url = []
            for customer, plan in history.customers.items():
                response = client.put(f"/v1/customers/{quote(customer, safe='')}", json={"plan": plan}, headers=api.headers)
                assert response.status_code in (200, 307, 404), response.text
                if response.status_code != 200:  # a name with "/" has no URL (307: it ends with one)
                    without_url.append({"id": customer, "plan": plan})
            if without_url:
                with unit_of_work(engine) as session:
                    service.load_config(session, tenant, yaml.safe_dump({"customers": without_url}), now=history.clock)
            accepted = ingest(api, history.first)
            rollup_tenant(engine, tenant, now=history.clock)
            ref = reference(history.events, tenant.timezone)
            closed = set(close_ended_months(engine, tenant, ref.months, history.clock))

    with freeze_time(history.later):
        with TestClient(app, follow_redirects=False) as client:
            api = Caller(client, key)
            accepted += ingest(api, history.second)
            assert accepted == len(history.events) == event_count(engine, tenant.id)
            rollup_tenant(engine, tenant, now=history.later)
            closed |= set(close_ended_months(engine, tenant, ref.months, history.later))
            check_rollup(api, ref, tenant, reports_dir, engine, history.later)
            invoice_ids = check_invoices(api, engine, tenant, closed)

            months = sorted(ref.months | {period_of(history.later, tenant.timezone).label})
            values = {
                "customer": list(history.customers), "task": sorted({e["task"] for e in history.events}),
                "event_id": [e["id"] for e in history.events], "plan_id": PLAN_IDS, "invoice_id": invoice_ids or [1],
                "budget_id": ["no-such-budget"], "dispute_id": [1, 987654], "line_no": [1, 99],
                "month": months, "name": list(REPORTS), "static": ["dashboard.css", "dashboard.js", "favicon.svg"],
            }  # fmt: skip
            queries = {
                "month": months, "customer": list(history.customers), "group_by": ["model", "task_type", "day", "customer", "actor", "agent"],
                "at": [history.later.isoformat(), EARLIEST.isoformat()], "from": [str(date(1999, 12, 1))],
                "to": [str(date(2100, 1, 1))], "page": [1, 100_000], "status": ["open", "completed", "failed", "cancelled"],
            }  # fmt: skip
            assert every_get(api, app, values, queries, prefix="/v1") > 0
            assert sign_in(client, key).status_code == 303
            assert every_get(api, app, values, queries, prefix="/dashboard") > 0


# --- regressions found by the property test, each on its own --------------------------------------


class TestCostsPastInt64:
    """Three events of 10**12 input and output tokens at the rate cap cost 12e18 nano-units, more
    than int64 holds: the markup line and the comparison wrapped around to a negative cost
    (-6,446,744,073.71), and SQLite's `sum()` overflow answered 503 "retry later"."""

    CONFIG = {"prices": [{"provider": "acme-ai", "model": "acme-max", "input": "2000", "output": "2000"}],
              "plans": [{"id": "markup", "type": "per_token", "markup": "0.40"}],
              "customers": [{"id": "acme", "plan": "markup"}]}  # fmt: skip

    @pytest.fixture
    def heavy(self, api: Any, engine: Engine, tenant: Tenant) -> Any:
        with unit_of_work(engine) as session:
            service.load_config(session, tenant, yaml.safe_dump(self.CONFIG), now=datetime(2020, 1, 1, tzinfo=UTC))
        events = [{"id": f"e{i}", "type": "usage", "time": f"2026-11-0{i + 1}T10:00:00Z", "customer": "acme", "task": f"t{i}",
                   "provider": "acme-ai", "model": "acme-max", "input_tokens": MAX_TOKENS, "output_tokens": MAX_TOKENS}
                  for i in range(3)]  # fmt: skip
        assert api.post("/v1/events", json=events).json()["accepted"] == 3
        rollup_tenant(engine, tenant, now=datetime(2026, 11, 20, tzinfo=UTC))
        return api

    def test_invoices_and_comparisons_stay_exact(self, heavy: Any) -> None:
        draft = heavy.get("/v1/customers/acme/invoices/upcoming", params={"month": "2026-11"}).json()
        assert [(line["quantity"], line["amount"]) for line in draft["lines"]] == [("12000000000.000000000", "16800000000.00")]
        assert draft["total"] == "16800000000.00"
        [row] = heavy.get("/v1/customers/acme/compare", params={"month": "2026-11"}).json()["customers"]
        assert (row["provider_cost"], row["revenue"], row["margin"]) == ("12000000000.000000", "16800000000.00", "4800000000.000000")

    def test_a_sum_the_database_cannot_make_is_a_409_not_a_503(self, heavy: Any, engine: Engine) -> None:
        usage = heavy.get("/v1/usage", params={"from": "2026-11-01", "to": "2026-12-01"})
        report = heavy.get("/v1/reports/2026-11/customers.csv")
        if engine.dialect.name == "postgresql":  # sum(bigint) is numeric there: exact
            assert (usage.status_code, usage.json()["total"]["provider_cost"]) == (200, "12000000000.000000")
            assert report.status_code == 200 and ",12000000000.000000," in report.text
        else:  # SQLite sums in int64 and refuses past it
            for response in (usage, report):
                assert (response.status_code, response.json()["error"]) == (409, "usage_too_large")
                assert "Retry-After" not in response.headers
