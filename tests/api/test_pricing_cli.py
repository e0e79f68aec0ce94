"""`taskmeter config load`, `compare`, `close`, `invoices` and `quote`: JSON (or a table) on stdout,
errors on stderr, exit 1 on failure; the clock is frozen at month ends. `invoices` and `quote`
answer what the HTTP API answers."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from freezegun import freeze_time
from sqlalchemy import Engine, func, select

from api import cli
from api.settings import get_settings
from metering.core.db import unit_of_work
from metering.core.tenants import Tenant, get_tenant
from metering.events.ingest import ingest_events
from pricing.tables import invoices, plan_versions
from tests.conftest import TEST_SECRET, LiveServer
from tests.pricing.conftest import JOBS, PRICES, TOKENS, at, job

CONFIG = {"prices": PRICES, "plans": [JOBS, TOKENS], "customers": [{"id": "acme", "plan": "jobs", "compare_with": ["tokens"]}]}


@pytest.fixture
def run(database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    monkeypatch.setenv("TASKMETER_DATABASE_URL", database_url)
    monkeypatch.setenv("TASKMETER_SECRET_KEY", TEST_SECRET)
    get_settings.cache_clear()

    def invoke(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield invoke
    get_settings.cache_clear()


@pytest.fixture
def tenant_with_usage(run: Any, engine: Engine, tmp_path: Path) -> str:
    assert run("tenants", "create", "acme-ai")[0] == 0
    path = tmp_path / "taskmeter.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    code, out, _ = run("config", "load", str(path), "--tenant", "acme-ai")
    assert code == 0 and [p["status"] for p in json.loads(out)["plans"]] == ["created", "created"]
    with unit_of_work(engine) as session:
        tenant = get_tenant(session, "acme-ai")
        events = [*job("a", "2026-10-31T23:59:59.999Z", task_type="support_ticket"), *job("b", "2026-11-01T00:00:00Z")]
        ingest_events(session, tenant.id, events, now=at("2026-11-01T00:00:00Z"))
    return "acme-ai"


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


class TestConfigLoad:
    def test_an_invalid_file_changes_nothing(self, tenant_with_usage: str, run: Any, engine: Engine, tmp_path: Path) -> None:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"plans": [JOBS | {"prices": {"default": "0.9"}}, TOKENS | {"rates": {"input": "-1"}}]}))
        before = count(engine, plan_versions)
        code, out, err = run("config", "load", str(path), "--tenant", tenant_with_usage)
        assert (code, out) == (1, "")
        assert '"field": "plans[1].rates.input"' in err and "must not be negative" in err
        assert count(engine, plan_versions) == before

    def test_a_missing_file(self, run: Any) -> None:
        code, _, err = run("config", "load", "/nonexistent.yaml", "--tenant", "x")
        assert code == 1 and "no such file" in err


class TestCompare:
    def test_a_readable_table_by_default(self, tenant_with_usage: str, run: Any) -> None:
        code, out, _ = run("compare", "--tenant", tenant_with_usage, "--month", "2026-10")
        assert code == 0
        lines = out.splitlines()
        assert lines[0] == "2026-10 (USD), target margin 0.6; * = billed plan"
        assert lines[1].split()[:4] == ["customer", "plan", "revenue", "provider"]
        assert lines[3].split()[:4] == ["acme", "jobs", "*", "1.20"]
        assert lines[4].split()[:3] == ["acme", "tokens", "6.00"]
        assert "Tenant-wide, per plan" in out

    def test_csv_and_json(self, tenant_with_usage: str, run: Any) -> None:
        code, out, _ = run("compare", "--tenant", tenant_with_usage, "--month", "2026-10", "--plans", "tokens,jobs", "--format", "csv")
        rows = list(csv.DictReader(io.StringIO(out)))
        assert code == 0 and [(r["plan"], r["billed"], r["revenue"], r["provider_cost"]) for r in rows] == [
            ("tokens", "false", "6.00", "3.000000"), ("jobs", "true", "1.20", "3.000000"),
        ]  # fmt: skip
        code, out, _ = run("compare", "--tenant", tenant_with_usage, "--month", "2026-10", "--format", "json")
        assert json.loads(out)["tenant"][0]["revenue"] == "1.20"

    def test_outcomes_per_task_type_in_the_table_and_the_json(self, tenant_with_usage: str, run: Any) -> None:
        code, out, _ = run("compare", "--tenant", tenant_with_usage, "--month", "2026-10", "--format", "json")
        outcomes = json.loads(out)["outcomes"]
        assert code == 0 and outcomes, out
        for row in outcomes:  # without outcome rules: settled = completed, nothing pending
            assert row["settled"] == row["completed"] and row["pending"] == 0
        code, out, _ = run("compare", "--tenant", tenant_with_usage, "--month", "2026-10")
        section = out[out.index("Outcomes per task type"):].splitlines()
        assert section[1].split()[:4] == ["task", "type", "completed", "settled"]
        cells = section[3].split()
        assert cells[-3:] == [str(outcomes[0]["billed_jobs"]), outcomes[0]["billed"], outcomes[0]["price_per_settled_job"]]

    def test_unpriced_usage_gets_a_column_and_a_warning(self, tenant_with_usage: str, run: Any, engine: Engine) -> None:
        code, out, err = run("compare", "--tenant", tenant_with_usage, "--month", "2026-10")
        assert code == 0 and err == "" and out.splitlines()[1].split()[-1] == "unpriced"
        with unit_of_work(engine) as session:
            tenant = get_tenant(session, tenant_with_usage)
            unknown = {"id": "u-unknown", "type": "usage", "time": "2026-10-05T10:00:00Z", "customer": "acme", "task": "a",
                       "provider": "nobody", "model": "secret", "input_tokens": 5}  # fmt: skip
            ingest_events(session, tenant.id, [unknown], now=at("2026-11-01T00:00:00Z"))
        code, out, err = run("compare", "--tenant", tenant_with_usage, "--month", "2026-10")
        assert code == 0 and out.splitlines()[3].split()[-1] == "1"
        assert err.startswith("warning: 1 usage event(s) of acme have no price")

    def test_revenue_has_the_minor_unit_even_without_lines(self, tenant_with_usage: str, run: Any, engine: Engine) -> None:
        with unit_of_work(engine) as session:  # usage in September, no task completed: no job billed
            tenant = get_tenant(session, tenant_with_usage)
            used = {"id": "u-sep", "type": "usage", "time": "2026-09-05T10:00:00Z", "customer": "acme", "task": "s",
                    "provider": "acme-ai", "model": "acme-large", "input_tokens": 5}  # fmt: skip
            ingest_events(session, tenant.id, [used], now=at("2026-11-01T00:00:00Z"))
        code, out, _ = run("compare", "--tenant", tenant_with_usage, "--month", "2026-09", "--plans", "jobs", "--format", "json")
        assert code == 0 and [row["revenue"] for row in json.loads(out)["customers"]] == ["0.00"]

    def test_bad_month_and_unknown_plan(self, tenant_with_usage: str, run: Any) -> None:
        assert "not a month" in run("compare", "--tenant", tenant_with_usage, "--month", "2026-13")[2]
        code, _, err = run("compare", "--tenant", tenant_with_usage, "--month", "2026-10", "--plans", "nope")
        assert code == 1 and "unknown plan 'nope'" in err


class TestPricesCheck:
    def test_models_with_their_price_source_unpriced_first(self, tenant_with_usage: str, run: Any, engine: Engine, tmp_path: Path) -> None:
        with unit_of_work(engine) as session:
            tenant = get_tenant(session, tenant_with_usage)
            extra = [
                {"id": "u-x", "type": "usage", "time": "2026-10-05T10:00:00Z", "customer": "acme", "task": "a",
                 "provider": "nobody", "model": "secret", "input_tokens": 5},
                {"id": "u-g", "type": "usage", "time": "2026-10-05T10:00:00Z", "customer": "acme", "task": "a",
                 "provider": "google", "model": "models/gemini-2.5-pro", "input_tokens": 1_000},
            ]  # fmt: skip
            ingest_events(session, tenant.id, extra, now=at("2026-11-01T00:00:00Z"))
        assert run("rollup", "--tenant", tenant_with_usage)[0] == 0
        code, out, _ = run("prices", "check", "--tenant", tenant_with_usage)
        report = json.loads(out)
        assert code == 0 and report["up_to_date"] is True and report["unpriced_models"] == 1
        sources = [(m["provider"], m["model"], m["source"], m["priced_as"]) for m in report["models"]]
        assert sources == [("nobody", "secret", "unpriced", None), ("acme-ai", "acme-large", "tenant", "acme-ai/acme-large"),
                           ("google", "models/gemini-2.5-pro", "snapshot", "google/gemini-2.5-pro")]  # fmt: skip
        acme = report["models"][1]
        assert (acme["provider_cost"], acme["provider_cost_now"], acme["change"]) == ("6.000000", "6.000000", "0.000000")
        assert report["models"][2]["normalized"] is True

        cheaper = tmp_path / "cheaper.yaml"
        cheaper.write_text(yaml.safe_dump({"prices": [PRICES[0] | {"input": "2.00"}]}))
        assert run("config", "load", str(cheaper), "--tenant", tenant_with_usage)[0] == 0
        report = json.loads(run("prices", "check", "--tenant", tenant_with_usage)[1])
        assert report["up_to_date"] is False
        assert (report["models"][1]["provider_cost_now"], report["models"][1]["change"]) == ("4.000000", "-2.000000")
        code, out, _ = run("prices", "check", "--tenant", tenant_with_usage, "--format", "table")
        assert code == 0 and "the next rollup re-prices" in out and out.splitlines()[3].split()[:3] == ["provider", "model", "source"]


class TestClose:
    def test_at_the_last_millisecond_and_at_midnight(self, tenant_with_usage: str, run: Any, engine: Engine) -> None:
        with freeze_time("2026-10-31T23:59:59.999Z"):
            code, out, err = run("close", "--tenant", tenant_with_usage, "--month", "2026-10")
        assert (code, out) == (1, "") and "2026-10 has not ended yet" in err
        with freeze_time("2026-11-01T00:00:00Z"):
            code, out, _ = run("close", "--tenant", tenant_with_usage, "--month", "2026-10")
        summary = json.loads(out)
        assert code == 0 and summary["closed"] is True
        assert summary["closed_at"] == "2026-11-01T00:00:00Z"  # RFC 3339 UTC, as the API writes it
        assert [(i["number"], i["total"], i["lines"]) for i in summary["invoices"]] == [("INV-acme-ai-202610-0001", "1.20", 1)]
        with freeze_time("2026-11-02T00:00:00Z"):
            code, out, _ = run("close", "--tenant", tenant_with_usage, "--month", "2026-10")
        assert code == 0 and json.loads(out)["closed"] is False
        assert count(engine, invoices) == 1


@pytest.fixture
def closed(tenant_with_usage: str, run: Any) -> str:
    """October closed: acme's support ticket billed 1.20 on INV-acme-ai-202610-0001."""
    with freeze_time("2026-11-01T00:00:00Z"):
        assert run("close", "--tenant", tenant_with_usage, "--month", "2026-10")[0] == 0
    return tenant_with_usage


def http(live_server: LiveServer, engine: Engine, make_key: Callable[[Tenant], str], name: str) -> Any:
    with unit_of_work(engine) as session:
        tenant = get_tenant(session, name)
    return live_server.client(make_key(tenant))


class TestInvoices:
    def test_list_a_month_a_customer_or_all(self, closed: str, run: Any) -> None:
        code, out, _ = run("invoices", "--tenant", closed)
        assert code == 0 and json.loads(out) == [{
            "id": 1, "number": "INV-acme-ai-202610-0001", "customer": "acme", "status": "finalized", "period": "2026-10",
            "currency": "USD", "total": "1.20", "lines": 1, "adjustment_lines": 0, "finalized_at": "2026-11-01T00:00:00Z",
        }]  # fmt: skip
        assert run("invoices", "list", "--tenant", closed, "--month", "2026-10", "--customer", "acme")[1] == out
        assert json.loads(run("invoices", "--tenant", closed, "--month", "2026-11")[1]) == []

    def test_show_answers_what_the_http_api_answers(
        self, closed: str, run: Any, live_server: LiveServer, engine: Engine, make_key: Callable[[Tenant], str]
    ) -> None:
        code, out, _ = run("invoices", "show", "1", "--tenant", closed)
        shown = json.loads(out)
        assert code == 0 and [(line["description"], line["amount"]) for line in shown["lines"]] == [
            ("Completed support_ticket tasks", "1.20"),
        ]  # fmt: skip
        with http(live_server, engine, make_key, closed) as client:
            assert shown == client.get("/v1/invoices/1").json()

    def test_errors(self, closed: str, run: Any) -> None:
        assert run("tenants", "create", "other-co")[0] == 0
        cases = [
            (("invoices", "show", "1", "--tenant", "other-co"), "no invoice 1"),  # another tenant's
            (("invoices", "show", "99", "--tenant", closed), "no invoice 99"),
            (("invoices", "show", "--tenant", closed), "`invoices show` takes an invoice id"),
            (("invoices", "show", "1", "--tenant", closed, "--month", "2026-10"), "no --month or --customer"),
            (("invoices", "list", "1", "--tenant", closed), "an invoice id goes with `invoices show ID`"),
            (("invoices", "--tenant", closed, "--month", "2026-13"), '"field": "--month"'),
            (("invoices", "--tenant", closed, "--customer", "nobody"), "no customer 'nobody'"),
        ]
        for argv, message in cases:
            code, out, err = run(*argv)
            assert (code, out) == (1, "") and message in err, argv
        with pytest.raises(SystemExit) as exit_:  # argparse: `invoices ID` without show
            run("invoices", "1", "--tenant", closed)
        assert exit_.value.code == 2


class TestQuote:
    FLAGS = ("--model", "acme-ai/acme-large", "--input-tokens", "1000000", "--cache-read-tokens", "200000",
             "--output-tokens", "100000", "--task-type", "support_ticket", "--at", "2026-10-15T12:00:00Z")  # fmt: skip
    BODY = {"usage": [{"provider": "acme-ai", "model": "acme-large", "input_tokens": 1_000_000, "cache_read_tokens": 200_000,
                       "output_tokens": 100_000}], "task_type": "support_ticket", "at": "2026-10-15T12:00:00Z"}  # fmt: skip

    def test_flags_answer_what_the_http_api_answers(
        self, tenant_with_usage: str, run: Any, live_server: LiveServer, engine: Engine, make_key: Callable[[Tenant], str]
    ) -> None:
        code, out, _ = run("quote", "--tenant", tenant_with_usage, *self.FLAGS)
        quoted = json.loads(out)
        # cost: 800,000 × 3 + 200,000 × 0.30 + 100,000 × 15 per million = 3.96
        # tokens: 800,000 × 6 + 200,000 × 0.60 + 100,000 × 30 per million = 7.92
        assert code == 0 and [(q["plan"], q["amount"], q["provider_cost"]) for q in quoted["quotes"]] == [
            ("jobs", "1.20", "3.960000"), ("tokens", "7.92", "3.960000"),
        ]  # fmt: skip
        with http(live_server, engine, make_key, tenant_with_usage) as client:
            assert quoted == client.post("/v1/quotes", json=self.BODY).json()

    def test_1h_cache_writes_from_a_flag(self, tenant_with_usage: str, run: Any) -> None:
        flags = ("--model", "acme-ai/acme-large", "--input-tokens", "1000000", "--cache-write-tokens", "1000000", "--plans", "jobs")
        code, out, _ = run("quote", "--tenant", tenant_with_usage, *flags, "--cache-write-1h-tokens", "1000000")
        assert code == 0 and json.loads(out)["quotes"][0]["provider_cost"] == "3.750000"  # no 1-hour rate: the write rate
        code, _, err = run("quote", "--tenant", tenant_with_usage, *flags, "--cache-write-1h-tokens", "1000001")
        assert code == 1 and '"field": "--cache-write-1h-tokens"' in err

    def test_the_body_from_a_file_or_stdin(self, tenant_with_usage: str, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        expected = run("quote", "--tenant", tenant_with_usage, *self.FLAGS)[1]
        path = tmp_path / "quote.json"
        path.write_text(json.dumps(self.BODY))
        assert run("quote", "--tenant", tenant_with_usage, "--body", str(path)) == (0, expected, "")
        monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(self.BODY | {"plans": ["tokens"], "outcome": "failed"})))
        code, out, _ = run("quote", "--tenant", tenant_with_usage, "--body", "-")
        assert code == 0 and [(q["plan"], q["amount"]) for q in json.loads(out)["quotes"]] == [("tokens", "7.92")]

    def test_errors_name_the_flag(self, tenant_with_usage: str, run: Any, tmp_path: Path) -> None:
        model = ("--model", "acme-ai/acme-large")
        cases = [
            (("--model", "acme-large"), "--model", "is not PROVIDER/MODEL"),
            (("--input-tokens", "5"), "--model", "token counts need the model"),
            ((*model, "--input-tokens", "-1"), "--input-tokens", "greater than or equal to 0"),
            ((*model, "--input-tokens", "5", "--cache-read-tokens", "6"), "--cache-read-tokens, --cache-write-tokens", "cache tokens exceed input_tokens"),
            ((*model, "--plans", "tokens,nope"), "--plans", "unknown plan 'nope'"),
            (("--at", "2026-10-15"), "--at", "is not an instant with an offset"),
            (("--body", str(tmp_path / "none.json")), "", "cannot read"),
            (("--body", "-", "--outcome", "failed"), "--body", "not both"),
        ]
        for flags, field, message in cases:
            code, out, err = run("quote", "--tenant", tenant_with_usage, *flags)
            assert (code, out) == (1, ""), flags
            assert message in err and f'"field": "{field}"' in err if field else message in err, (flags, err)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"usage": [{"provider": "a", "model": "b", "input_tokens": 1.5}]}))
        code, _, err = run("quote", "--tenant", tenant_with_usage, "--body", str(bad))
        assert code == 1 and '"field": "body.usage[0].input_tokens"' in err
