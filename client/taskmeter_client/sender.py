"""The client's background sender: batches, retries, the spool, and what the server refused.

The agent's threads only append to a deque (atomic, never blocks); one daemon thread drains it
in batches of `batch_size`, woken when a batch is full or every `flush_interval` seconds.

A batch is POSTed to `/v1/events`. Network errors, 408, 429 and 5xx are retried with exponential
backoff and full jitter (at least the server's `Retry-After`). When the retries are spent the
batch is written to the spool and the sender counts the server as down: until a growing pause has
passed, new batches go straight to the spool. After it, the spool is sent first, then the queue.
A 413 splits the batch in two. Any other 4xx is never retried: the server's reasons are logged
and the events are appended to `rejected.jsonl` in the spool folder, as are the events a 200
answer lists as rejected.

Sending a batch twice is harmless (each event keeps its id, ingestion reports duplicates), so
whenever in doubt, the sender sends again rather than risk a loss.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import httpx
import orjson

from taskmeter_client.spool import Spool

log = logging.getLogger("taskmeter.client")

_SCAN_EVERY = 30.0  # seconds between looks for segments left by ended processes
_MAX_LOGGED = 5  # rejected events named in one log line


@dataclass
class SenderStats:
    """What the sender has done so far (read them for monitoring; tests do)."""

    requests: int = 0
    retries: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    spooled: int = 0


class FlushMarker:
    """Put in the queue by `flush()`: set once everything queued before it was handled."""

    __slots__ = ("done", "delivered")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.delivered = False


class _HttpOptions(TypedDict):
    """The keyword arguments of the sender's `httpx.Client`, kept to build it again after a fork."""

    base_url: str
    headers: dict[str, str]
    timeout: httpx.Timeout
    transport: httpx.BaseTransport | None


class Sender:
    _closing: bool  # set by `_start`, read by `_start` only in a forked child (after a first start)

    def __init__(
        self,
        url: str,
        api_key: str,
        spool: Spool,
        *,
        batch_size: int,
        flush_interval: float,
        max_queue: int,
        max_block_seconds: float,
        max_retries: int,
        backoff_base: float,
        backoff_max: float,
        timeout: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.queue: deque[Any] = deque()
        self.spool = spool
        self.stats = SenderStats()
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.max_block_seconds = max_block_seconds
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self._client_options: _HttpOptions = {
            "base_url": url.rstrip("/"),
            "headers": {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                        "User-Agent": "taskmeter-python"},
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            "transport": transport,
        }  # fmt: skip
        self._start()
        os.register_at_fork(after_in_child=functools.partial(_restart_in_child, weakref.ref(self)))

    def _start(self, *, forked: bool = False) -> None:
        """Start (or, in a forked child, restart) the thread with fresh state. A child neither
        sends its parent's queue (the parent does) nor writes to its parent's spool segment."""
        if forked:
            if self._closing:
                return
            self.queue = deque()
            self.spool = self.spool.forked()
        self._http = httpx.Client(**self._client_options)
        self._wake = threading.Event()  # a full batch, a flush, or close
        self._stop = threading.Event()  # close: cut pauses short
        self._room = threading.Condition()
        self._congested = False
        self._closing = False
        self._deadline = float("inf")
        self._down_until = 0.0
        self._down_streak = 0
        self._next_scan = 0.0  # look for left-over segments at once
        self._thread = threading.Thread(target=self._run, name="taskmeter-sender", daemon=True)
        self._thread.start()

    # --- the agent's side (any thread) ---------------------------------------------------------

    def put(self, event: dict[str, Any]) -> None:
        queue = self.queue
        if len(queue) >= self.max_queue and not self._wait_for_room():
            self.spool_events([event])
            return
        queue.append(event)
        if len(queue) >= self.batch_size:
            self._wake.set()

    def flush(self, timeout: float | None) -> bool:
        marker = FlushMarker()
        self.queue.append(marker)
        self._wake.set()
        if not self._thread.is_alive():
            return not self.spool.has_own()
        marker.done.wait(timeout)
        return marker.delivered

    def close(self, timeout: float) -> None:
        self._deadline = time.monotonic() + timeout
        self._closing = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout + 1.0)
        if self._thread.is_alive():  # stuck in a request past the deadline: keep what is queued
            log.warning("taskmeter client: the sender did not finish within %.1fs; spooling the rest", timeout)
            self._spool_rest()

    @property
    def closed(self) -> bool:
        return self._closing

    def _wait_for_room(self) -> bool:
        # Wait once per congestion: while the sender is stuck (retrying, a slow server), later
        # events go to the spool at once instead of each waiting `max_block_seconds`.
        if self.max_block_seconds <= 0 or self._closing or self._congested:
            return False
        self._wake.set()
        with self._room:
            room = self._room.wait_for(lambda: len(self.queue) < self.max_queue, self.max_block_seconds)
        self._congested = not room
        return room

    def spool_events(self, events: list[Any]) -> None:
        lines = [orjson.dumps(e) for e in events if isinstance(e, dict)]
        try:
            self.spool.append(lines)
        except OSError:
            log.exception("taskmeter client: could not write %d event(s) to the spool; they are lost", len(lines))
            return
        self.stats.spooled += len(lines)

    # --- the sender thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            closing = self._closing
            try:
                self._cycle()
            except Exception:  # never let the thread die: what is queued would never leave
                log.exception("taskmeter client: unexpected error in the sender")
            if closing:
                break
        self._spool_rest()
        self.spool.close()
        self._http.close()

    def _cycle(self) -> None:
        now = time.monotonic()
        if (self.spool.has_own() or now >= self._next_scan) and now >= self._down_until:
            self._next_scan = now + _SCAN_EVERY
            self._send_spool()
        queue = self.queue
        batch: list[dict[str, Any]] = []
        while queue:
            item = queue.popleft()
            if isinstance(item, FlushMarker):
                self._ship(batch)
                batch = []
                if self.spool.has_own() and time.monotonic() >= self._down_until:
                    self._send_spool()
                item.delivered = not self.spool.has_own()
                item.done.set()
                continue
            batch.append(item)
            if len(batch) >= self.batch_size:
                self._ship(batch)
                batch = []
        self._ship(batch)

    def _ship(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        self._congested = False
        with self._room:
            self._room.notify_all()
        lines = [orjson.dumps(e) for e in events]
        if time.monotonic() < self._down_until or not self._deliver(lines):
            self._spool_lines(lines)

    def _spool_lines(self, lines: list[bytes]) -> None:
        try:
            self.spool.append(lines)
            self.stats.spooled += len(lines)
        except OSError:
            log.exception("taskmeter client: could not write %d event(s) to the spool; they are lost", len(lines))

    def _spool_rest(self) -> None:
        rest = []
        while self.queue:
            item = self.queue.popleft()
            if isinstance(item, FlushMarker):
                item.done.set()
            else:
                rest.append(item)
        if rest:
            self.spool_events(rest)

    def _send_spool(self) -> None:
        segments = self.spool.claim()
        for n, segment in enumerate(segments):
            delivered, batch = True, []
            for line in segment.lines():
                batch.append(line)
                if len(batch) >= self.batch_size:
                    delivered, batch = self._deliver(batch), []
                    if not delivered:
                        break
            if delivered and batch:
                delivered = self._deliver(batch)
            if not delivered:
                for left in segments[n:]:
                    self.spool.keep(left)
                return
            self.spool.done(segment)
            log.info("taskmeter client: delivered the spooled events of %s", segment.path.name)

    def _deliver(self, lines: list[bytes]) -> bool:
        """POST one batch, retrying what may pass later. False: not delivered, keep the events."""
        body = b"[" + b",".join(lines) + b"]"
        for attempt in range(self.max_retries + 1):
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.stats.requests += 1
            try:
                response = self._http.post("/v1/events", content=body, timeout=min(self.timeout, remaining))
            except httpx.TransportError as exc:
                delay, reason = self._backoff(attempt), f"{exc.__class__.__name__}: {exc}"
                if self._closing and isinstance(exc, httpx.ConnectError):
                    attempt = self.max_retries  # nobody listens: exit now, the spool sends later
            else:
                status = response.status_code
                if status < 300:
                    self._accepted(response, lines)
                    return True
                if status == 413 and len(lines) > 1:
                    half = len(lines) // 2
                    return self._deliver(lines[:half]) and self._deliver(lines[half:])
                if status not in (408, 429) and status < 500:
                    self._refused(response, lines)
                    return True
                delay = max(self._backoff(attempt), _retry_after(response))
                reason = f"HTTP {status}"
            if attempt == self.max_retries:
                log.warning("taskmeter client: %d event(s) not delivered (%s); spooled for later", len(lines), reason)
                self._went_down()
                return False
            self.stats.retries += 1
            log.info("taskmeter client: %s; retry %d in %.2fs", reason, attempt + 1, delay)
            self._pause(delay)
        return False  # pragma: no cover - the loop returns

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))

    def _pause(self, delay: float) -> None:
        if self._closing:  # still retry while closing, but never past the deadline
            time.sleep(max(0.0, min(delay, self._deadline - time.monotonic())))
        else:
            self._stop.wait(delay)

    def _went_down(self) -> None:
        self._down_streak += 1
        pause = min(self.backoff_max, self.backoff_base * 2**self._down_streak)
        self._down_until = time.monotonic() + random.uniform(pause / 2, pause)

    def _accepted(self, response: httpx.Response, lines: list[bytes]) -> None:
        self._down_streak, self._down_until = 0, 0.0
        try:
            result = response.json()
            rejected = result.get("rejected") or []
            self.stats.accepted += int(result.get("accepted", 0))
            self.stats.duplicates += int(result.get("duplicates", 0))
        except (ValueError, AttributeError, TypeError):
            log.warning("taskmeter client: unexpected answer from the server: %.200s", response.text)
            return
        if not rejected:
            return
        self.stats.rejected += len(rejected)
        named = "; ".join(f"{r.get('id')}: {_reasons(r.get('errors'))}" for r in rejected[:_MAX_LOGGED])
        log.error("taskmeter rejected %d of %d event(s): %s", len(rejected), len(lines), named)
        self._dead_letter(
            [(lines[r["index"]], r.get("errors")) for r in rejected if 0 <= r.get("index", -1) < len(lines)],
            response.status_code,
        )

    def _refused(self, response: httpx.Response, lines: list[bytes]) -> None:
        self._down_streak, self._down_until = 0, 0.0
        self.stats.rejected += len(lines)
        try:
            body = response.json()
            reason = f"{body.get('error')}: {body.get('message')}"
            detail = body.get("detail")
        except (ValueError, AttributeError):
            reason, detail = response.text[:300], None
        log.error(
            "taskmeter refused a batch of %d event(s) (HTTP %d, not retried): %s%s",
            len(lines), response.status_code, reason, f" {orjson.dumps(detail).decode()[:500]}" if detail else "",
        )  # fmt: skip
        self._dead_letter([(line, reason) for line in lines], response.status_code)

    def _dead_letter(self, items: list[tuple[bytes, Any]], status: int) -> None:
        path = dead_letter_path(self.spool.folder)
        at = datetime.now(UTC).isoformat()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as out:
                for line, errors in items:
                    meta = orjson.dumps({"at": at, "status": status, "errors": errors})
                    out.write(meta[:-1] + b',"event":' + line + b"}\n")
        except OSError:
            log.exception("taskmeter client: could not write %s", path)


def _restart_in_child(ref: weakref.ref[Sender]) -> None:
    sender = ref()
    if sender is not None:
        sender._start(forked=True)


def _retry_after(response: httpx.Response, cap: float = 120.0) -> float:
    value = response.headers.get("retry-after")
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, min(seconds, cap))


def _reasons(errors: Any) -> str:
    if not isinstance(errors, list):
        return str(errors)
    return ", ".join(f"{e.get('field')} {e.get('message')}" for e in errors if isinstance(e, dict))


def dead_letter_path(folder: Path) -> Path:
    """Where the events the server refused are kept, one `{"at", "status", "errors", "event"}` a line."""
    return folder / "rejected.jsonl"
