"""Spend by person and agent: the spend CSV, GET /v1/usage?group_by=actor|agent, compare's spend
section and the dashboard's "Spend by person", on one hand-built October.

Costs at the tenant's acme-large price (per million: input 3.00, cache reads 0.30, output 15.00):
- acme, nobody named: 10 in = 0.00003
- acme, ann@acme.com with agent "=cmd" (a formula, neutralized in the CSV): 100 in = 0.0003
- acme, ben@acme.com directly: 1M in + 100k out = 4.50
- acme, ben@acme.com with ben/codex-1, tasks b2 (200,000 in; 1 in) and b3 (333 in incl. 1 cache
  read + 7 out = 0.0011013): 0.6011043
- globex, ben@acme.com with ben/codex-1: 1 in + 1 out = 0.000018
- November: ben@acme.com directly again (not in October's figures).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from metering.core.periods import parse_month
from reports.monthly import report_chunks
from tests.conftest import LiveServer
from tests.dashboard.conftest import sign_in
from tests.reports.conftest import Books, ended, read_csv, usage

BEN, ANN, CODEX = "ben@acme.com", "ann@acme.com", "ben/codex-1"


def send_spend(books: Books) -> None:
    books.send(
        usage("a0", "2026-10-02T10:00:00Z", input_tokens=10),
        usage("a1", "2026-10-03T10:00:00Z", input_tokens=100, actor=ANN, agent="=cmd"),
        usage("b1", "2026-10-04T10:00:00Z", input_tokens=1_000_000, output_tokens=100_000, actor=BEN),
        ended("b1", "2026-10-04T11:00:00Z"),
        usage("b2", "2026-10-05T10:00:00Z", input_tokens=200_000, actor=BEN, agent=CODEX),
        usage("b2", "2026-10-06T10:00:00Z", input_tokens=1, actor=BEN, agent=CODEX),
        usage(
            "b3",
            "2026-10-31T23:59:59Z",
            input_tokens=333,
            cache_read_tokens=1,
            output_tokens=7,
            actor=BEN,
            agent=CODEX,
        ),
        usage(
            "g1",
            "2026-10-07T10:00:00Z",
            customer="globex",
            input_tokens=1,
            output_tokens=1,
            actor=BEN,
            agent=CODEX,
        ),
        usage("n1", "2026-11-02T10:00:00Z", input_tokens=5_000_000, actor=BEN),
    )
    books.rollup()


@pytest.fixture
def spend_books(books: Books) -> Books:
    send_spend(books)
    return books


class TestSpendFile:
    def test_one_row_per_customer_actor_and_agent_with_exact_costs(
        self, spend_books: Books, tmp_path: Path
    ) -> None:
        files = spend_books.write("2026-10", tmp_path)
        assert files["spend"].split("\r\n") == [
            "customer,actor,agent,tasks,usage_events,input_tokens,output_tokens,provider_cost",
            "acme,,,1,1,10,0,0.000030",
            "acme,ann@acme.com,'=cmd,1,1,100,0,0.000300",
            "acme,ben@acme.com,,1,1,1000000,100000,4.500000",
            # 0.6011043 exactly: cumulative rounding within acme (5.1014343 -> 5.101434, minus 4.500330)
            "acme,ben@acme.com,ben/codex-1,2,3,200334,7,0.601104",
            "globex,ben@acme.com,ben/codex-1,1,1,1,1,0.000018",
            "",
        ]

    def test_a_customers_rows_add_up_to_the_customers_file(self, spend_books: Books, tmp_path: Path) -> None:
        rows = spend_books.rows("2026-10", tmp_path)
        for customer in rows["customers"]:
            mine = [r for r in rows["spend"] if r["customer"] == customer["customer"]]
            assert sum(Decimal(r["provider_cost"]) for r in mine) == Decimal(customer["provider_cost"])
            assert sum(int(r["input_tokens"]) for r in mine) == int(customer["input_tokens"])
            assert sum(int(r["output_tokens"]) for r in mine) == int(customer["output_tokens"])

    def test_the_four_other_files_keep_their_columns(self, spend_books: Books, tmp_path: Path) -> None:
        files = spend_books.write("2026-10", tmp_path)
        assert files["customers"].startswith("customer,plan,currency,tasks_completed,")
        assert files["tasks"].startswith("task,customer,task_type,status,started_at,ended_at,usage_events,")

    def test_served_over_http(
        self, spend_books: Books, live_server: LiveServer, make_key: Callable[..., str], tmp_path: Path
    ) -> None:
        with live_server.client(make_key(spend_books.tenant, "read")) as api:
            response = api.get("/v1/reports/2026-10/spend.csv")
        assert response.status_code == 200
        assert response.text == spend_books.write("2026-10", tmp_path)["spend"]


class TestUsageApi:
    def get(self, live_server: LiveServer, make_key: Callable[..., str], books: Books, **params: str) -> Any:
        with live_server.client(make_key(books.tenant, "read")) as api:
            return api.get("/v1/usage", params={"from": "2026-10-01", "to": "2026-11-01"} | params)

    def test_group_by_actor(
        self, spend_books: Books, live_server: LiveServer, make_key: Callable[..., str]
    ) -> None:
        body = self.get(live_server, make_key, spend_books, group_by="actor").json()
        assert [(r["actor"], Decimal(r["provider_cost"]), r["usage_events"]) for r in body["rows"]] == [
            (None, Decimal("0.000030"), 1),
            (ANN, Decimal("0.000300"), 1),
            (BEN, Decimal("5.101122"), 5),  # 4.50 + 0.6011043 + 0.000018, rounded once
        ]
        assert body["group_by"] == "actor" and Decimal(body["total"]["provider_cost"]) == Decimal("5.101452")

    def test_group_by_agent_keeps_the_actor(
        self, spend_books: Books, live_server: LiveServer, make_key: Callable[..., str]
    ) -> None:
        body = self.get(live_server, make_key, spend_books, group_by="agent", customer="acme").json()
        assert [(r["actor"], r["agent"], Decimal(r["provider_cost"])) for r in body["rows"]] == [
            (None, None, Decimal("0.000030")),
            (ANN, "=cmd", Decimal("0.000300")),
            (BEN, None, Decimal("4.500000")),
            (BEN, CODEX, Decimal("0.601104")),
        ]

    def test_an_unknown_grouping_is_a_422_naming_the_field(
        self, books: Books, live_server: LiveServer, make_key: Callable[..., str]
    ) -> None:
        response = self.get(live_server, make_key, books, group_by="person")
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == "query.group_by"


class TestCompare:
    def test_the_api_answers_a_spend_section(
        self, spend_books: Books, live_server: LiveServer, make_key: Callable[..., str]
    ) -> None:
        with live_server.client(make_key(spend_books.tenant, "read")) as api:
            body = api.post("/v1/compare", json={"month": "2026-10"}).json()
        assert [(r["customer"], r["actor"], r["agent"], r["provider_cost"]) for r in body["spend"]] == [
            ("acme", None, None, "0.000030"),
            ("acme", ANN, "=cmd", "0.000300"),
            ("acme", BEN, None, "4.500000"),
            ("acme", BEN, CODEX, "0.601104"),
            ("globex", BEN, CODEX, "0.000018"),
        ]
        assert {"customers", "task_types", "models", "tenant"} <= set(body)

    def test_the_command_line_prints_it_on_request(
        self, spend_books: Books, run_cli: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from api import cli

        assert cli.main(["compare", "--tenant", "acme-ai", "--month", "2026-10"]) == 0
        plain = capsys.readouterr().out
        assert "Usage by person and agent" not in plain
        assert cli.main(["compare", "--tenant", "acme-ai", "--month", "2026-10", "--by-person"]) == 0
        table = capsys.readouterr().out
        assert table.startswith(plain.rstrip("\n"))  # the plans' tables unchanged, the section after them
        assert "Usage by person and agent" in table and "ben/codex-1" in table and "4.500000" in table
        assert (
            cli.main(
                ["compare", "--tenant", "acme-ai", "--month", "2026-10", "--by-person", "--format", "csv"]
            )
            == 0
        )
        rows = read_csv(capsys.readouterr().out)
        assert [(r["customer"], r["actor"], r["agent"], r["provider_cost"]) for r in rows][1] == (
            "acme",
            ANN,
            "'=cmd",
            "0.000300",
        )


class TestDashboard:
    def test_each_person_with_their_agents_beneath(
        self, spend_books: Books, live_server: LiveServer, make_key: Callable[..., str]
    ) -> None:
        with sign_in(live_server, make_key(spend_books.tenant, "read")) as client:
            page = client.get("/dashboard", params={"month": "2026-10"})
        assert page.status_code == 200
        html = page.text
        section = html[html.index('id="spend-by-person"') :]
        section = section[: section.index("</section>")]
        cells = [unescape(c) for c in _data_values(section)]
        # ben (all customers): 5.101122, own 4.500000, codex-1 0.601122; then ann; then nobody.
        assert cells == ["5.101122", "4.500000", "0.601122", "0.000300", "0.000300", "0.000030"]
        assert (
            section.index(BEN)
            < section.index("directly, no agent")
            < section.index(CODEX)
            < section.index(ANN)
        )
        assert 'class="agent indent"' in section and "no person given" in section

    def test_a_month_that_named_nobody_says_so(
        self, books: Books, live_server: LiveServer, make_key: Callable[..., str]
    ) -> None:
        books.send(usage("x", "2026-10-02T10:00:00Z", input_tokens=10))
        books.rollup()
        with sign_in(live_server, make_key(books.tenant, "read")) as client:
            html = client.get("/dashboard", params={"month": "2026-10"}).text
        assert "Spend by person" in html and "No usage this month named a person" in html


def _data_values(html: str) -> list[str]:
    import re

    return [m for m in re.findall(r'data-value="([^"]*)"', html)]


def test_costs_past_int64_stay_exact(make_books: Callable[..., Books], tmp_path: Path) -> None:
    """Three events of 4e18 nano-units each: one SQL sum of cost_nanos would overflow int64."""
    books = make_books(configured=False)
    books.config(
        {"prices": [{"provider": "acme-ai", "model": "acme-max", "input": "2000", "output": "2000"}]}
    )
    most = 10**12
    books.send(
        *(
            usage(
                f"t{i}",
                f"2026-10-0{i + 1}T10:00:00Z",
                model="acme-max",
                input_tokens=most,
                output_tokens=most,
                actor=BEN,
            )
            for i in range(3)
        )
    )
    books.rollup()
    with Session(
        books.engine
    ) as session:  # the spend file alone (the customers file's one SQL sum would overflow)
        text = b"".join(report_chunks(session, books.tenant, parse_month("2026-10", "UTC"), "spend")).decode()
    assert [(r["actor"], r["usage_events"], r["provider_cost"]) for r in read_csv(text)] == [
        (BEN, "3", "12000000000.000000")
    ]
