"""Ingestion through the NATS JetStream log (TASKMETER_INGEST_LOG) against direct ingestion into
PostgreSQL, in the same run, on a PostgreSQL cluster of the bench's own (it is stopped on purpose):

1. HTTP ingest: `--clients` threads post batches of `--batch` events for `--seconds` each to a
   server writing to PostgreSQL, then to one writing to the log (no loader running): events/s
   and the answer's p50/p99.
2. Loader throughput: `--loaders` `taskmeter loader` processes store that backlog: events/s.
3. Outage: with the loaders running and clients posting at `--rate` events/s, PostgreSQL is
   stopped for `--outage` seconds (default 60): the answers meanwhile, and the catch-up time from
   its restart until every accepted event is stored.
4. Accept -> visible: single events to fresh customers, from the 202 until
   `GET /v1/customers/{c}/usage/current` shows them (loaders + the scheduler's rollup each 1 s): p50/p99.

    .venv/bin/python bench/bench_ingest_log.py [--seconds 20] [--outage 60]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine  # noqa: E402
from metering.core.db import make_engine, unit_of_work, upgrade_schema  # noqa: E402
from metering.core.tables import events  # noqa: E402
from metering.core.tenants import Tenant, create_api_key, create_tenant  # noqa: E402
from metering.events.ingest_log import LogConfig, delete_stream  # noqa: E402
from tests.support.processes import PrivatePostgres, ServeProcess, kill9, start_cli, taskmeter_env  # noqa: E402

SECRET = "bench-secret"
NATS = "nats://127.0.0.1:4222"


def tenant_with_key(engine: Engine, name: str) -> tuple[Tenant, str]:
    now = datetime.now(UTC)
    with unit_of_work(engine) as session:
        tenant = create_tenant(session, name, now=now)
        key, _ = create_api_key(
            session, tenant, frozenset({"ingest", "read"}), secret=SECRET.encode(), now=now
        )
    return tenant, key


def batch_of(prefix: str, size: int, customer: str = "c") -> list[dict[str, Any]]:
    at = datetime.now(UTC).isoformat()
    return [
        {"id": f"{prefix}-{i}", "type": "usage", "time": at, "customer": customer, "task": prefix,
         "provider": "openai", "model": "gpt-4o", "input_tokens": 1000 + i, "output_tokens": 100}
        for i in range(size)
    ]  # fmt: skip


def stored(engine: Engine, tenant: Tenant) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(events).where(events.c.tenant_id == tenant.id)
            ).scalar_one()
        )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Clients:
    """Threads posting batches until stopped; the answers' statuses and times."""

    def __init__(self, url: str, key: str, *, clients: int, batch: int, rate: float | None = None) -> None:
        self.url, self.key, self.batch = url, key, batch
        self.pause = clients * batch / rate if rate else 0.0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.accepted = 0
        self.threads = [threading.Thread(target=self._post, args=(n,)) for n in range(clients)]

    def _post(self, n: int) -> None:
        with httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        ) as http:
            while not self.stop.is_set():
                begun = time.perf_counter()
                answer = http.post("/v1/events", json=batch_of(f"{n}-{uuid.uuid4().hex[:10]}", self.batch))
                took = time.perf_counter() - begun
                with self.lock:
                    self.statuses[answer.status_code] += 1
                    if answer.status_code in (200, 202):
                        self.latencies.append(took)
                        self.accepted += self.batch
                if self.pause:
                    time.sleep(max(0.0, self.pause - took))

    def run_for(self, seconds: float) -> float:
        begun = time.perf_counter()
        self.start()
        time.sleep(seconds)
        self.finish()
        return time.perf_counter() - begun

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    begun = time.perf_counter()
    while not condition():
        if time.perf_counter() - begun > timeout:
            raise RuntimeError("timed out")
        time.sleep(0.05)
    return time.perf_counter() - begun


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--loaders", type=int, default=2)
    parser.add_argument("--outage", type=float, default=60)
    parser.add_argument("--rate", type=float, default=500, help="events/s posted during the outage run")
    parser.add_argument("--probes", type=int, default=100)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-log-"))
    postgres = PrivatePostgres(
        Path(tempfile.mkdtemp(prefix="bench-log-pg-"))
    ).init()  # its own dir: owned by postgres
    token = uuid.uuid4().hex[:8]
    log = {"ingest_log": NATS, "ingest_log_stream": f"BENCH_{token}", "ingest_log_subject": f"bench.{token}"}
    engine = make_engine(postgres.url)
    upgrade_schema(engine)
    started: list[Any] = []
    try:
        print(f"# ingest log bench ({machine()}); {args.clients} clients x {args.batch}-event batches")
        direct_tenant, direct_key = tenant_with_key(engine, "direct")
        log_tenant, log_key = tenant_with_key(engine, "through-log")
        base_env = taskmeter_env(postgres.url, SECRET, scheduler_enabled=False)
        log_env = taskmeter_env(
            postgres.url, SECRET, scheduler_enabled=True, rollup_interval_seconds=1, **log
        )

        # 1. HTTP ingest, direct vs through the log
        rows = []
        for label, env, key in (
            ("direct to PostgreSQL", base_env, direct_key),
            ("through the log", log_env, log_key),
        ):
            server = ServeProcess(env, root / f"serve-{len(rows)}.log").start()
            started.append(server)
            clients = Clients(server.url, key, clients=args.clients, batch=args.batch)
            seconds = clients.run_for(args.seconds)
            rows.append(
                (
                    label,
                    clients.accepted / seconds,
                    pct(clients.latencies, 0.5),
                    pct(clients.latencies, 0.99),
                    dict(clients.statuses),
                )
            )
            target = clients.accepted  # the log run's, last: the loaders' backlog
            if label == "direct to PostgreSQL":
                server.stop()
        log_server = started[-1]
        print(
            "\n## HTTP ingest (same run)\n\n| path | events/s | p50 answer | p99 answer | answers |\n|---|---|---|---|---|"
        )
        for label, rate, p50, p99, statuses in rows:
            print(f"| {label} | {rate:,.0f} | {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms | {statuses} |")
        print(f"\nthrough the log / direct: {rows[1][1] / rows[0][1]:.2f}x events/s")

        # 2. Loader throughput on the backlog
        logs = [root / f"loader-{n}.log" for n in range(args.loaders)]
        begun = time.perf_counter()
        loaders = [start_cli(["loader"], log_env, p.open("ab")) for p in logs]
        started.extend(loaders)
        took = wait_until(lambda: stored(engine, log_tenant) >= target, 1800)
        print(f"\n## Loader throughput\n\n{args.loaders} loaders stored a backlog of {target:,} events in {took:.1f} s: "
              f"{target / took:,.0f} events/s (from start, process start-up included; {time.perf_counter() - begun:.1f} s)")  # fmt: skip

        # 3. Outage at --rate events/s
        clients = Clients(
            log_server.url, log_key, clients=args.clients, batch=min(args.batch, 100), rate=args.rate
        )
        before = stored(engine, log_tenant)
        clients.start()
        time.sleep(5)
        postgres.stop("immediate")
        time.sleep(args.outage)
        postgres.start()
        restarted = time.perf_counter()
        time.sleep(5)
        clients.finish()
        expected = before + clients.accepted
        wait_until(lambda: _stored_or_zero(engine, log_tenant) >= expected, 1800)
        catch_up = time.perf_counter() - restarted
        print(
            f"\n## PostgreSQL stopped for {args.outage:.0f} s under {args.rate:,.0f} events/s through the log\n"
        )
        print(
            f"answers while it was down and after: {dict(clients.statuses)} (p99 {pct(clients.latencies, 0.99) * 1000:.0f} ms)"
        )
        print(f"every accepted event stored {catch_up:.1f} s after PostgreSQL restarted "
              f"({clients.accepted:,} accepted in the run; stored = accepted: {stored(engine, log_tenant) == expected})")  # fmt: skip

        # 4. Accept -> visible in usage
        latencies = []
        with httpx.Client(
            base_url=log_server.url, headers={"Authorization": f"Bearer {log_key}"}, timeout=30
        ) as http:
            for n in range(args.probes):
                customer = f"probe-{n}-{token}"
                answer = http.post("/v1/events", json=batch_of(customer, 1, customer=customer))
                assert answer.status_code == 202, answer.text
                accepted_at = time.perf_counter()
                while http.get(f"/v1/customers/{customer}/usage/current").json().get("by_model") in (
                    None,
                    [],
                ):
                    time.sleep(0.02)
                latencies.append(time.perf_counter() - accepted_at)
        print(f"\n## Accept -> visible in usage through the log ({args.loaders} loaders, rollup each 1 s)\n")
        print(f"{args.probes} probes: p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {pct(latencies, 0.99) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms")  # fmt: skip
    finally:
        for thing in started:
            if isinstance(thing, ServeProcess):
                thing.stop()
            else:
                kill9(thing)
        engine.dispose()
        postgres.destroy()
        asyncio.run(
            delete_stream(
                LogConfig(url=NATS, stream=log["ingest_log_stream"], subject=log["ingest_log_subject"])
            )
        )
    return 0


def _stored_or_zero(engine: Engine, tenant: Tenant) -> int:
    try:
        return stored(engine, tenant)
    except Exception:  # noqa: BLE001 - PostgreSQL still starting
        return 0


if __name__ == "__main__":
    sys.exit(main())
