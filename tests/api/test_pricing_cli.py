"""`taskmeter config load`, `compare` and `close`: JSON (or a table) on stdout, errors on stderr,
exit 1 on failure; the clock is frozen at month ends."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from freezegun import freeze_time
from sqlalchemy import Engine, func, select

from api import cli
from api.settings import get_settings
from metering.db import unit_of_work
from metering.ingest import ingest_events
from metering.tenants import get_tenant
from pricing.tables import invoices, plan_versions
from tests.conftest import TEST_SECRET
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

    def test_bad_month_and_unknown_plan(self, tenant_with_usage: str, run: Any) -> None:
        assert "not a month" in run("compare", "--tenant", tenant_with_usage, "--month", "2026-13")[2]
        code, _, err = run("compare", "--tenant", tenant_with_usage, "--month", "2026-10", "--plans", "nope")
        assert code == 1 and "unknown plan 'nope'" in err


class TestClose:
    def test_at_the_last_millisecond_and_at_midnight(self, tenant_with_usage: str, run: Any, engine: Engine) -> None:
        with freeze_time("2026-10-31T23:59:59.999Z"):
            code, out, err = run("close", "--tenant", tenant_with_usage, "--month", "2026-10")
        assert (code, out) == (1, "") and "2026-10 has not ended yet" in err
        with freeze_time("2026-11-01T00:00:00Z"):
            code, out, _ = run("close", "--tenant", tenant_with_usage, "--month", "2026-10")
        summary = json.loads(out)
        assert code == 0 and summary["closed"] is True
        assert [(i["number"], i["total"], i["lines"]) for i in summary["invoices"]] == [("INV-acme-ai-202610-0001", "1.20", 1)]
        with freeze_time("2026-11-02T00:00:00Z"):
            code, out, _ = run("close", "--tenant", tenant_with_usage, "--month", "2026-10")
        assert code == 0 and json.loads(out)["closed"] is False
        assert count(engine, invoices) == 1
