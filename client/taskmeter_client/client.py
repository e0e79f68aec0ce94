"""The Python client for agent runtimes: record task events without ever losing or doubling one.

    client = TaskmeterClient("https://taskmeter.example.com", api_key)
    with client.task(customer="acme", task_type="support_ticket", actor="ben@acme.com", agent="ben/codex-3") as task:
        response = llm.chat.completions.create(...)
        task.record_response(response)           # or task.usage("openai", "gpt-4o", input_tokens=...)
    # task.started, usage ..., then task.completed, or task.failed if the block raised

Recording is a few microseconds on the agent's thread: the event gets its id (stable across
retries, so the server stores it once) and joins an in-memory queue; a background thread sends
batches (see `taskmeter_client.sender`) and keeps what it cannot send in a local spool
(`taskmeter_client.spool`) until it can. When the queue is full the event waits at most
`max_block_seconds` for room
(default 0: not at all), then goes to the spool: recording never blocks for longer and
never drops an event. Nothing raises into the agent's code but misuse (a negative token count,
an empty customer, a usage after the task ended), which raises `ValueError` or `RuntimeError` at
once. `close()` (also at `with` exit and at interpreter exit) sends what is left.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import operator
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from taskmeter_client.extract import MAX_TOKENS, TokenUsage, UsageFieldError, extract_usage
from taskmeter_client.sender import Sender, SenderStats
from taskmeter_client.spool import Spool, default_spool_dir, spool_folder

__all__ = ["AsyncTaskmeterClient", "BudgetExceeded", "BudgetUnavailable", "Task", "TaskmeterClient"]

BUDGET_CHECKS = ("off", "warn", "enforce")
ON_UNAVAILABLE = ("allow", "deny")
_AUTHORIZE = "/v1/authorize"


class BudgetExceeded(RuntimeError):
    """`task(budget_check="enforce")` was denied by the server: an enforced budget whose scope
    the task falls under has reached its limit. `answer` is the server's `/v1/authorize` body."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(f"budget {answer.get('denied_by')!r} has reached its limit")
        self.answer = answer
        self.budget = answer.get("denied_by")


class BudgetUnavailable(BudgetExceeded):
    """`task(budget_check="enforce", on_unavailable="deny")` could not get an answer from
    `POST /v1/authorize` (server down, timeout, an error status, a malformed body): the work is
    refused as if a budget had denied it. `reason` says what went wrong."""

    def __init__(self, reason: str) -> None:
        RuntimeError.__init__(self, f"budgets could not be checked ({reason}); on_unavailable='deny' refuses the task")
        self.answer = {"allowed": False, "denied_by": None, "budgets": [], "unavailable": reason}
        self.budget = None
        self.reason = reason


log = logging.getLogger("taskmeter.client")

# The event schema's limits (the server's metering.events.schemas), checked here so misuse fails in the agent's code.
_TEXT_MAX = {"customer": 256, "task": 256, "task_type": 128, "provider": 64, "model": 128, "actor": 256, "agent": 256}
_CONTROL = frozenset(chr(code) for code in (*range(0x20), 0x7F))
_META_KEY_MAX, _META_VALUE_MAX, _META_ITEMS_MAX = 128, 1024, 64


class TaskmeterClient:
    """Sends task events to a taskmeter server; one per process is enough (it is thread-safe).

    `batch_size` events or `flush_interval` seconds, whichever comes first, make a request.
    `spool_dir` (default `~/.cache/taskmeter/spool`) keeps undelivered events across restarts.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        spool_dir: str | Path | None = None,
        max_block_seconds: float = 0.0,
        max_queue: int = 20_000,
        max_retries: int = 5,
        backoff_base: float = 0.25,
        backoff_max: float = 30.0,
        timeout: float = 10.0,
        close_timeout: float = 10.0,
        metadata: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        on_unavailable: str = "allow",
    ) -> None:
        _check_choice("on_unavailable", on_unavailable, ON_UNAVAILABLE)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key must be a non-empty string")
        if not 1 <= batch_size <= 10_000:
            raise ValueError(f"batch_size must be between 1 and 10,000, got {batch_size}")
        for name, value in (("flush_interval", flush_interval), ("timeout", timeout),
                            ("close_timeout", close_timeout), ("backoff_max", backoff_max)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")  # fmt: skip
        if max_block_seconds < 0 or max_retries < 0 or backoff_base < 0 or max_queue < batch_size:
            raise ValueError("max_block_seconds, max_retries and backoff_base must be >= 0, max_queue >= batch_size")
        self._metadata = _checked_metadata(metadata)
        self._close_timeout = close_timeout
        self._ids = itertools.count(1)
        self._id_prefix = f"tm-{uuid.uuid4().hex}-"
        self.spool_path = spool_folder(spool_dir or default_spool_dir(), url, api_key)
        self._sender = Sender(
            url, api_key.strip(), Spool(self.spool_path),
            batch_size=batch_size, flush_interval=flush_interval, max_queue=max_queue,
            max_block_seconds=max_block_seconds, max_retries=max_retries, backoff_base=backoff_base,
            backoff_max=backoff_max, timeout=timeout, transport=transport,
        )  # fmt: skip
        self._url, self._api_key, self._timeout, self._transport = url, api_key.strip(), timeout, transport
        self._auth_http: httpx.Client | None = None
        self.on_unavailable = on_unavailable
        atexit.register(self.close)

    def task(
        self,
        *,
        customer: str,
        task_type: str | None = None,
        task: str | None = None,
        metadata: Mapping[str, str] | None = None,
        actor: str | None = None,
        agent: str | None = None,
        budget_check: str = "off",
        on_unavailable: str | None = None,
    ) -> Task:
        """A task of `customer`; `with` it to emit task.started and its outcome. `task` names an
        existing task (default: a new uuid4). `actor` is the person or service account whose
        account the work runs under, `agent` which of their agents does it; every event of the
        task carries them.

        `budget_check` asks the server first (`POST /v1/authorize`, one round trip): `"warn"`
        logs a denial and goes on, `"enforce"` raises `BudgetExceeded` before the block runs
        (no event is recorded). When the server cannot answer, `on_unavailable` (default: the
        client's, `"allow"`) decides: `"allow"` lets the work go on (logged), `"deny"` raises
        `BudgetUnavailable` (a `BudgetExceeded`) under `"enforce"`."""
        unavailable = _budget_options(budget_check, on_unavailable, self.on_unavailable)
        new = Task(self, customer=customer, task_type=task_type, task=task, metadata=metadata, actor=actor, agent=agent)
        if budget_check != "off":
            failure: list[str] = []
            answer = self.authorize(customer=customer, actor=actor, agent=agent, task_type=task_type, _failure=failure)
            _judge(answer, failure, budget_check, unavailable, new.id, customer)
        return new

    def authorize(
        self, *, customer: str, actor: str | None = None, agent: str | None = None, task_type: str | None = None,
        _failure: list[str] | None = None,
    ) -> dict[str, Any] | None:
        """The server's answer to `POST /v1/authorize` for this scope, or None when it could not
        be asked (logged): `{"allowed", "denied_by", "budgets": [...]}`."""
        if self._auth_http is None:
            self._auth_http = httpx.Client(**self._auth_options(), transport=self._transport)
        try:
            return _answer(self._auth_http.post(_AUTHORIZE, json=_authorize_body(customer, actor, agent, task_type)))
        except (httpx.HTTPError, ValueError) as exc:
            _unanswered(exc, customer, _failure)
            return None

    def _auth_options(self) -> dict[str, Any]:
        """What the clients that ask `POST /v1/authorize` (this one's and the async one's) share."""
        return {"base_url": self._url, "headers": {"Authorization": f"Bearer {self._api_key}"}, "timeout": self._timeout}

    @property
    def stats(self) -> SenderStats:
        return self._sender.stats

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event recorded so far was sent or spooled; True when none is left in
        the spool. Blocks (up to `timeout`): call it where waiting is fine, not per event."""
        return self._sender.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (at most `timeout` seconds, default `close_timeout`), spool the rest.
        Events recorded after close go straight to the spool."""
        atexit.unregister(self.close)
        if self._auth_http is not None:
            self._auth_http.close()
        if not self._sender.closed:
            self._sender.close(self._close_timeout if timeout is None else timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _record(self, event: dict[str, Any]) -> None:
        event["id"] = f"{self._id_prefix}{next(self._ids)}"
        if self._sender.closed:
            self._sender.spool_events([event])  # after close, only the spool is left
        else:
            self._sender.put(event)


class Task:
    """One task (job) of one customer: usage records, then one outcome. Thread-safe to record on."""

    __slots__ = ("_client", "_base", "_metadata", "_ended", "_check", "id", "customer", "task_type", "actor", "agent")

    def __init__(
        self,
        client: TaskmeterClient,
        *,
        customer: str,
        task_type: str | None,
        task: str | None,
        metadata: Mapping[str, str] | None,
        actor: str | None = None,
        agent: str | None = None,
    ) -> None:
        _check_text("customer", customer)
        for name, value in (("actor", actor), ("agent", agent)):
            if value is not None:
                _check_text(name, value)
                if not _CONTROL.isdisjoint(value):
                    raise ValueError(f"{name} must not contain control characters, got {value!r:.80}")
        if task_type is not None:
            _check_text("task_type", task_type)
        if task is not None:
            _check_text("task", task)
        self._client = client
        self.id = task or uuid.uuid4().hex
        self.customer = customer
        self.task_type = task_type
        self._metadata = _checked_metadata(client._metadata | _checked_metadata(metadata))
        self.actor, self.agent = actor, agent
        self._base = {"customer": customer, "task": self.id}
        if actor is not None:
            self._base["actor"] = actor
        if agent is not None:
            self._base["agent"] = agent
        self._ended = False
        self._check: Callable[[], Awaitable[None]] | None = None  # the async client's budget check

    def start(self) -> Self:
        self._emit("task.started")
        return self

    def usage(
        self,
        provider: str,
        model: str,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        metadata: Mapping[str, str] | None = None,
        cache_write_1h_tokens: int = 0,
    ) -> None:
        """Record one model call. `input_tokens` includes cache reads and writes, `output_tokens`
        includes reasoning (OpenAI's convention; `record_response` converts Anthropic's);
        `cache_write_1h_tokens` are the 1-hour cache writes among `cache_write_tokens`."""
        if self._ended:
            raise RuntimeError(f"task {self.id!r} has ended; usage must be recorded before its outcome")
        if type(provider) is not str or not 0 < len(provider) <= 64 or type(model) is not str or not 0 < len(model) <= 128:
            _check_text("provider", provider)
            _check_text("model", model)
        counts: tuple[int, ...] = (input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens)
        if any(type(c) is not int or c < 0 or c > MAX_TOKENS for c in counts):
            counts = tuple(_count(name, c) for name, c in zip(_TOKEN_NAMES, counts, strict=True))
        inp, out, cache_read, cache_write, reasoning = counts
        one_hour = _count("cache_write_1h_tokens", cache_write_1h_tokens) if cache_write_1h_tokens else 0
        if cache_read + cache_write > inp or reasoning > out or one_hour > cache_write:
            # raises the precise UsageFieldError (a ValueError)
            TokenUsage(provider, model, inp, out, cache_read, cache_write, reasoning, cache_write_1h_tokens=one_hour)
        event = {
            "type": "usage", "time": datetime.now(UTC), **self._base, "provider": provider, "model": model,
            "input_tokens": inp, "output_tokens": out, "cache_read_tokens": cache_read,
            "cache_write_tokens": cache_write, "reasoning_tokens": reasoning,
        }  # fmt: skip
        if one_hour:
            event["cache_write_1h_tokens"] = one_hour
        metadata = self._metadata | _checked_metadata(metadata) if metadata else self._metadata
        if metadata:
            event["metadata"] = metadata
        self._client._record(event)

    def record_response(
        self,
        response: Any,
        *,
        provider: str | None = None,
        model: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> TokenUsage | None:
        """Record the usage of an OpenAI, Anthropic or Gemini response (SDK object or dict).

        A response whose usage cannot be read (a stream without usage, a malformed count) is
        logged and skipped: the provider's answer must not break the agent. Returns the usage.
        """
        try:
            usage = extract_usage(response, provider=provider, model=model)
        except UsageFieldError as exc:
            log.error("taskmeter: no usage recorded for task %s: %s", self.id, exc)
            return None
        self.usage(**usage.event_fields(), metadata=metadata)
        return usage

    def complete(self, metadata: Mapping[str, str] | None = None) -> None:
        self._end("task.completed", metadata)

    def fail(self, reason: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        self._end("task.failed", ({"error": reason} if reason else {}) | dict(metadata or {}))

    def cancel(self, metadata: Mapping[str, str] | None = None) -> None:
        self._end("task.cancelled", metadata)

    def __enter__(self) -> Self:
        if self._check is not None:
            raise RuntimeError("a task with an asynchronous budget check starts with `async with`")
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ended:
            return
        try:
            if exc is None:
                self.complete()
            elif isinstance(exc, Exception):
                self.fail(reason=type(exc).__name__)
            else:  # KeyboardInterrupt, asyncio.CancelledError, SystemExit
                self.cancel()
        except Exception:  # the agent's own exception must propagate untouched
            log.exception("taskmeter: could not record the outcome of task %s", self.id)

    async def __aenter__(self) -> Self:
        if self._check is not None:
            check, self._check = self._check, None
            await check()  # raises BudgetExceeded before the block runs
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _end(self, event_type: str, metadata: Mapping[str, str] | None) -> None:
        if self._ended:
            raise RuntimeError(f"task {self.id!r} has already ended")
        self._emit(event_type, metadata)
        self._ended = True

    def _emit(self, event_type: str, metadata: Mapping[str, str] | None = None) -> None:
        event: dict[str, Any] = {"type": event_type, "time": datetime.now(UTC), **self._base}
        if self.task_type is not None:
            event["task_type"] = self.task_type
        metadata = self._metadata | _checked_metadata(metadata) if metadata else self._metadata
        if metadata:
            event["metadata"] = metadata
        self._client._record(event)


class AsyncTaskmeterClient:
    """The asyncio face of `TaskmeterClient`: `async with client.task(...)`, `await aclose()`.

    Recording never awaits (it only queues); sending stays on the background thread, so it
    outlives the event loop and a forgotten `aclose()` is still flushed at interpreter exit.
    """

    def __init__(
        self, url: str, api_key: str, *, auth_transport: httpx.AsyncBaseTransport | None = None, **options: Any
    ) -> None:
        self.sync = TaskmeterClient(url, api_key, **options)
        self._auth_transport = auth_transport
        self._auth_http: httpx.AsyncClient | None = None

    def task(self, *, customer: str, task_type: str | None = None, task: str | None = None,
             metadata: Mapping[str, str] | None = None, actor: str | None = None, agent: str | None = None,
             budget_check: str = "off", on_unavailable: str | None = None) -> Task:  # fmt: skip
        """As `TaskmeterClient.task`; with `budget_check`, `async with` asks the server
        (`POST /v1/authorize`, awaited) before the block runs and raises `BudgetExceeded` there
        when enforced (a plain `with` of such a task is refused: it could not await the check)."""
        unavailable = _budget_options(budget_check, on_unavailable, self.sync.on_unavailable)
        new = self.sync.task(customer=customer, task_type=task_type, task=task, metadata=metadata, actor=actor, agent=agent)
        if budget_check != "off":

            async def check() -> None:
                failure: list[str] = []
                answer = await self.authorize(customer=customer, actor=actor, agent=agent, task_type=task_type, _failure=failure)
                _judge(answer, failure, budget_check, unavailable, new.id, customer)

            new._check = check
        return new

    async def authorize(
        self, *, customer: str, actor: str | None = None, agent: str | None = None, task_type: str | None = None,
        _failure: list[str] | None = None,
    ) -> dict[str, Any] | None:
        """As `TaskmeterClient.authorize`, awaited: the answer, or None when it could not be had (logged)."""
        if self._auth_http is None:
            self._auth_http = httpx.AsyncClient(**self.sync._auth_options(), transport=self._auth_transport)
        try:
            return _answer(await self._auth_http.post(_AUTHORIZE, json=_authorize_body(customer, actor, agent, task_type)))
        except (httpx.HTTPError, ValueError) as exc:
            _unanswered(exc, customer, _failure)
            return None

    @property
    def stats(self) -> SenderStats:
        return self.sync.stats

    async def flush(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.sync.flush, timeout)

    async def aclose(self, timeout: float | None = None) -> None:
        if self._auth_http is not None:
            await self._auth_http.aclose()
            self._auth_http = None
        await asyncio.to_thread(self.sync.close, timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _budget_options(budget_check: str, on_unavailable: str | None, default: str) -> str:
    """Check a task's budget options; returns its `on_unavailable` (the client's by default)."""
    _check_choice("budget_check", budget_check, BUDGET_CHECKS)
    unavailable = default if on_unavailable is None else on_unavailable
    _check_choice("on_unavailable", unavailable, ON_UNAVAILABLE)
    return unavailable


def _authorize_body(customer: str, actor: str | None, agent: str | None, task_type: str | None) -> dict[str, str]:
    return {k: v for k, v in (("customer", customer), ("actor", actor), ("agent", agent), ("task_type", task_type)) if v is not None}


def _answer(response: httpx.Response) -> dict[str, Any]:
    response.raise_for_status()
    answer = response.json()
    if not isinstance(answer, dict) or not isinstance(answer.get("allowed"), bool):
        raise ValueError("the answer has no boolean 'allowed'")
    return answer


def _unanswered(exc: Exception, customer: str, failure: list[str] | None) -> None:
    """`authorize` had no answer: logged, and the reason added to `failure` (for `_judge`)."""
    log.warning("taskmeter: could not check budgets for %s: %s", customer, exc)
    if failure is not None:
        failure.append(f"{type(exc).__name__}: {exc}"[:200])


def _judge(answer: dict[str, Any] | None, failure: list[str], check: str, on_unavailable: str, task: str, customer: str) -> None:
    """What a budget check decides before the block runs: raise, warn, or let it go on."""
    if answer is None:
        if check == "enforce" and on_unavailable == "deny":
            raise BudgetUnavailable(failure[0] if failure else "no answer")
        return  # logged by authorize: fail open
    if not answer["allowed"]:
        if check == "enforce":
            raise BudgetExceeded(answer)
        log.warning("taskmeter: budget %r has reached its limit (task %s of %s goes on)", answer.get("denied_by"), task, customer)


_TOKEN_NAMES = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    try:
        count = operator.index(value)  # ints, and numpy integers
    except TypeError:
        raise ValueError(f"{name} must be a non-negative integer, got {type(value).__name__} {value!r}") from None
    if not 0 <= count <= MAX_TOKENS:
        raise ValueError(f"{name} must be between 0 and {MAX_TOKENS:,}, got {count}")
    return count


def _check_text(name: str, value: Any) -> None:
    limit = _TEXT_MAX[name]
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"{name} must be a string of 1 to {limit} characters, got {value!r:.80}")


def _checked_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if not metadata:
        return {}
    if not isinstance(metadata, Mapping) or len(metadata) > _META_ITEMS_MAX:
        raise ValueError(f"metadata must be a mapping of at most {_META_ITEMS_MAX} strings")
    for key, value in metadata.items():
        if not isinstance(key, str) or not 0 < len(key) <= _META_KEY_MAX:
            raise ValueError(f"metadata keys must be strings of 1 to {_META_KEY_MAX} characters, got {key!r:.80}")
        if not isinstance(value, str) or len(value) > _META_VALUE_MAX:
            raise ValueError(f"metadata[{key!r}] must be a string of at most {_META_VALUE_MAX} characters")
    return dict(metadata)
