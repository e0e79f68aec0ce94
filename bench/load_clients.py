"""The writing side of the load-with-faults run (`bench/load_faults.py`): the events it sends,
what it records, and the ingesters (overlapping batches, replays, conflicting and invalid events,
answers never read). The readers and the killer are in `bench/load_readers.py`.

Every event is a pure function of its number `k`, so a replay or an overlap sends the very same
content, and the checks can recompute what each task should add up to.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import orjson

from metering.core.periods import Period

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
