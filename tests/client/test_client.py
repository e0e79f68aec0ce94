"""The Python client against a real server on loopback: lifecycle, retries, the spool, exit."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from taskmeter_client import AsyncTaskmeterClient, TaskmeterClient
from taskmeter_client.sender import dead_letter_path

from api.app import create_app
from api.settings import Settings
from metering.core.tables import events
from metering.core.tenants import Tenant
from tests.conftest import LiveServer
from tests.support.servers import Fault, FaultInjector, ServerThread, free_port

ROOT = Path(__file__).parents[2]
OPENAI_CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
    "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
              "prompt_tokens_details": {"cached_tokens": 1024}, "completion_tokens_details": {"reasoning_tokens": 0}},
}  # fmt: skip
ANTHROPIC_MESSAGE = {
    "id": "msg_1", "type": "message", "model": "claude-sonnet-4-5",
    "usage": {"input_tokens": 12, "cache_read_input_tokens": 2150, "cache_creation_input_tokens": 248, "output_tokens": 500},
}  # fmt: skip


def stored(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(events).order_by(events.c.time_us, events.c.seq)))


def count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(events)).scalar_one())


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def key(tenant: Tenant, make_key: Callable[..., str]) -> str:
    return make_key(tenant, "ingest,read")


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_client(spool_dir: Path, key: str) -> Iterator[Callable[..., TaskmeterClient]]:
    """Clients with quick timings (tests wait for tenths of seconds, not seconds)."""
    made: list[TaskmeterClient] = []

    def make(url: str, api_key: str | None = None, **options: Any) -> TaskmeterClient:
        quick = {"spool_dir": spool_dir, "flush_interval": 0.05, "backoff_base": 0.01, "backoff_max": 0.1,
                 "max_retries": 3, "close_timeout": 10.0}  # fmt: skip
        client = TaskmeterClient(url, api_key or key, **(quick | options))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def faulty(settings: Settings, engine: Engine) -> Iterator[tuple[ServerThread, FaultInjector]]:
    injector = FaultInjector(create_app(settings, engine))
    with ServerThread(injector) as server:
        yield server, injector


def segments(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("*/seg-*.jsonl"))


class TestAttribution:
    def test_every_event_of_the_task_carries_its_actor_and_agent(self, live_server: LiveServer, make_client, engine: Engine) -> None:
        client = make_client(live_server.url)
        with client.task(customer="acme", task="ticket-7", actor="ben@acme.com", agent="ben/codex-3") as task:
            task.usage("openai", "gpt-4o", input_tokens=1000, output_tokens=200)
        with client.task(customer="acme", task="ticket-8", actor="ben@acme.com") as task:  # ben himself, no agent
            task.usage("openai", "gpt-4o", input_tokens=10, output_tokens=2)
        with client.task(customer="acme", task="ticket-9"):
            pass
        assert client.flush(timeout=10)
        who = {(r.task, r.type): (r.actor, r.agent) for r in stored(engine)}
        assert who == {
            ("ticket-7", "task.started"): ("ben@acme.com", "ben/codex-3"),
            ("ticket-7", "usage"): ("ben@acme.com", "ben/codex-3"),
            ("ticket-7", "task.completed"): ("ben@acme.com", "ben/codex-3"),
            ("ticket-8", "task.started"): ("ben@acme.com", None),
            ("ticket-8", "usage"): ("ben@acme.com", None),
            ("ticket-8", "task.completed"): ("ben@acme.com", None),
            ("ticket-9", "task.started"): (None, None),
            ("ticket-9", "task.completed"): (None, None),
        }

    @pytest.mark.parametrize("bad", ["", "x" * 257, "ben\n", "ben\x00", 42])
    def test_misuse_raises_at_once(self, make_client, bad: Any) -> None:
        client = make_client("http://127.0.0.1:9")
        for field in ("actor", "agent"):
            with pytest.raises(ValueError, match=field):
                client.task(customer="acme", **{field: bad})

    def test_the_async_client_takes_them_too(self, spool_dir: Path, key: str) -> None:
        client = AsyncTaskmeterClient("http://127.0.0.1:9", key, spool_dir=spool_dir)
        task = client.task(customer="acme", actor="ann@acme.com", agent="triage")
        assert (task.actor, task.agent) == ("ann@acme.com", "triage")
        client.sync.close(timeout=0.1)


class TestTaskLifecycle:
    def test_a_block_emits_started_usage_and_completed(self, live_server: LiveServer, make_client, engine: Engine) -> None:
        client = make_client(live_server.url, metadata={"agent": "support-bot"})
        with client.task(customer="acme", task_type="support_ticket", task="ticket-1") as task:
            task.usage("openai", "gpt-4o", input_tokens=1000, output_tokens=200, cache_read_tokens=800)
            assert task.record_response(OPENAI_CHAT) is not None
        assert client.flush(timeout=10)
        rows = stored(engine)
        assert [r.type for r in rows] == ["task.started", "usage", "usage", "task.completed"]
        assert {(r.customer, r.task) for r in rows} == {("acme", "ticket-1")}
        assert (rows[0].task_type, rows[-1].task_type) == ("support_ticket", "support_ticket")
        assert (rows[1].input_tokens, rows[1].output_tokens, rows[1].cache_read_tokens) == (1000, 200, 800)
        assert (rows[2].model, rows[2].input_tokens, rows[2].cache_read_tokens) == ("gpt-4o-2024-08-06", 1200, 1024)
        assert json.loads(rows[1].metadata) == {"agent": "support-bot"}

    def test_a_block_that_raises_emits_failed_and_the_exception_passes_untouched(
        self, live_server: LiveServer, make_client, engine: Engine
    ) -> None:
        client = make_client(live_server.url)
        error = KeyError("no such ticket")
        with pytest.raises(KeyError) as raised:
            with client.task(customer="acme", task="t-err") as task:
                task.usage("openai", "gpt-4o", input_tokens=10, output_tokens=1)
                raise error
        assert raised.value is error
        assert client.flush(timeout=10)
        rows = stored(engine)
        assert [r.type for r in rows] == ["task.started", "usage", "task.failed"]
        assert json.loads(rows[-1].metadata) == {"error": "KeyError"}

    def test_anthropic_input_gets_its_cache_back(self, live_server: LiveServer, make_client, engine: Engine) -> None:
        client = make_client(live_server.url)
        with client.task(customer="acme") as task:
            usage = task.record_response(ANTHROPIC_MESSAGE)
        assert usage is not None and usage.input_tokens == 12 + 2150 + 248
        assert client.flush(timeout=10)
        row = next(r for r in stored(engine) if r.type == "usage")
        assert (row.provider, row.input_tokens, row.cache_read_tokens, row.cache_write_tokens) == ("anthropic", 2410, 2150, 248)

    def test_sdk_like_objects_are_read_by_attribute(self, live_server: LiveServer, make_client, engine: Engine) -> None:
        class Obj:
            def __init__(self, **fields: Any) -> None:
                self.__dict__.update(fields)

        response = Obj(model="gpt-4o-mini", object="chat.completion",
                       usage=Obj(prompt_tokens=50, completion_tokens=5, prompt_tokens_details=None))  # fmt: skip
        client = make_client(live_server.url)
        with client.task(customer="acme") as task:
            task.record_response(response)
        assert client.flush(timeout=10)
        assert [(r.model, r.input_tokens) for r in stored(engine) if r.type == "usage"] == [("gpt-4o-mini", 50)]

    @pytest.mark.parametrize(
        ("tokens", "message"),
        [
            ({"input_tokens": -1}, "input_tokens must be between 0"),
            ({"output_tokens": True}, "output_tokens must be a non-negative integer"),
            ({"input_tokens": 1.5}, "input_tokens must be a non-negative integer"),
            ({"input_tokens": 10, "cache_read_tokens": 11}, "exceed input_tokens"),
            ({"output_tokens": 1, "reasoning_tokens": 2}, "exceeds output_tokens"),
        ],
    )
    def test_misuse_raises_at_once(self, tokens: dict[str, Any], message: str, live_server: LiveServer, make_client) -> None:
        client = make_client(live_server.url)
        task = client.task(customer="acme")
        with pytest.raises(ValueError, match=message):
            task.usage("openai", "gpt-4o", **tokens)
        assert len(client._sender.queue) == 0

    def test_misuse_of_names_and_ended_tasks(self, live_server: LiveServer, make_client) -> None:
        client = make_client(live_server.url)
        with pytest.raises(ValueError, match="customer"):
            client.task(customer="")
        with pytest.raises(ValueError, match="model"):
            client.task(customer="acme").usage("openai", "", input_tokens=1)
        with pytest.raises(ValueError, match="metadata"):
            client.task(customer="acme", metadata={"k": 1})  # type: ignore[dict-item]
        with client.task(customer="acme") as task:
            pass
        with pytest.raises(RuntimeError, match="has ended"):
            task.usage("openai", "gpt-4o", input_tokens=1)

    def test_a_response_without_usage_is_logged_not_raised(
        self, live_server: LiveServer, make_client, caplog: pytest.LogCaptureFixture
    ) -> None:
        client = make_client(live_server.url)
        with client.task(customer="acme") as task:
            assert task.record_response({"id": "chatcmpl-2", "model": "gpt-4o", "usage": None}) is None
        assert "no usage recorded" in caplog.text

    def test_asyncio_client(self, live_server: LiveServer, key: str, spool_dir: Path, engine: Engine) -> None:
        async def agent() -> None:
            async with AsyncTaskmeterClient(live_server.url, key, spool_dir=spool_dir, flush_interval=0.05) as client:
                async with client.task(customer="acme", task="async-ok") as task:
                    task.usage("openai", "gpt-4o", input_tokens=5, output_tokens=1)
                    await asyncio.sleep(0)
                with pytest.raises(asyncio.CancelledError):
                    async with client.task(customer="acme", task="async-cancelled"):
                        raise asyncio.CancelledError
                assert await client.flush(timeout=10)

        asyncio.run(agent())
        assert [(r.task, r.type) for r in stored(engine) if r.type != "task.started"] == [
            ("async-ok", "usage"), ("async-ok", "task.completed"), ("async-cancelled", "task.cancelled"),
        ]  # fmt: skip


class TestDelivery:
    def test_thousands_of_events_from_8_threads_arrive_exactly_once(
        self, live_server: LiveServer, make_client, engine: Engine
    ) -> None:
        client = make_client(live_server.url, batch_size=200)
        tasks, calls = 25, 20

        def agent(n: int) -> None:
            for t in range(tasks):
                with client.task(customer=f"cust-{n}", task=f"t-{n}-{t}") as task:
                    for _ in range(calls):
                        task.usage("openai", "gpt-4o", input_tokens=7, output_tokens=3)

        threads = [threading.Thread(target=agent, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert client.flush(timeout=30)
        expected = 8 * tasks * (calls + 2)
        with engine.connect() as connection:
            total, distinct, tokens = connection.execute(
                select(func.count(), func.count(events.c.event_id.distinct()), func.sum(events.c.input_tokens))
            ).one()
        assert (total, distinct, tokens) == (expected, expected, 8 * tasks * calls * 7)
        assert (client.stats.accepted, client.stats.duplicates, client.stats.rejected) == (expected, 0, 0)

    def test_server_down_then_up_spooled_events_arrive_once(
        self, settings: Settings, engine: Engine, make_client, spool_dir: Path
    ) -> None:
        port = free_port()
        client = make_client(f"http://127.0.0.1:{port}")
        for n in range(3):
            with client.task(customer="acme", task=f"down-{n}") as task:
                task.usage("openai", "gpt-4o", input_tokens=100, output_tokens=10)
        assert client.flush(timeout=10) is False  # nobody listens: all spooled
        assert segments(spool_dir) and client.stats.spooled == 9
        with client.task(customer="acme", task="while-down") as task:
            task.usage("openai", "gpt-4o", input_tokens=1, output_tokens=1)

        with ServerThread(create_app(settings, engine), port=port):
            eventually(lambda: client.flush(timeout=5))
            assert count(engine) == 12
            with client.task(customer="acme", task="after") as task:
                task.usage("openai", "gpt-4o", input_tokens=1, output_tokens=1)
            assert client.flush(timeout=10)
        rows = stored(engine)
        assert len(rows) == len({r.event_id for r in rows}) == 15
        assert segments(spool_dir) == []
        assert client.stats.duplicates == 0

    def test_the_spool_of_an_ended_client_is_sent_by_the_next(
        self, settings: Settings, engine: Engine, make_client, spool_dir: Path
    ) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        ended = make_client(url)
        with ended.task(customer="acme", task="left-behind") as task:
            task.usage("openai", "gpt-4o", input_tokens=3, output_tokens=1)
        ended.close()  # the server never came up: the events stay on disk
        assert len(segments(spool_dir)) == 1 and count(engine) == 0
        assert ended.flush() is False
        with ServerThread(create_app(settings, engine), port=int(url.rsplit(":", 1)[1])):
            restarted = make_client(url)
            eventually(lambda: count(engine) == 3)
            assert restarted.flush(timeout=10)
        assert [r.task for r in stored(engine)] == ["left-behind"] * 3
        assert segments(spool_dir) == []

    def test_5xx_is_retried_and_a_lost_answer_stores_nothing_twice(
        self, faulty: tuple[ServerThread, FaultInjector], make_client, engine: Engine
    ) -> None:
        server, injector = faulty
        injector.plan = [Fault(503), Fault(500, after=True), Fault(502)]
        client = make_client(server.url)
        with client.task(customer="acme", task="flaky") as task:
            task.usage("openai", "gpt-4o", input_tokens=5, output_tokens=1)
        assert client.flush(timeout=10)
        assert [(s.status, s.injected) for s in injector.seen] == [(503, True), (500, True), (502, True), (200, False)]
        assert count(engine) == 3
        assert (client.stats.retries, client.stats.accepted, client.stats.duplicates) == (3, 0, 3)

    def test_retry_after_is_respected(self, faulty: tuple[ServerThread, FaultInjector], make_client, engine: Engine) -> None:
        server, injector = faulty
        injector.plan = [Fault(429, headers={"Retry-After": "1"})]
        client = make_client(server.url)
        with client.task(customer="acme") as task:
            task.usage("openai", "gpt-4o", input_tokens=5, output_tokens=1)
        assert client.flush(timeout=10)
        assert injector.seen[1].at - injector.seen[0].at >= 0.95
        assert count(engine) == 3

    def test_4xx_is_not_retried_and_the_reasons_are_logged(
        self, faulty: tuple[ServerThread, FaultInjector], make_client, engine: Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        server, injector = faulty
        reason = {"error": "invalid", "message": "1 event(s) rejected", "detail": [{"field": "time", "message": "too odd"}]}
        injector.plan = [Fault(422, body=reason)]
        client = make_client(server.url)
        with caplog.at_level(logging.ERROR, logger="taskmeter.client"):
            with client.task(customer="acme", task="refused") as task:
                task.usage("openai", "gpt-4o", input_tokens=5, output_tokens=1)
            assert client.flush(timeout=10)
        assert [s.status for s in injector.seen] == [422]
        assert "HTTP 422, not retried" in caplog.text and "too odd" in caplog.text
        letters = dead_letter_path(client.spool_path).read_text().splitlines()
        assert [json.loads(line)["event"]["type"] for line in letters] == ["task.started", "usage", "task.completed"]
        assert count(engine) == 0
        with client.task(customer="acme", task="next") as task:  # later batches go through
            pass
        assert client.flush(timeout=10) and count(engine) == 2

    def test_a_wrong_key_is_401_once(
        self, faulty: tuple[ServerThread, FaultInjector], make_client, caplog: pytest.LogCaptureFixture
    ) -> None:
        server, injector = faulty
        client = make_client(server.url, api_key="tm_wrong_key")
        with client.task(customer="acme"):
            pass
        assert client.flush(timeout=10)
        assert [s.status for s in injector.seen] == [401]
        assert "unauthorized" in caplog.text

    def test_events_rejected_in_a_200_are_logged_and_kept(
        self, faulty: tuple[ServerThread, FaultInjector], make_client, caplog: pytest.LogCaptureFixture
    ) -> None:
        server, injector = faulty
        answer = {"accepted": 1, "duplicates": 0, "conflicts": 1, "rejected": [
            {"index": 1, "id": "x", "errors": [{"field": "id", "message": "conflict: other content"}]}]}  # fmt: skip
        injector.plan = [Fault(200, body=answer)]
        client = make_client(server.url)
        client.task(customer="acme").start().complete()
        assert client.flush(timeout=10)
        assert "rejected 1 of 2 event(s)" in caplog.text and "conflict: other content" in caplog.text
        [letter] = dead_letter_path(client.spool_path).read_text().splitlines()
        assert json.loads(letter)["event"]["type"] == "task.completed"

    def test_a_full_queue_spools_instead_of_blocking(self, live_server: LiveServer, make_client, engine: Engine) -> None:
        client = make_client(live_server.url, batch_size=10, max_queue=10, max_block_seconds=0, flush_interval=30)
        task = client.task(customer="acme", task="burst")
        slowest = 0.0
        for _ in range(2000):
            start = time.perf_counter()
            task.usage("openai", "gpt-4o", input_tokens=1, output_tokens=1)
            slowest = max(slowest, time.perf_counter() - start)
        assert slowest < 0.25
        assert client.flush(timeout=30)
        assert count(engine) == 2000 and client.stats.spooled > 0
        assert client.stats.accepted + client.stats.duplicates >= 2000

    def test_after_close_events_go_to_the_spool(self, live_server: LiveServer, make_client, engine: Engine) -> None:
        client = make_client(live_server.url)
        client.close()
        with client.task(customer="acme", task="late"):
            pass
        assert count(engine) == 0 and list(client.spool_path.glob("seg-*.jsonl"))
        make_client(live_server.url)  # the next client of the same server sends them
        eventually(lambda: count(engine) == 2)


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    from taskmeter_client import TaskmeterClient

    client = TaskmeterClient(sys.argv[1], sys.argv[2], spool_dir=sys.argv[3], flush_interval=600)
    with client.task(customer="acme", task="exiting") as task:
        task.usage("openai", "gpt-4o", input_tokens=42, output_tokens=4)
    print("recorded")
    """
)


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


class TestProcessExit:
    def test_exit_without_close_flushes(self, live_server: LiveServer, key: str, spool_dir: Path, engine: Engine) -> None:
        done = run_script(EXIT_SCRIPT, live_server.url, key, str(spool_dir))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "recorded"
        assert [(r.task, r.type) for r in stored(engine)] == [
            ("exiting", "task.started"), ("exiting", "usage"), ("exiting", "task.completed"),
        ]  # fmt: skip
        assert segments(spool_dir) == []

    def test_exit_with_the_server_down_is_quick_and_the_next_run_sends_the_spool(
        self, settings: Settings, engine: Engine, key: str, spool_dir: Path
    ) -> None:
        port = free_port()
        started = time.monotonic()
        done = run_script(EXIT_SCRIPT, f"http://127.0.0.1:{port}", key, str(spool_dir))
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 8  # no waiting on a server that refuses connections
        assert len(segments(spool_dir)) == 1 and count(engine) == 0
        with ServerThread(create_app(settings, engine), port=port) as server:
            assert run_script(EXIT_SCRIPT.replace('"exiting"', '"second-run"'), server.url, key, str(spool_dir)).returncode == 0
        assert Counter(r.task for r in stored(engine)) == {"exiting": 3, "second-run": 3}
        assert segments(spool_dir) == []

    def test_a_forked_child_sends_its_own_events_only(self, live_server: LiveServer, key: str, spool_dir: Path, engine: Engine) -> None:
        script = textwrap.dedent(
            """
            import os, sys
            from taskmeter_client import TaskmeterClient

            client = TaskmeterClient(sys.argv[1], sys.argv[2], spool_dir=sys.argv[3], flush_interval=600)
            with client.task(customer="acme", task="parent") as task:
                task.usage("openai", "gpt-4o", input_tokens=1, output_tokens=1)
            pid = os.fork()
            if pid == 0:
                with client.task(customer="acme", task="child"):
                    pass
                client.close()
                os._exit(0)
            os.waitpid(pid, 0)
            client.close()
            """
        )
        done = run_script(script, live_server.url, key, str(spool_dir))
        assert done.returncode == 0, done.stderr
        rows = stored(engine)
        assert Counter(r.task for r in rows) == {"parent": 3, "child": 2}
        assert len({r.event_id for r in rows}) == 5
