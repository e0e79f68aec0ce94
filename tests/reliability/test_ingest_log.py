"""Ingestion through the NATS JetStream log, with processes: loaders killed with -9 mid-run and
restarted lose and duplicate nothing; PostgreSQL stopped under load does not stop
`POST /v1/events` (202 throughout), and once it is back the loaders catch up. Each test has a
stream of its own (tests.support.nats)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from metering.core.db import unit_of_work, upgrade_schema
from metering.core.tables import events, load_verdicts, log_quarantine
from metering.core.tenants import Tenant, create_api_key, create_tenant
from tests.conftest import TEST_SECRET
from tests.reliability.test_crashes import figures, private_engine, private_postgres
from tests.support.nats import NATS_URL, log_stream
from tests.support.processes import PrivatePostgres, ServeProcess, kill9, start_cli, taskmeter_env

__all__ = ["log_stream", "private_engine", "private_postgres"]  # fixtures

pytestmark = pytest.mark.slow

NOW = datetime.now(UTC)


def log_settings(log_stream: tuple[str, str]) -> dict[str, Any]:
    stream, subject = log_stream
    # A killed loader's messages go to another after 3 s (30 s by default).
    return {
        "ingest_log": NATS_URL,
        "ingest_log_stream": stream,
        "ingest_log_subject": subject,
        "ingest_log_ack_wait_seconds": 3,
    }


def batch_of(prefix: str, size: int) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i}", "type": "usage", "time": NOW.isoformat(), "customer": "c", "task": prefix,
         "provider": "openai", "model": "gpt-4o", "input_tokens": 100, "output_tokens": 10}
        for i in range(size)
    ]  # fmt: skip


def stored_ids(engine: Engine, tenant_id: int) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.execute(select(events.c.event_id).where(events.c.tenant_id == tenant_id)).scalars()
        )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_loader_outlives_its_test() -> Iterator[None]:
    yield
    while _STARTED:
        kill9(_STARTED.pop())


def loaders(env: dict[str, str], count: int, tmp_path: Path, *extra: str) -> list[subprocess.Popen[bytes]]:
    started = []
    for n in range(count):
        with (tmp_path / f"loader-{time.monotonic_ns()}-{n}.log").open("ab") as log:
            started.append(start_cli(["loader", "--batch", "200", *extra], env, log))
    _STARTED.extend(started)
    return started


class TestLoadersKilled:
    def test_kill_9_mid_run_then_restart_stores_every_distinct_event_once(
        self, log_stream: tuple[str, str], process_env: Callable[..., dict[str, str]], engine: Engine,
        tenant: Tenant, make_key: Callable[..., str], tmp_path: Path,
    ) -> None:  # fmt: skip
        env = process_env(**log_settings(log_stream))
        sent: set[str] = set()
        with ServeProcess(env, tmp_path / "serve.log") as server:
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {make_key(tenant)}"}, timeout=30
            ) as http:
                running = loaders(env, 2, tmp_path)

                def post(batch: list[dict[str, Any]]) -> None:
                    answer = http.post("/v1/events", json=batch)
                    assert answer.status_code == 202, answer.text
                    sent.update(e["id"] for e in batch)

                for n in range(40):
                    post(batch_of(f"k{n}", 250))
                    if n % 10 == 9:
                        post(batch_of(f"k{n - 3}", 250))  # a client's retry of an earlier batch
                    if n in (15, 30):  # killed wherever they are: fetching, storing, committing, acking
                        wait_for(
                            lambda: bool(stored_ids(engine, tenant.id)), 60, "the loaders stored nothing"
                        )
                        for process in running:
                            kill9(process)
                        running = loaders(env, 2, tmp_path)
                time.sleep(0.3)
                for process in running:
                    kill9(process)
                assert len(stored_ids(engine, tenant.id)) < len(sent)  # the kill came before the end
                finishing = loaders(env, 2, tmp_path, "--exit-when-idle", "3")
                for process in finishing:
                    assert process.wait(180) == 0
        ids = stored_ids(engine, tenant.id)
        assert len(ids) == len(set(ids)) and set(ids) == sent
        with engine.connect() as connection:
            # A redelivery of a message stored before the kill is recognized as its own, not a duplicate.
            assert connection.execute(select(func.count()).select_from(load_verdicts)).scalar_one() == 0
            assert connection.execute(select(func.count()).select_from(log_quarantine)).scalar_one() == 0
        figures("loaders-killed", events=len(sent), kills=2)


class TestPostgresStoppedUnderTheLog:
    def test_ingestion_answers_202_throughout_and_the_loaders_catch_up(
        self,
        log_stream: tuple[str, str],
        private_postgres: PrivatePostgres,
        private_engine: Engine,
        tmp_path: Path,
    ) -> None:
        """The bench stops PostgreSQL for 60 s (bench/bench_ingest_log.py); here 5 s."""
        engine = private_engine
        upgrade_schema(engine)
        with unit_of_work(engine) as session:
            tenant = create_tenant(session, "outage", now=NOW)
            key, _ = create_api_key(
                session, tenant, frozenset({"ingest", "read"}), secret=TEST_SECRET.encode(), now=NOW
            )
        env = taskmeter_env(
            private_postgres.url, TEST_SECRET, scheduler_enabled=False, **log_settings(log_stream)
        )
        statuses: Counter[str] = Counter()
        problems: list[str] = []
        sent: set[str] = set()
        stop = threading.Event()
        lock = threading.Lock()

        def ingester(n: int, url: str) -> None:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                batch_no = 0
                while not stop.is_set():
                    batch_no += 1
                    batch = batch_of(f"pg-{n}-{batch_no}", 50)
                    answer = http.post("/v1/events", json=batch)
                    with lock:
                        statuses[str(answer.status_code)] += 1
                        if answer.status_code == 202:
                            sent.update(e["id"] for e in batch)
                        else:
                            problems.append(f"{answer.status_code}: {answer.text[:200]}")
                    time.sleep(0.02)

        with ServeProcess(env, tmp_path / "serve.log") as server:
            running = loaders(env, 2, tmp_path)
            threads = [threading.Thread(target=ingester, args=(n, server.url)) for n in range(3)]
            for thread in threads:
                thread.start()
            wait_for(lambda: bool(stored_ids(engine, tenant.id)), 60, "the loaders stored nothing")
            private_postgres.stop("immediate")  # the database crashes under load
            before = len(sent)
            time.sleep(5)
            during = len(sent) - before
            private_postgres.start()
            time.sleep(1.5)
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            wait_for(lambda: set(stored_ids(engine, tenant.id)) == sent, 120, "the loaders did not catch up")
            for process in running:
                process.terminate()
                assert process.wait(30) == 0
            assert server.alive

        assert problems == []
        assert during > 0  # accepted while the database was down
        ids = stored_ids(engine, tenant.id)
        assert len(ids) == len(set(ids)) and set(ids) == sent
        figures(
            "postgres-outage-through-the-log", outage_s=5, events=len(sent), accepted_during_outage=during
        )
