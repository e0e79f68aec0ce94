"""Spend control: ingestion throughput with 1,000 budgets against none (same run, same events),
counted inline and deferred; `POST /v1/authorize` latency with 1,000 budgets while ingestion runs;
and event stored -> threshold webhook received.

    .venv/bin/python bench/bench_budgets.py [--events 200000] [--stored 1000000]
    .venv/bin/python bench/bench_budgets.py --only throughput --events 200000 [--paths jsonl,http] [--databases sqlite,postgresql]
        [--countings inline,deferred] [--rounds 1] [--follower thread|process] [--leave-counting]

Throughput, per database and path, each configuration into a fresh database: no budget, 1,000
budgets counted inline (`TASKMETER_SPEND_COUNTING=inline`), no budget, the same counted deferred,
no budget; `--rounds` repeats the runs with budgets, each between two without (its baseline). JSONL: `taskmeter ingest`'s `ingest_file` in process (deferred: its catch-up at the end of
the file is in the time). HTTP: a real `taskmeter serve` (one uvicorn worker, scheduler on, so with
`deferred` its follower counts in the server process) fed 1,000-event batches by `--clients`
clients; deferred also reports how long after the last answer everything was counted. With
`--follower process` deferred counting runs in a separate `taskmeter worker` (the server's
scheduler off), as OPERATIONS describes for giving the follower a process of its own; with
`--leave-counting` too, JSONL runs `ingest --leave-counting` (the worker counts what the file
stored, and the line says how long after the end of the file it had counted everything, as HTTP's
does after the last answer).
Authorization and webhooks go through a real `taskmeter serve` (one uvicorn worker, SQLite) over
loopback HTTP.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, func, select
from sqlalchemy import event as sa_event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.cli.ingest import ingest_file  # noqa: E402
from api.settings import Settings  # noqa: E402
from bench.common import POSTGRES_URL, cpu_check, fresh_postgres, fresh_sqlite, machine, synthetic_events  # noqa: E402
from bench.server import SECRET, free_port  # noqa: E402
from metering.core.db import make_engine, unit_of_work, upgrade_schema  # noqa: E402
from metering.core.secret_box import SecretBox, derived_key  # noqa: E402
from metering.core.tables import events  # noqa: E402
from metering.core.tenants import Tenant, create_api_key, create_tenant, get_tenant  # noqa: E402
from metering.events.ingest import store_events, validate_items  # noqa: E402
from metering.spend import budget_repository, deferred  # noqa: E402
from metering.spend import counters as spend  # noqa: E402
from metering.spend.alerts import add_webhook  # noqa: E402
from metering.spend.budgets import Budget  # noqa: E402

NOW = datetime(2026, 11, 29, tzinfo=UTC)
BATCH = 1000


def thousand_budgets(customers: int = 1000) -> list[Budget]:
    """One budget per customer (cost, tokens, jobs in turn), each alerting at 50/80/100%, plus
    nothing else: 1,000 budgets that every event of the synthetic load touches one of."""
    measures = ("provider_cost", "tokens", "provider_cost", "jobs")
    out = []
    for i in range(customers):
        measure = measures[i % len(measures)]
        limit = "1000" if measure == "provider_cost" else "1000000000"
        out.append(Budget.model_validate({
            "id": f"b{i}", "scope": {"customer": f"cust-{i}"}, "measure": measure, "limit": limit,
            "period": ("day", "week", "month")[i % 3], "alerts": ["0.5", "0.8", "1"], "forecast": True, "enforce": True,
        }))  # fmt: skip
    return out


def _tenant(engine: Engine, budgets: list[Budget]) -> Tenant:
    with unit_of_work(engine) as session:
        tenant = create_tenant(session, "bench", now=NOW)
        if budgets:
            budget_repository.replace_all(session, tenant.id, budgets, now=NOW)
    return tenant


NONE = ("none", "inline", False)
COUNTINGS = (("1,000 budgets inline", "inline", True), ("1,000 budgets deferred", "deferred", True))
"""(label, TASKMETER_SPEND_COUNTING, with the budgets) of the runs with budgets. Every run with
budgets has a run without any just before and just after it (`runs`): its ratio is against the
mean of those two, so a drift of the machine's speed over the series moves both sides."""


def runs(countings: list[str], rounds: int) -> list[tuple[str, str, bool]]:
    """The series: no budget, then per round each of `countings` ("inline", "deferred") followed
    by no budget again."""
    series = [NONE]
    for _ in range(rounds):
        for counting in [c for c in COUNTINGS if c[1] in countings]:
            series += [counting, NONE]
    return series


def _payload(events: int) -> list[dict[str, Any]]:
    payload = synthetic_events(events, seed=11, models=3)
    for event in payload:
        event["model"] = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-latest")[
            int(event["model"].rsplit("-", 1)[1]) % 3
        ]
        event["provider"] = "anthropic" if event["model"].startswith("claude") else "openai"
    return payload


def _counted_through(engine: Engine, tenant: Tenant) -> int | None:
    with engine.connect() as connection:
        return deferred.counted_through(connection, tenant.id)


def _newest(engine: Engine, tenant: Tenant) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.max(events.c.seq)).where(events.c.tenant_id == tenant.id)).scalar() or 0)


def jsonl_rate(
    engine: Engine, budgets: list[Budget], file: Path, counting: str, follower: str = "thread", leave: bool = False
) -> tuple[float, str]:
    """Events per second of `taskmeter ingest` (`ingest_file`, in process, 5,000 lines a
    transaction) from start to end, the deferred mode's catch-up at the end of the file included.
    `follower` "process": with deferred, a `taskmeter worker` counts meanwhile (the catch-up at
    the end counts what it left); with `leave`, `--leave-counting`: no catch-up, the worker
    counts the rest (how long after the end of the file it had counted all is in the note)."""
    tenant = _tenant(engine, budgets)
    url = engine.url.render_as_string(hide_password=False)
    settings = Settings(database_url=url, secret_key=SECRET, spend_counting=counting)  # type: ignore[arg-type]
    process = worker(url) if follower == "process" and counting == "deferred" else None
    try:
        if process is not None:  # the worker's first run follows the tenant
            _wait(lambda: _counted_through(engine, tenant) is not None, "the worker never followed the tenant")
        start = time.perf_counter()
        summary = ingest_file(
            engine, tenant.id, file, file.with_suffix(".rejected.jsonl"), settings=settings, leave_counting=leave and process is not None
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        note = f", {summary['spend_counted']:,} counted at the end" if "spend_counted" in summary else ""
        if "spend_left" in summary:
            newest = _newest(engine, tenant)
            _wait(lambda: (_counted_through(engine, tenant) or 0) >= newest, "the worker never caught up")
            note = f", {summary['spend_left']:,} left to the worker, counted {time.perf_counter() - start - elapsed:.2f} s after the end of the file"
    finally:
        _stop(process)
    return summary["accepted"] / elapsed, note


def http_rate(
    path: Path | None, budgets: list[Budget], batches: list[bytes], counting: str, clients: int, follower: str = "thread"
) -> tuple[float, str]:
    """Events per second stored through `POST /v1/events` of `taskmeter serve` (one uvicorn worker,
    its scheduler on: with `deferred`, its follower counts in the same process as deployed), from
    the first request to the last answer, `clients` clients posting 1,000-event batches at once.
    Deferred: also how long after the last answer the follower had counted everything. `follower`
    "process": the server's scheduler off and a `taskmeter worker` counting (deferred only)."""
    engine, tenant, key = _setup(path, budgets)
    env = {"TASKMETER_SPEND_COUNTING": counting}
    database = path if path is not None else POSTGRES_URL
    apart = follower == "process" and counting == "deferred"
    server, url = serve(database, scheduler=not apart, env=env)
    process = worker(database) if apart else None
    try:
        if counting == "deferred":  # the follower's first run follows the tenant
            _wait(lambda: _counted_through(engine, tenant) is not None, "the follower never followed the tenant")
        todo = iter(batches)
        lock = threading.Lock()

        def post() -> None:
            headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
            with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
                while True:
                    with lock:
                        body = next(todo, None)
                    if body is None:
                        return
                    answer = client.post("/v1/events", content=body)
                    assert answer.status_code == 200, answer.text

        threads = [threading.Thread(target=post) for _ in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stored = time.perf_counter()
        note = ""
        if counting == "deferred":
            newest = _newest(engine, tenant)
            _wait(lambda: (_counted_through(engine, tenant) or 0) >= newest, "the follower never caught up")
            note = f", counted {time.perf_counter() - stored:.2f} s after the last answer"
    finally:
        _stop(server)
        _stop(process)
        engine.dispose()
    return len(batches) * BATCH / (stored - start), note


def _wait(done: Callable[[], bool], failure: str, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(failure)
        time.sleep(0.02)


def throughput(
    events: int, databases: list[str], paths: list[str], clients: int = 2, follower: str = "thread",
    countings: tuple[str, ...] = ("inline", "deferred"), rounds: int = 1, leave: bool = False,
) -> list[str]:  # fmt: skip
    """Ingestion with no budget and with 1,000 budgets counted each way of `countings`, each run
    into a fresh database, the same events, per database and path, in the order of `runs`. Each
    run with budgets is a ratio against the mean of the runs without budgets on either side of it;
    with `rounds` > 1 the line gives every ratio and their median."""
    payload = _payload(events)
    batches = [orjson.dumps(payload[i : i + BATCH]) for i in range(0, len(payload), BATCH)]
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "events.jsonl"
        file.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in payload))
        for database in databases:
            label = "PostgreSQL" if database == "postgresql" else "SQLite"
            if database == "postgresql" and fresh_postgres() is None:
                continue
            for path in paths:
                rates: list[tuple[str, float, str]] = []
                for name, counting, with_budgets in runs(list(countings), rounds):
                    budgets = thousand_budgets() if with_budgets else []
                    if path == "jsonl":
                        engine = fresh_sqlite(os.path.join(folder, "j.db")) if database == "sqlite" else fresh_postgres()
                        assert engine is not None
                        rate, note = jsonl_rate(engine, budgets, file, counting, follower, leave)
                        engine.dispose()
                    else:
                        rate, note = http_rate(Path(folder) / "h.db" if database == "sqlite" else None, budgets, batches, counting, clients, follower)
                    rates.append((name, rate, note))
                    print(f"  {label} {path} {name}: {rate:,.0f} events/s{note}", flush=True)
                how = "JSONL (taskmeter ingest, 5,000 lines a transaction)" if path == "jsonl" else (
                    f"HTTP ({clients} clients, 1,000-event batches, one server process with its scheduler)")
                if follower == "process":
                    how += ", deferred counted by a separate `taskmeter worker`" + (" (server scheduler off)" if path == "http" else "")
                    how += " (ingest --leave-counting)" if path == "jsonl" and leave else ""
                nones = [rate for name, rate, _ in rates if name == NONE[0]]
                parts = [f"none {min(nones):,.0f}-{max(nones):,.0f} events/s ({len(nones)} runs)"]
                for name, _, _ in (c for c in COUNTINGS if c[1] in countings):
                    ratios = [rate / ((rates[i - 1][1] + rates[i + 1][1]) / 2) for i, (run, rate, _) in enumerate(rates) if run == name]
                    notes = "".join(note for run, _, note in rates if run == name and rounds == 1)
                    if rounds > 1 and any(note for run, _, note in rates if run == name):
                        notes = " (" + "; ".join(note.lstrip(", ") for run, _, note in rates if run == name) + ")"
                    each = ", ".join(f"{ratio:.1%}" for ratio in ratios)
                    parts.append(f"{name} {each} of none" + (f" (median {statistics.median(ratios):.1%})" if len(ratios) > 1 else "") + notes)
                lines.append(f"{label}, {how}, {events:,} events: " + "; ".join(parts))
                print(lines[-1], flush=True)
    return lines


# --- through a real server ----------------------------------------------------------------------


def serve(
    path: Path | str, *, scheduler: bool, args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`taskmeter serve` on a SQLite file or a database URL, with extra `args` and settings `env`."""
    database = path if isinstance(path, str) else f"sqlite:///{path}"
    env = {**os.environ, "TASKMETER_DATABASE_URL": database, "TASKMETER_SECRET_KEY": SECRET,
           "TASKMETER_SCHEDULER_ENABLED": str(scheduler).lower(), "TASKMETER_WEBHOOK_INTERVAL_SECONDS": "0.2",
           "TASKMETER_ROLLUP_INTERVAL_SECONDS": "3600", "TASKMETER_RATE_LIMIT_PER_MINUTE": "10000000", **(env or {})}  # fmt: skip
    port = free_port()
    command, root = _taskmeter(env)
    server = subprocess.Popen([*command, "serve", "--port", str(port), "--log-level", "warning", *args], env=env, cwd=root or None)
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            httpx.get(url + "/healthz", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    return server, url


def _taskmeter(env: dict[str, str]) -> tuple[list[str], str | None]:
    """The `taskmeter` command, of this checkout or of TASKMETER_BENCH_SERVE_ROOT's (another
    checkout's code, e.g. `git archive` of an older commit, to compare; set in `env`)."""
    root = os.environ.get("TASKMETER_BENCH_SERVE_ROOT")
    if root:
        env["PYTHONPATH"] = root
        return [sys.executable, "-c", "import sys; from api.cli import main; sys.exit(main())"], root
    return [str(Path(sys.executable).with_name("taskmeter"))], None


def worker(database: Path | str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`taskmeter worker` on a SQLite file or a database URL (deferred counting: its follower
    counts; the rollup is left for an hour), its log silenced."""
    database = database if isinstance(database, str) else f"sqlite:///{database}"
    env = {**os.environ, "TASKMETER_DATABASE_URL": database, "TASKMETER_SECRET_KEY": SECRET,
           "TASKMETER_SPEND_COUNTING": "deferred", "TASKMETER_ROLLUP_INTERVAL_SECONDS": "3600", **(env or {})}  # fmt: skip
    command, root = _taskmeter(env)
    return subprocess.Popen([*command, "worker"], env=env, cwd=root or None, stderr=subprocess.DEVNULL)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        process.terminate()
        process.wait(30)


def _setup(path: Path | None, budgets: list[Budget]) -> tuple[Engine, Tenant, str]:
    """A fresh database (SQLite at `path`, PostgreSQL when None) with the bench tenant and a key."""
    engine = fresh_sqlite(str(path)) if path is not None else fresh_postgres()
    if engine is None:
        raise SystemExit("PostgreSQL unavailable")
    tenant = _tenant(engine, budgets)
    with unit_of_work(engine) as session:
        key, _ = create_api_key(
            session, tenant, frozenset({"ingest", "read", "admin"}), secret=SECRET.encode(), now=NOW
        )
    return engine, tenant, key


def _gpt4o(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for event in events:
        event["model"] = "gpt-4o"
    return events


def authorize_reads(engine: Engine, tenant: Tenant) -> str:
    """The statements that answering `POST /v1/authorize` runs against the database: none from
    the snapshot; reading the snapshot runs these (tables named, SQLite's plan of each)."""
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append(" ".join(statement.split()))

    sa_event.listen(engine, "before_cursor_execute", seen)
    try:
        with engine.connect() as connection:
            found = spend.read_snapshot(connection, tenant.id, now=NOW)
            read = len(statements)
            spend.authorize_from(found, {"customer": "cust-1"}, now=NOW)
            assert len(statements) == read, "answering from the snapshot ran a statement"
            plans = []
            if engine.dialect.name == "sqlite":
                for statement in statements[:read]:
                    if statement.startswith("SELECT") and "budget_counters" in statement:
                        plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", tuple(_parameters(statement)))
                        plans.append("; ".join(row[-1] for row in plan))
    finally:
        sa_event.remove(engine, "before_cursor_execute", seen)
    tables = sorted({name for statement in statements for name in re.findall(r"(?:FROM|JOIN) (\w+)", statement)})
    line = (f"authorize from the snapshot: 0 statements; reading the snapshot: {read} statements on {', '.join(tables)} "
            f"(never events); counters plan: {' | '.join(plans) or 'n/a'}")  # fmt: skip
    print(line, flush=True)
    return line


def _parameters(statement: str) -> list[Any]:
    return [0] * statement.count("?")



def _from_store(store: Path, path: Path, budgets: list[Budget]) -> tuple[Engine, Tenant, int, str]:
    """A copy of an existing SQLite store (e.g. `bench_reprice.py`'s 12M-event one, tenant
    "bench", customers cust-0..999) at `path`, with `budgets` and a key for its tenant."""
    shutil.copyfile(store, path)
    engine = make_engine(f"sqlite:///{path}")
    upgrade_schema(engine)
    with unit_of_work(engine) as session:
        tenant = get_tenant(session.connection(), "bench")
        budget_repository.replace_all(session, tenant.id, budgets, now=NOW)
        key, _ = create_api_key(session, tenant, frozenset({"ingest", "read", "admin"}), secret=SECRET.encode(), now=NOW)
        stored = session.execute(select(func.count()).select_from(events)).scalar_one()
    return engine, tenant, stored, key


def _post_batches(url: str, key: str, ready: Any, stop: Any, posted: Any) -> None:
    """Post 200,000 events in 1,000-event batches to `url` until `stop` is set, adding what was
    posted to `posted` (the authorize bench's ingestion, in a process of its own)."""
    during = _gpt4o(synthetic_events(200_000, seed=5, models=1))
    bodies = [orjson.dumps(during[i : i + BATCH]) for i in range(0, len(during), BATCH)]
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    ready.set()
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for body in bodies:
            if stop.is_set():
                return
            client.post("/v1/events", content=body)
            with posted.get_lock():
                posted.value += BATCH


def authorize_latency(
    stored: int, *, postgres: bool = False, args: tuple[str, ...] = (), requests: int = 2000, store: Path | None = None,
    split: bool = False,
) -> str:
    """p50/p99 of `POST /v1/authorize` (one client, keep-alive) while another client posts
    1,000-event batches to the same `taskmeter serve`, after `stored` events were stored (in
    process, 10,000 a transaction: authorization never reads them), or on a copy of `store`."""
    with tempfile.TemporaryDirectory() as folder:
        path = None if postgres else Path(folder) / "a.db"
        if store is not None and path is not None:
            engine, tenant, stored, key = _from_store(store, path, thousand_budgets())
        else:
            engine, tenant, key = _setup(path, thousand_budgets())
            for start in range(0, stored, 10_000):
                batch = _gpt4o(synthetic_events(min(10_000, stored - start), seed=1000 + start, models=1))
                with unit_of_work(engine) as session:
                    store_events(session, tenant.id, validate_items(batch), now=NOW)
        if not os.environ.get("TASKMETER_BENCH_SERVE_ROOT"):
            authorize_reads(engine, tenant)
        engine.dispose()
        database = POSTGRES_URL if postgres else Path(str(path))
        server, url = serve(database, scheduler=False, args=args)
        # With `split`, ingestion goes to a second server on the same database (an API replica of
        # its own), as a deployment that keeps the hot check apart from bulk ingestion would run.
        loader_server, load_url = serve(database, scheduler=False, args=args) if split else (None, url)
        headers = {"Authorization": f"Bearer {key}"}
        # The load comes from a process of its own: a thread of this one would hold its GIL
        # (serializing and posting batches) while the timed client waits, inflating its times.
        spawn = multiprocessing.get_context("spawn")
        ready, stop, posted = spawn.Event(), spawn.Event(), spawn.Value("q", 0)
        loader = spawn.Process(target=_post_batches, args=(load_url, key, ready, stop, posted))

        times: list[float] = []
        idle: list[float] = []
        try:
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                for i in range(requests // 4):  # the same requests with nothing else running
                    sent = time.perf_counter()
                    client.post("/v1/authorize", json={"customer": f"cust-{i % 1000}"})
                    idle.append(time.perf_counter() - sent)
            loader.start()
            ready.wait(120)
            time.sleep(1)  # ingestion under way
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                started = time.perf_counter()
                for i in range(requests):
                    body = {"customer": f"cust-{i % 1000}", "actor": "ben@acme.com", "task_type": "support_ticket"}
                    sent = time.perf_counter()
                    answer = client.post("/v1/authorize", json=body)
                    times.append(time.perf_counter() - sent)
                    assert answer.status_code == 200 and len(answer.json()["budgets"]) == 1, answer.text
                elapsed = time.perf_counter() - started
            ingested = posted.value
            stop.set()
            loader.join(60)
        finally:
            if loader.is_alive():
                loader.terminate()
            for process in (server, loader_server):
                if process is not None:
                    process.terminate()
                    process.wait(10)
    times.sort()
    idle.sort()
    p50, p99 = times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000
    i50, i99 = idle[len(idle) // 2] * 1000, idle[int(len(idle) * 0.99)] * 1000
    label = "PostgreSQL" if postgres else "SQLite"
    where = "into a second server process" if split else "into the same server"
    line = (f"{label}, {stored:,} events stored, 1,000 budgets, serve {' '.join(args) or '(defaults)'}, HTTP ingestion "
            f"{where} running ({ingested / elapsed:,.0f} events/s meanwhile): POST /v1/authorize p50 {p50:.2f} ms, p99 {p99:.2f} ms "
            f"({requests:,} requests, one client, keep-alive); idle server p50 {i50:.2f} ms, p99 {i99:.2f} ms")  # fmt: skip
    print(line, flush=True)
    return line


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["content-length"]))
        server: Any = self.server
        server.arrivals[orjson.loads(body)["budget"]] = time.perf_counter()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def webhook_latency(alerts: int = 200) -> str:
    receiver: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    receiver.arrivals = {}
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    budgets = [
        Budget.model_validate({"id": f"w{i}", "scope": {"customer": f"hook-{i}"}, "measure": "tokens", "limit": "1000",
                               "period": "month", "alerts": ["1"]})
        for i in range(alerts)
    ] + thousand_budgets()  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.db"
        engine, tenant, key = _setup(path, budgets)
        with unit_of_work(engine) as session:
            add_webhook(session, tenant.id, f"http://127.0.0.1:{receiver.server_port}/hook", box=SecretBox([derived_key(SECRET)]), now=NOW)
        engine.dispose()
        server, url = serve(path, scheduler=True)
        headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
        stop = threading.Event()
        load_events = synthetic_events(500_000, seed=9, models=1)
        for event in load_events:
            event["model"] = "gpt-4o"

        def load() -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                for i in range(0, len(load_events), BATCH):
                    if stop.is_set():
                        return
                    client.post("/v1/events", content=orjson.dumps(load_events[i : i + BATCH]))

        loader = threading.Thread(target=load)
        stored: dict[str, float] = {}
        try:
            time.sleep(1)
            loader.start()
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                for i in range(alerts):
                    event = {"id": f"hook-{i}", "type": "usage", "time": (NOW - timedelta(hours=1)).isoformat(),
                             "customer": f"hook-{i}", "task": f"hook-{i}", "provider": "openai", "model": "gpt-4o",
                             "input_tokens": 900, "output_tokens": 100}  # fmt: skip
                    answer = client.post("/v1/events", content=orjson.dumps([event]))
                    stored[f"w{i}"] = time.perf_counter()  # the answer comes after the commit
                    assert answer.json()["accepted"] == 1, answer.text
                    time.sleep(0.02)
            deadline = time.monotonic() + 60
            while len(receiver.arrivals) < alerts and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            loader.join()
            server.terminate()
            server.wait(10)
            receiver.shutdown()
    delays = sorted(receiver.arrivals[b] - stored[b] for b in stored if b in receiver.arrivals)
    p50, p99 = statistics.median(delays), delays[int(len(delays) * 0.99) - 1 if len(delays) >= 100 else -1]
    line = (f"SQLite, 1,200 budgets, HTTP ingestion of 1,000-event batches running: event stored -> threshold webhook "
            f"received p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms ({len(delays)} of {alerts} alerts received; "
            f"sender polls every 0.2 s)")  # fmt: skip
    print(line, flush=True)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--only", choices=("throughput", "authorize", "webhooks"))
    parser.add_argument("--requests", type=int, default=2000, help="authorize requests per configuration")
    parser.add_argument("--serve", action="append", default=[], help="serve arguments of an authorize configuration (repeatable; '' = defaults)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--split", action="store_true", help="ingestion into a second server process on the same database")
    parser.add_argument("--store", type=Path, help="authorize on a copy of this SQLite store (tenant 'bench') instead of --stored new events")
    parser.add_argument("--paths", default="jsonl,http", help="throughput: jsonl, http or both")
    parser.add_argument("--clients", type=int, default=2, help="throughput over HTTP: clients posting at once")
    parser.add_argument("--follower", choices=("thread", "process"), default="thread",
                        help="throughput, deferred: the follower in the server's scheduler thread (and ingest's catch-up), "
                             "or a separate `taskmeter worker` process (servers with their scheduler off)")
    parser.add_argument("--countings", default="inline,deferred", help="throughput: the countings with budgets to run (inline, deferred or both)")
    parser.add_argument("--rounds", type=int, default=1, help="throughput: runs of each counting, each between two runs without budgets")
    parser.add_argument("--leave-counting", action="store_true",
                        help="throughput, JSONL with --follower process: `ingest --leave-counting` (the worker counts, no catch-up at the end)")
    args = parser.parse_args()
    print(machine(), flush=True)
    print(cpu_check(), flush=True)
    if args.only in (None, "throughput"):
        throughput(args.events, args.databases.split(","), args.paths.split(","), clients=args.clients, follower=args.follower,
                   countings=tuple(args.countings.split(",")), rounds=args.rounds, leave=args.leave_counting)
    if args.only in (None, "authorize"):
        for database in args.databases.split(","):
            for serve_args in args.serve or [""]:
                authorize_latency(args.stored, postgres=database == "postgresql", args=tuple(serve_args.split()), requests=args.requests, store=args.store, split=args.split)
    if args.only in (None, "webhooks"):
        webhook_latency()


if __name__ == "__main__":
    main()
