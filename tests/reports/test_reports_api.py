"""The monthly CSVs over HTTP (`GET /v1/reports/{month}/{name}.csv`) and on the command line
(`taskmeter report`): the same bytes as `write_month`, for the key's tenant only."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from api import cli
from api.settings import get_settings
from metering.core.tenants import Tenant
from reports.tables import report_snapshots
from tests.conftest import TEST_SECRET, LiveServer
from tests.reports.conftest import Books, send_october, usage
from tests.reports.test_monthly import CLOSE

NAMES = ("customers", "invoice-lines", "tasks", "comparison", "spend")


@pytest.fixture
def october(books: Books, tmp_path: Path) -> dict[str, bytes]:
    send_october(books)
    books.rollup()
    books.close("2026-10", now=CLOSE)
    books.write("2026-10", tmp_path / "files")
    return {name: (tmp_path / "files" / f"{name}-2026-10.csv").read_bytes() for name in NAMES}


class TestHttp:
    @pytest.mark.parametrize("name", NAMES)
    def test_each_file_is_the_written_one(self, live_server: LiveServer, books: Books, make_key: Callable[..., str],
                                          october: dict[str, bytes], name: str) -> None:  # fmt: skip
        with live_server.client(make_key(books.tenant, "read")) as client:
            response = client.get(f"/v1/reports/2026-10/{name}.csv")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == f'attachment; filename="{name}-2026-10.csv"'
        assert response.content == october[name]

    def test_a_large_file_is_streamed(
        self, live_server: LiveServer, books: Books, make_key: Callable[..., str]
    ) -> None:
        books.send(*(usage(f"t{i:05d}", "2026-10-02T00:00:00Z", input_tokens=i) for i in range(3000)))
        books.rollup()
        with (
            live_server.socket_client(make_key(books.tenant, "read")) as client,
            client.stream("GET", "/v1/reports/2026-10/tasks.csv") as response,
        ):
            assert response.headers.get("transfer-encoding") == "chunked"
            body = b"".join(response.iter_bytes())
        assert body.count(b"\r\n") == 3001

    def test_scopes_names_and_months(
        self, live_server: LiveServer, books: Books, make_key: Callable[..., str]
    ) -> None:
        with live_server.client() as anonymous:
            assert anonymous.get("/v1/reports/2026-10/customers.csv").status_code == 401
        with live_server.client(make_key(books.tenant, "ingest")) as ingest_only:
            assert ingest_only.get("/v1/reports/2026-10/customers.csv").status_code == 403
        with live_server.client(make_key(books.tenant, "read")) as client:
            assert client.get("/v1/reports/2026-10/secrets.csv").json()["error"] == "not_found"
            bad = client.get("/v1/reports/2026-13/customers.csv")
            assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "month"

    def test_another_tenant_sees_only_its_own(self, live_server: LiveServer, books: Books, october: dict[str, bytes],
                                              make_tenant: Callable[..., Tenant], make_key: Callable[..., str]) -> None:  # fmt: skip
        other = make_tenant("other-co")
        with live_server.client(make_key(other, "read")) as client:
            for name in NAMES:
                body = client.get(f"/v1/reports/2026-10/{name}.csv").content
                assert body.count(b"\r\n") == 1 and b"acme" not in body


@pytest.fixture
def run(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, dict | None, str]]]:
    monkeypatch.setenv("TASKMETER_DATABASE_URL", database_url)
    monkeypatch.setenv("TASKMETER_SECRET_KEY", TEST_SECRET)
    get_settings.cache_clear()

    def invoke(*argv: str) -> tuple[int, dict | None, str]:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, json.loads(captured.out) if captured.out.strip() else None, captured.err

    yield invoke
    get_settings.cache_clear()


class TestCommandLine:
    def test_report_writes_the_five_files_and_says_where(self, run, books: Books, october: dict[str, bytes], tmp_path: Path,
                                                         engine: Engine) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
        code, out, _ = run(
            "report", "--tenant", "acme-ai", "--month", "2026-10", "--out", str(tmp_path / "cli")
        )
        assert code == 0 and out is not None
        assert out["month"] == "2026-10" and out["closed"] is True
        assert [(f["name"], f["rows"]) for f in out["files"]] == [
            ("customers", 2),
            ("invoice-lines", 5),
            ("tasks", 5),
            ("comparison", 4),
            ("spend", 2),  # acme's and globex's usage, no actor or agent named
        ]
        for name in NAMES:
            assert (tmp_path / "cli" / f"{name}-2026-10.csv").read_bytes() == october[name]
        with engine.connect() as connection:  # the dashboard's figures of the month are kept too
            assert connection.execute(select(report_snapshots.c.period)).scalars().all() == ["2026-10"]

    def test_errors_name_the_problem(self, run, books: Books, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        code, out, err = run("report", "--tenant", "acme-ai", "--month", "October", "--out", str(tmp_path))
        assert code == 1 and out is None and "--month" in err
        code, _, err = run("report", "--tenant", "nobody", "--month", "2026-10", "--out", str(tmp_path))
        assert code == 1 and "nobody" in err

    def test_customers_without_a_plan_are_reported_on_stderr(self, run, books: Books, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        books.send(usage("s1", "2026-10-04T00:00:00Z", customer="stray", input_tokens=10))
        code, out, err = run(
            "report", "--tenant", "acme-ai", "--month", "2026-10", "--out", str(tmp_path / "cli")
        )
        assert code == 0 and out is not None and out["unrated_customers"] == ["stray"]
        assert "'stray' has usage in 2026-10 but no plan" in err
