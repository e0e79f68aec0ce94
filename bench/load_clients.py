"""The clients of the load-with-faults run (`bench/load_faults.py`): the events they send, the
ingesters (overlapping batches, replays, conflicting and invalid events, answers never read),
the readers (usage API, CSVs, dashboard) and the killer (SIGKILL of the server, restart).

Every event is a pure function of its number `k`, so a replay or an overlap sends the very same
content, and the checks can recompute what each task should add up to.
"""

from __future__ import annotations

import csv
import io
import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import orjson

from metering.periods import Period
from tests.support.processes import ServeProcess

MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku-latest"), ("acme-ai", "acme-large"))
TASK_TYPES = ("support_ticket", "code_review", None)
OUTCOMES = ("task.completed",) * 16 + ("task.failed",) * 3 + ("task.cancelled",)
EVENTS_PER_TASK = 4  # started, two usage events, the outcome
RETRY_CAP = 0.5  # seconds: the load honours Retry-After only up to this, to keep pressing
ACK_DEADLINE = 120.0  # seconds after the stop by which every batch must have been acknowledged


class EventPool:
    """Event `k` of the run: task `k // 4` of customer `task % customers`, in `month`."""

    def __init__(self, month: Period, customers: int) -> None:
        self.month = month
        self.customers = customers
        self.span = int((month.end - month.start).total_seconds()) - 3600

    def task_of(self, k: int) -> int:
        return k // EVENTS_PER_TASK

    def event(self, k: int) -> dict[str, Any]:
        task_no, j = divmod(k, EVENTS_PER_TASK)
        rng = random.Random(task_no)
        start = self.month.start + timedelta(seconds=rng.randrange(self.span))
        event: dict[str, Any] = {
            "id": f"ld-{k:08d}",
            "time": (start + timedelta(minutes=j)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "customer": f"cust-{task_no % self.customers:03d}",
            "task": f"task-{task_no:07d}",
        }
        draws = [(rng.randrange(200, 20_000), rng.randrange(50), rng.randrange(10, 3000)) for _ in range(2)]
        outcome = OUTCOMES[rng.randrange(len(OUTCOMES))]
        if j == 0:
            event["type"] = "task.started"
            if (task_type := TASK_TYPES[task_no % len(TASK_TYPES)]) is not None:
                event["task_type"] = task_type
        elif j == EVENTS_PER_TASK - 1:
            event["type"] = outcome
        else:
            provider, model = MODELS[task_no % len(MODELS)]
            tokens, cached_pct, output = draws[j - 1]
            cache_read = tokens * cached_pct // 100
            event.update(
                type="usage", provider=provider, model=model, input_tokens=tokens, output_tokens=output,
                cache_read_tokens=cache_read, cache_write_tokens=(tokens - cache_read) // 10,
                reasoning_tokens=output // 3 if model == "gpt-4o-mini" else 0,
            )  # fmt: skip
        return event

    @staticmethod
    def is_usage(k: int) -> bool:
        return k % EVENTS_PER_TASK in (1, 2)

    def conflicting(self, k: int) -> dict[str, Any]:
        """Event `k` (a usage event) with other content under the same id."""
        event = self.event(k)
        event["output_tokens"] += 1
        return event

    @staticmethod
    def invalid(name: str, n: int) -> dict[str, Any]:
        """An event the server must reject, naming the field: alternately a broken rule and a
        missing field."""
        if n % 2:
            return {"id": name, "type": "usage", "time": "2026-01-01T00:00:00Z", "customer": "cust-000", "task": "t",
                    "provider": "openai", "model": "gpt-4o", "input_tokens": 5, "output_tokens": 1, "cache_read_tokens": 9}  # fmt: skip
        return {"id": name, "type": "task.started", "time": "2026-01-01T00:00:00Z", "task": "t"}


# --- what the run records -------------------------------------------------------------------------


@dataclass
class Recorder:
    """Latencies and statuses per endpoint, counters, and problems (any broken expectation)."""

    latencies: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, endpoint: str, seconds: float, status: str) -> None:
        with self.lock:
            self.statuses[endpoint][status] += 1
            if status.isdigit():
                self.latencies[endpoint].append(seconds)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.problems) < 200:
                self.problems.append(text)


@dataclass
class Shared:
    """What the ingesters share: the frontier of new event numbers, the ids sent, and the usage
    events acknowledged (for conflicts)."""

    batch: int
    overlap: int
    frontier: int = 0
    sent: set[int] = field(default_factory=set)
    acked_usage: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_window(self) -> range:
        """The next batch of event numbers; it overlaps the previous window by `overlap`."""
        with self.lock:
            start = max(0, self.frontier - self.overlap)
            self.frontier = start + self.batch
            window = range(start, start + self.batch)
            self.sent.update(window)
            return window

    def acknowledged(self, numbers: list[int]) -> None:
        usage = [k for k in numbers if EventPool.is_usage(k)]
        with self.lock:
            self.acked_usage.extend(usage[:: max(1, len(usage) // 8)])

    def acked_sample(self, rng: random.Random, exclude: range) -> int | None:
        with self.lock:
            for _ in range(5):
                if not self.acked_usage:
                    return None
                k = self.acked_usage[rng.randrange(len(self.acked_usage))]
                if k not in exclude:
                    return k
        return None


@dataclass
class Batch:
    kind: str  # "window" or "replay"
    events: list[dict[str, Any]]
    numbers: list[int]  # the window's event numbers (empty for a replay)
    conflicts: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)
    body: bytes = b""


# --- ingesters ------------------------------------------------------------------------------------


class Ingester(threading.Thread):
    """Sends batches until `stop`, then finishes the batch in hand: every batch is retried (same
    body) until the server acknowledges it, whatever happens in between."""

    def __init__(
        self, number: int, url: str, key: str, pool: EventPool, shared: Shared, recorder: Recorder,
        stop: threading.Event, *, replay_rate: float, invalid_rate: float, conflict_rate: float, abort_rate: float,
    ) -> None:  # fmt: skip
        super().__init__(name=f"ingester-{number}", daemon=True)
        self.number, self.url, self.key = number, url, key
        self.pool, self.shared, self.recorder, self.stop = pool, shared, recorder, stop
        self.replay_rate, self.invalid_rate = replay_rate, invalid_rate
        self.conflict_rate, self.abort_rate = conflict_rate, abort_rate
        self.rng = random.Random(1000 + number)
        self.done: list[Batch] = []  # acknowledged batches, for replays
        self.sequence = 0

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as http:
            while not self.stop.is_set():
                batch = self.next_batch()
                if self.deliver(http, batch):
                    self.done = (self.done + [batch])[-20:]

    def next_batch(self) -> Batch:
        rng = self.rng
        if self.done and rng.random() < self.replay_rate:
            previous = self.done[rng.randrange(len(self.done))]
            self.recorder.count("replays")
            return Batch("replay", previous.events, [], previous.conflicts, previous.invalid, previous.body)
        window = self.shared.next_window()
        batch = Batch("window", [self.pool.event(k) for k in window], list(window))
        if rng.random() < self.conflict_rate and (k := self.shared.acked_sample(rng, window)) is not None:
            variant = self.pool.conflicting(k)
            batch.events.insert(rng.randrange(len(batch.events)), variant)
            batch.conflicts.add(variant["id"])
            self.recorder.count("conflicts_sent")
        if rng.random() < self.invalid_rate:
            self.sequence += 1
            bad = self.pool.invalid(f"bad-{self.number}-{self.sequence}", self.sequence)
            batch.events.insert(rng.randrange(len(batch.events)), bad)
            batch.invalid.add(bad["id"])
            self.recorder.count("invalid_sent")
        batch.body = orjson.dumps(batch.events)
        return batch

    def deliver(self, http: httpx.Client, batch: Batch) -> bool:
        if self.rng.random() < self.abort_rate:
            # The client gives up before the answer: the server may or may not have stored the
            # batch, and the retry below must be exactly-once either way.
            try:
                http.post("/v1/events", content=batch.body, timeout=httpx.Timeout(10.0, read=0.001))
            except httpx.HTTPError:
                pass
            self.recorder.count("answers_never_read")
        deadline: float | None = None
        attempt = 0
        while True:
            if self.stop.is_set() and deadline is None:
                deadline = time.monotonic() + ACK_DEADLINE
            if deadline is not None and time.monotonic() > deadline:
                self.recorder.problem(f"{self.name}: a {batch.kind} batch was never acknowledged")
                return False
            started = time.perf_counter()
            try:
                response = http.post("/v1/events", content=batch.body)
            except httpx.TransportError as exc:
                self.recorder.request("POST /v1/events", time.perf_counter() - started, type(exc).__name__)
                attempt += 1
                time.sleep(min(RETRY_CAP, 0.02 * 2**attempt))
                continue
            status = response.status_code
            self.recorder.request("POST /v1/events", time.perf_counter() - started, str(status))
            if status == 200:
                self.check_answer(batch, response.json())
                return True
            if status in (429, 503):
                if "retry-after" not in response.headers:
                    self.recorder.problem(f"{self.name}: {status} without Retry-After")
                attempt += 1
                time.sleep(min(RETRY_CAP, float(response.headers.get("retry-after", 1))))
                continue
            self.recorder.problem(f"{self.name}: POST /v1/events answered {status}: {response.text[:300]}")
            if status >= 500:
                attempt += 1
                time.sleep(min(RETRY_CAP, 0.02 * 2**attempt))
                continue
            return False

    def check_answer(self, batch: Batch, answer: dict[str, Any]) -> None:
        rec = self.recorder
        rejected = {r["id"]: r for r in answer["rejected"]}
        rec.count("batches")
        rec.count("events_in_batches", len(batch.events))
        rec.count("accepted", answer["accepted"])
        rec.count("duplicates", answer["duplicates"])
        rec.count("conflicts_reported", answer["conflicts"])
        if answer["accepted"] + answer["duplicates"] + len(answer["rejected"]) != len(batch.events):
            rec.problem(f"{self.name}: answer does not account for {len(batch.events)} events: {answer}")
        if batch.kind == "replay" and answer["accepted"] != 0:
            rec.problem(f"{self.name}: a replay of an acknowledged batch stored {answer['accepted']} new event(s)")
        if answer["conflicts"] != len(batch.conflicts):
            rec.problem(f"{self.name}: {len(batch.conflicts)} conflict(s) sent, {answer['conflicts']} reported")
        for event_id in batch.conflicts:
            reasons = " ".join(e["message"] for e in rejected.get(event_id, {}).get("errors", []))
            if "conflict" not in reasons:
                rec.problem(f"{self.name}: conflicting {event_id} not reported as a conflict: {reasons!r}")
        for event_id in batch.invalid:
            errors = rejected.get(event_id, {}).get("errors", [])
            if not errors or not all(e.get("field") and e.get("message") for e in errors):
                rec.problem(f"{self.name}: invalid {event_id} not rejected with field and reason: {errors}")
            else:
                rec.count("invalid_rejected")
        unexpected = set(rejected) - batch.conflicts - batch.invalid
        if unexpected:
            rec.problem(f"{self.name}: valid events rejected: {sorted(unexpected)[:5]}")
        if batch.kind == "window":
            self.shared.acknowledged(batch.numbers)


# --- readers --------------------------------------------------------------------------------------

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Reader(threading.Thread):
    """Reads what finance and customers read while the load runs: the usage API, a customer's
    running month and draft invoice, the month's CSV, the dashboard. Any 5xx but 503 is a problem;
    the month's usage total must never go down."""

    def __init__(
        self, number: int, url: str, key: str, month: Period, customers: int, recorder: Recorder, stop: threading.Event
    ) -> None:
        super().__init__(name=f"reader-{number}", daemon=True)
        self.number = number
        self.url, self.key, self.month, self.recorder, self.stop = url, key, month, recorder, stop
        self.customers = [f"cust-{n:03d}" for n in range(customers)]
        self.rng = random.Random(2000 + number)
        self.last_total = 0
        self.with_usage: set[str] = set()  # customers seen with usage: from then on never 404

    def endpoints(self) -> list[tuple[str, Callable[[], str], Callable[[httpx.Response], None]]]:
        m, rng = self.month, self.rng
        span = f"from={m.first_day}&to={m.next_first_day}"
        at = (m.start + timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return [
            ("GET /v1/usage", lambda: f"/v1/usage?{span}&group_by={rng.choice(['model', 'customer', 'day', 'task_type'])}",
             self.check_total),
            ("GET /v1/customers/{id}/usage/current", lambda: f"/v1/customers/{rng.choice(self.customers)}/usage/current?at={at}",
             lambda r: None),
            ("GET /v1/customers/{id}/invoices/upcoming",
             lambda: f"/v1/customers/{rng.choice(self.customers)}/invoices/upcoming?month={m.label}", self.check_draft),
            ("GET /v1/reports/{month}/customers.csv", lambda: f"/v1/reports/{m.label}/customers.csv", self.check_csv),
            ("GET /dashboard", lambda: f"/dashboard?month={m.label}", self.check_html),
            ("GET /dashboard?customer", lambda: f"/dashboard?month={m.label}&customer={rng.choice(self.customers)}",
             self.check_html),
        ]  # fmt: skip

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60) as http:
            endpoints = self.endpoints()
            dashboard: bool | None = None  # unknown until the sign-in page answers
            turn = self.number * 3  # readers start on different endpoints: all are read early
            while not self.stop.is_set():
                name, path, check = endpoints[turn % len(endpoints)]
                if name.startswith("GET /dashboard") and not dashboard:
                    if dashboard is None:
                        dashboard = self.sign_in(http)
                    if not dashboard:
                        turn += 1
                        continue
                turn += 1
                started = time.perf_counter()
                try:
                    response = http.get(path())
                except httpx.TransportError as exc:
                    self.recorder.request(name, time.perf_counter() - started, type(exc).__name__)
                    time.sleep(0.1)
                    continue
                self.recorder.request(name, time.perf_counter() - started, str(response.status_code))
                if response.status_code == 200:
                    try:
                        check(response)
                    except Exception as exc:  # noqa: BLE001 - any surprise in an answer is a finding
                        self.recorder.problem(f"{self.name}: {name}: {exc!r}")
                elif response.status_code in (429, 503):
                    if "retry-after" not in response.headers:
                        self.recorder.problem(f"{self.name}: {name} answered {response.status_code} without Retry-After")
                    time.sleep(0.1)
                elif response.status_code == 404 and "/customers/" in response.url.path and not self.knows(response):
                    pass  # a customer without usage yet: the usage API does not know it
                else:
                    self.recorder.problem(f"{self.name}: {name} answered {response.status_code}: {response.text[:300]}")

    def sign_in(self, http: httpx.Client) -> bool | None:
        """Signs in to the dashboard: True; None to try again later (the server is down); False
        when this server has no dashboard (its reads are then skipped, and counted)."""
        try:
            page = http.get("/dashboard/sign-in")
            match = _CSRF.search(page.text)
            if page.status_code == 404:
                self.recorder.count("dashboard_absent")
                return False
            if page.status_code != 200 or match is None:
                return None
            answer = http.post(
                "/dashboard/sign-in", data={"csrf": match.group(1), "key": self.key, "next": "/dashboard"}, follow_redirects=False
            )
        except httpx.TransportError:
            time.sleep(0.1)
            return None
        if answer.status_code != 303:
            self.recorder.problem(f"{self.name}: dashboard sign-in answered {answer.status_code}")
            return False
        return True

    def knows(self, response: httpx.Response) -> bool:
        return response.url.path.split("/")[3] in self.with_usage

    def check_total(self, response: httpx.Response) -> None:
        report = response.json()
        if report["group_by"] == "customer":
            self.with_usage.update(row["customer"] for row in report["rows"] if row["usage_events"])
        total = report["total"]["usage_events"]
        if total < self.last_total:
            raise AssertionError(f"the month's usage went down: {self.last_total} -> {total}")
        self.last_total = total

    def check_draft(self, response: httpx.Response) -> None:
        draft = response.json()
        lines = sum(_decimal(line["amount"]) for line in draft["lines"])
        if lines != _decimal(draft["total"]):
            raise AssertionError(f"draft total {draft['total']} != sum of its lines {lines}")

    def check_csv(self, response: httpx.Response) -> None:
        rows = list(csv.reader(io.StringIO(response.text)))
        if not rows or rows[0][:2] != ["customer", "plan"]:
            raise AssertionError(f"unexpected CSV header: {rows[:1]}")

    def check_html(self, response: httpx.Response) -> None:
        if not response.headers.get("content-type", "").startswith("text/html"):
            raise AssertionError(f"dashboard answered {response.headers.get('content-type')}")


def _decimal(text: Any) -> Any:
    from decimal import Decimal

    return Decimal(str(text))


class Killer(threading.Thread):
    """SIGKILL the server at every multiple of `every` seconds and start it again on its port."""

    def __init__(self, server: ServeProcess, every: float, recorder: Recorder, stop: threading.Event) -> None:
        super().__init__(name="killer", daemon=True)
        self.server, self.every, self.recorder, self.stop = server, every, recorder, stop
        self.downtime = 0.0

    def run(self) -> None:
        begin, kills = time.monotonic(), 0
        while not self.stop.wait(max(0.0, begin + (kills + 1) * self.every - time.monotonic())):
            kills += 1
            started = time.monotonic()
            self.server.kill9()
            self.recorder.count("kills")
            time.sleep(0.3)
            try:
                self.server.start()
            except RuntimeError as exc:
                self.recorder.problem(f"the server did not come back after SIGKILL: {exc}")
                return
            self.downtime += time.monotonic() - started
