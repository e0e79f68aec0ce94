"""Budget alerts with two `taskmeter serve` processes sharing one database: the same events sent
to both (replays), each threshold alerted and delivered exactly once, also across a SIGKILL and
restart of one of them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.tenants import Tenant
from metering.spend.alerts import add_webhook
from tests.factories import make_event
from tests.support.processes import ServeProcess

AT = datetime(2026, 11, 18, 10, 30, tzinfo=UTC)


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["content-length"]))
        server: Any = self.server
        with server.lock:
            server.calls += 1
            fail = server.calls <= 2  # the receiver is down for the first two attempts
            if not fail:
                server.ids.append(json.loads(body)["id"])
        self.send_response(500 if fail else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.ids, server.calls, server.lock = [], 0, threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _wait_for(condition: Callable[[], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_two_servers_one_alert_per_threshold(
    serve: Callable[..., ServeProcess],
    engine: Engine,
    tenant: Tenant,
    make_key: Callable[..., str],
    receiver: Any,
    settings: Settings,
) -> None:
    key = make_key(tenant)
    with unit_of_work(engine) as session:
        add_webhook(session, tenant.id, f"http://127.0.0.1:{receiver.server_port}/", box=settings.secret_box(), now=AT)
    servers = [serve(scheduler_enabled=True, webhook_interval_seconds=0.2) for _ in range(2)]
    headers = {"Authorization": f"Bearer {key}"}
    budget = {"measure": "tokens", "limit": "4000", "period": "month", "alerts": ["0.25", "0.5", "0.75", "1"]}
    assert httpx.put(servers[0].url + "/v1/budgets/all", json=budget, headers=headers).status_code == 200

    events = [
        make_event(
            id=f"u{i}", time=(AT + timedelta(minutes=i)).isoformat(), input_tokens=400, output_tokens=100
        )
        for i in range(8)
    ]  # 8 x 500 tokens: every threshold once

    def send(server: ServeProcess) -> None:
        for i in range(0, len(events), 2):
            httpx.post(server.url + "/v1/events", json=events[i : i + 2], headers=headers, timeout=30)

    threads = [threading.Thread(target=send, args=(server,)) for server in servers]  # the same events to both
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert _wait_for(lambda: len(receiver.ids) >= 4), f"{receiver.ids} after {receiver.calls} calls"

    def all_delivered() -> bool:
        alerts = httpx.get(servers[0].url + "/v1/alerts", headers=headers).json()
        return len(alerts) == 4 and all(a["deliveries"][0]["status"] == "delivered" for a in alerts)

    # the receiver counts a post before its answer reaches the sender: wait until both senders have
    # recorded theirs, so the SIGKILL below tests replays after a restart, not a post cut mid-answer
    # (that one is sent again once its claim lapses: at least once, deduplicated by the alert's id)
    assert _wait_for(all_delivered)
    servers[1].kill9()
    servers[1].start()
    send(servers[1])  # replays after a restart
    time.sleep(2)  # several sender rounds of both processes
    assert sorted(receiver.ids) == sorted(set(receiver.ids)) and len(receiver.ids) == 4
    alerts = httpx.get(servers[0].url + "/v1/alerts", headers=headers).json()
    assert sorted(a["threshold"] for a in alerts) == ["0.25", "0.5", "0.75", "1"]
    assert all(a["deliveries"][0]["status"] == "delivered" for a in alerts)
