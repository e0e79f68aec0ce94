"""The reading side of the load-with-faults run (`bench/load_faults.py`): readers of what finance
and customers read (usage API, a customer's month and draft invoice, the month's CSV, the
dashboard), and the killer that SIGKILLs the server and starts it again."""

from __future__ import annotations

import csv
import io
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx

from bench.load_clients import Recorder
from metering.core.periods import Period
from tests.support.processes import ServeProcess

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


def _decimal(text: Any) -> Decimal:
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
