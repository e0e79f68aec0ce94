"""Ingestion throughput: JSONL files into SQLite and PostgreSQL, against a bare SQLAlchemy Core
bulk insert of the same rows into the same database in the same run; and HTTP batches of 1,000
events into one uvicorn worker.

    .venv/bin/python bench/bench_ingest.py [--events 200000] [--http-events 100000]
    .venv/bin/python bench/bench_ingest.py --attribution [--events 100000] [--http-events 50000]

`--attribution`: the same events with and without `actor` and `agent` (on every event, 2,000
people with 5 agents each), each way in run twice in alternation in the same run; the ratio is
the throughput with the two fields over the one without.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from sqlalchemy import Engine, insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.cli.ingest import ingest_file  # noqa: E402
from api.settings import Settings  # noqa: E402
from bench.common import fresh_postgres, fresh_sqlite, machine, timed  # noqa: E402
from metering.core.db import unit_of_work  # noqa: E402
from metering.core.event_columns import INSERT_COLUMNS  # noqa: E402
from metering.core.tables import events  # noqa: E402
from metering.core.tenants import create_api_key, create_tenant  # noqa: E402
from metering.events.ingest import prepare_rows, validate_body, validate_items  # noqa: E402

NOW = datetime(2026, 11, 29, tzinfo=UTC)
SECRET = "bench-secret"


def setup_tenant(engine: Engine) -> int:
    with unit_of_work(engine) as session:
        return create_tenant(session, "bench", now=NOW).id


def bare_insert(engine: Engine, rows: list[dict], batch: int = 5000) -> float:
    with timed() as t:
        for start in range(0, len(rows), batch):
            with engine.begin() as connection:
                connection.execute(insert(events), rows[start : start + batch])
    return t[0]


def jsonl_run(label: str, make_engine, payload: list[dict], path: Path) -> dict:
    # Baseline: the same rows, already built, inserted by SQLAlchemy Core.
    engine = make_engine()
    tenant_id = setup_tenant(engine)
    prepared = prepare_rows(validate_items(payload), tenant_id, now=NOW)
    rows = [dict(zip(INSERT_COLUMNS, row, strict=True)) for row in prepared.rows]
    base = bare_insert(engine, rows)
    engine.dispose()
    # taskmeter: parse, validate, digest, insert ignoring conflicts, per-batch transactions.
    engine = make_engine()
    tenant_id = setup_tenant(engine)
    settings = Settings(database_url=str(engine.url))
    with timed() as t:
        summary = ingest_file(engine, tenant_id, path, path.with_suffix(".rejected"), settings=settings)
    engine.dispose()
    assert summary["accepted"] == len(payload), summary
    n = len(payload)
    return {"db": label, "events": n, "bare_eps": n / base, "ingest_eps": n / t[0], "ratio": t[0] / base}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_run(label: str, database_url: str, payload: list[dict], clients: int) -> dict:
    port = free_port()
    env = {**os.environ, "TASKMETER_DATABASE_URL": database_url, "TASKMETER_SECRET_KEY": SECRET, "TASKMETER_SCHEDULER_ENABLED": "false"}
    from metering.core.db import make_engine

    engine = make_engine(database_url)
    with unit_of_work(engine) as session:
        tenant = create_tenant(session, "http-bench", now=NOW)
        key, _ = create_api_key(session, tenant, frozenset({"ingest"}), secret=SECRET.encode(), now=NOW)
    engine.dispose()
    exe = Path(sys.executable).with_name("taskmeter")
    server = subprocess.Popen([str(exe), "serve", "--port", str(port), "--log-level", "warning"], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        bodies = [orjson.dumps(payload[i : i + 1000]) for i in range(0, len(payload), 1000)]
        accepted = [0] * clients

        def send(n: int) -> None:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}", "content-type": "application/json"}, timeout=60) as client:
                for body in bodies[n::clients]:
                    response = client.post("/v1/events", content=body)
                    response.raise_for_status()
                    accepted[n] += response.json()["accepted"]

        with timed() as t:
            threads = [threading.Thread(target=send, args=(n,)) for n in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert sum(accepted) == len(payload), accepted
        return {"db": label, "events": len(payload), "clients": clients, "eps": len(payload) / t[0]}
    finally:
        server.terminate()
        server.wait(10)


def with_attribution(payload: list[dict]) -> list[dict]:
    """The same events, each naming one of 2,000 people and one of their 5 agents."""
    out = []
    for n, event in enumerate(payload):
        person = n * 7919 % 2000
        out.append(event | {"actor": f"person-{person}@example.com", "agent": f"person-{person}/agent-{n % 5}"})
    return out


def attribution_cpu(payload: dict[str, list[dict]], rounds: int = 5) -> None:
    """Validation and row building alone (no database: what the two fields cost in the CPU-bound
    part of every way in), best of `rounds` alternating runs."""
    eps: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(rounds):
        for name in ("without", "with"):
            body = orjson.dumps(payload[name])
            with timed() as t:
                prepared = prepare_rows(validate_body(body), 1, now=NOW)
            assert len(prepared.rows) == len(payload[name])
            eps[name].append(len(payload[name]) / t[0])
    best = {name: max(values) for name, values in eps.items()}
    print(f"\nvalidate + build rows (no database), events/s: without {best['without']:,.0f}/s  with {best['with']:,.0f}/s  "
          f"ratio {best['with'] / best['without']:.3f}")


def attribution_main(args: argparse.Namespace) -> None:
    from bench.common import synthetic_events

    print(f"machine: {machine()}; date {datetime.now(UTC):%Y-%m-%d}")
    plain = synthetic_events(args.events)
    attribution_cpu({"without": plain, "with": with_attribution(plain)})
    tmp = Path(tempfile.mkdtemp(prefix="tm-bench-attr-"))
    payloads = {"without": plain, "with": with_attribution(plain)}
    paths = {}
    for name, payload in payloads.items():
        paths[name] = tmp / f"{name}.jsonl"
        paths[name].write_bytes(b"\n".join(orjson.dumps(e) for e in payload) + b"\n")
    databases = [("sqlite", lambda: fresh_sqlite(str(tmp / "jsonl.db")))]
    if fresh_postgres() is not None:
        databases.append(("postgresql", fresh_postgres))
    print("\nJSONL ingest, events/s (two alternating runs each):")
    for label, make in databases:
        eps: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(2):
            for name in ("without", "with"):
                eps[name].append(jsonl_run(label, make, payloads[name], paths[name])["ingest_eps"])
        best = {name: max(values) for name, values in eps.items()}
        print(f"  {label:<10} without {best['without']:>9,.0f}/s  with {best['with']:>9,.0f}/s  "
              f"ratio {best['with'] / best['without']:.3f}  (runs: {eps})")
    print("\nHTTP ingest, 1,000-event batches, one uvicorn worker, 1 client:")
    http_plain = synthetic_events(args.http_events, seed=11)
    http_payloads = {"without": http_plain, "with": with_attribution(http_plain)}
    for label in [name for name, _ in databases]:
        eps = {"without": [], "with": []}
        for round_ in range(2):
            for name in ("without", "with"):
                if label == "sqlite":
                    db = tmp / f"http-{name}-{round_}.db"
                    fresh_sqlite(str(db)).dispose()
                    url = f"sqlite:///{db}"
                else:
                    engine = fresh_postgres()
                    url = engine.url.render_as_string(hide_password=False)
                    engine.dispose()
                eps[name].append(http_run(label, url, http_payloads[name], 1)["eps"])
        best = {name: max(values) for name, values in eps.items()}
        print(f"  {label:<10} without {best['without']:>9,.0f}/s  with {best['with']:>9,.0f}/s  "
              f"ratio {best['with'] / best['without']:.3f}  (runs: {eps})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--http-events", type=int, default=100_000)
    parser.add_argument("--attribution", action="store_true", help="throughput with actor and agent vs without")
    args = parser.parse_args()
    if args.attribution:
        attribution_main(args)
        return
    from bench.common import synthetic_events

    print(f"machine: {machine()}; date {datetime.now(UTC):%Y-%m-%d}")
    payload = synthetic_events(args.events)
    tmp = Path(tempfile.mkdtemp(prefix="tm-bench-"))
    path = tmp / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in payload) + b"\n")

    print("\nJSONL ingest (taskmeter ingest_file vs bare Core insert of the same rows):")
    results = [jsonl_run("sqlite", lambda: fresh_sqlite(str(tmp / "jsonl.db")), payload, path)]
    if fresh_postgres() is not None:
        results.append(jsonl_run("postgresql", fresh_postgres, payload, path))
    for r in results:
        print(f"  {r['db']:<10} {r['events']:>9,} events  bare {r['bare_eps']:>9,.0f}/s  taskmeter {r['ingest_eps']:>9,.0f}/s  "
              f"ratio {r['ratio']:.2f}x")

    print("\nHTTP ingest, 1,000-event batches, one uvicorn worker:")
    http_payload = synthetic_events(args.http_events, seed=11)
    fresh_sqlite(str(tmp / "http.db")).dispose()
    runs = [("sqlite", f"sqlite:///{tmp / 'http.db'}")]
    pg = fresh_postgres()
    if pg is not None:
        runs.append(("postgresql", str(pg.url.render_as_string(hide_password=False))))
        pg.dispose()
    for label, url in runs:
        for clients in (1, 2):
            if clients == 2:  # a fresh database so that the second run inserts too
                url = f"sqlite:///{tmp / 'http2.db'}" if label == "sqlite" else url
                if label == "sqlite":
                    fresh_sqlite(str(tmp / "http2.db")).dispose()
                else:
                    fresh_postgres().dispose()
            r = http_run(label, url, http_payload, clients)
            print(f"  {r['db']:<10} {r['events']:>9,} events  {r['clients']} client(s)  {r['eps']:>9,.0f} events/s")


if __name__ == "__main__":
    main()
