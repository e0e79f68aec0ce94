"""The `taskmeter` command line: JSON on stdout, errors on stderr, non-zero exit on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from api import cli
from api.settings import get_settings
from metering.core.tables import events
from tests.conftest import TEST_SECRET
from tests.factories import make_event


@pytest.fixture
def run(database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator:
    monkeypatch.setenv("TASKMETER_DATABASE_URL", database_url)
    monkeypatch.setenv("TASKMETER_SECRET_KEY", TEST_SECRET)
    get_settings.cache_clear()

    def invoke(*argv: str) -> tuple[int, dict | None, str]:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, json.loads(captured.out) if captured.out.strip() else None, captured.err

    yield invoke
    get_settings.cache_clear()


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


class TestTenantsAndKeys:
    def test_create_tenant_and_key(self, run) -> None:
        code, out, _ = run("tenants", "create", "acme-ai", "--timezone", "Europe/Berlin", "--currency", "EUR")
        assert code == 0 and out["name"] == "acme-ai" and out["timezone"] == "Europe/Berlin"
        code, out, err = run("keys", "create", "--tenant", "acme-ai", "--scopes", "ingest,read")
        assert code == 0 and out["key"].startswith("tm_") and out["scopes"] == ["ingest", "read"]
        assert "shown once" in err

    def test_bad_tenant_names_each_field(self, run) -> None:
        code, out, err = run("tenants", "create", "Bad Name!", "--timezone", "Mars/Olympus", "--currency", "usd")
        assert code == 1 and out is None
        assert '"field": "name"' in err and '"field": "timezone"' in err and '"field": "currency"' in err

    def test_duplicate_tenant(self, run) -> None:
        run("tenants", "create", "acme-ai")
        code, _, err = run("tenants", "create", "acme-ai")
        assert code == 1 and "already exists" in err

    def test_unknown_scope(self, run) -> None:
        run("tenants", "create", "acme-ai")
        code, _, err = run("keys", "create", "--tenant", "acme-ai", "--scopes", "ingest,root")
        assert code == 1 and "choose from ingest, read, admin" in err

    def test_key_for_unknown_tenant(self, run) -> None:
        code, _, err = run("keys", "create", "--tenant", "nobody", "--scopes", "read")
        assert code == 1 and "no tenant named 'nobody'" in err


class TestIngestFile:
    def test_summary_and_rejected_lines(self, run, tmp_path: Path, engine: Engine) -> None:
        run("tenants", "create", "acme-ai")
        lines = [json.dumps(make_event(id=f"f{i}")).encode() for i in range(7)]
        lines.insert(2, b"")  # blank line: skipped
        lines.insert(3, json.dumps(make_event(id="neg", output_tokens=-1)).encode())
        lines.insert(4, b'{"id": "broken", ')
        lines.insert(5, b'{"id": "latin1", "customer": "caf\xe9"}')
        path = write_jsonl(tmp_path / "events.jsonl", [b"\xef\xbb\xbf" + lines[0], *lines[1:]])
        code, out, err = run("ingest", str(path), "--tenant", "acme-ai", "--batch-size", "3")
        assert code == 0
        assert out == {
            "accepted": 7, "duplicates": 0, "conflicts": 0, "rejected": 3, "lines": 10,
            "rejected_file": str(tmp_path / "events.rejected.jsonl"),
        }  # fmt: skip
        rejected = [json.loads(line) for line in (tmp_path / "events.rejected.jsonl").read_text().splitlines()]
        assert [(r["line"], r["errors"][0]["field"]) for r in rejected] == [(4, "output_tokens"), (5, "line"), (6, "line")]
        assert "malformed JSON" in rejected[1]["errors"][0]["message"]
        assert "not UTF-8" in rejected[2]["errors"][0]["message"]
        assert rejected[0]["raw"].startswith('{"id": "neg"')
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(events)).scalar_one() == 7

    def test_rerun_is_a_replay(self, run, tmp_path: Path) -> None:
        run("tenants", "create", "acme-ai")
        path = write_jsonl(tmp_path / "e.jsonl", [json.dumps(make_event(id=f"g{i}")).encode() for i in range(5)])
        run("ingest", str(path), "--tenant", "acme-ai")
        code, out, _ = run("ingest", str(path), "--tenant", "acme-ai")
        assert code == 0 and (out["accepted"], out["duplicates"]) == (0, 5)

    def test_truncated_last_line(self, run, tmp_path: Path) -> None:
        run("tenants", "create", "acme-ai")
        path = tmp_path / "t.jsonl"
        path.write_bytes(json.dumps(make_event(id="whole")).encode() + b'\n{"id": "cut", "type": "us')
        code, out, _ = run("ingest", str(path), "--tenant", "acme-ai")
        assert code == 0 and (out["accepted"], out["rejected"]) == (1, 1)

    def test_missing_file(self, run) -> None:
        run("tenants", "create", "acme-ai")
        code, _, err = run("ingest", "/nonexistent.jsonl", "--tenant", "acme-ai")
        assert code == 1 and "no such file" in err


def test_console_script_runs_as_a_process(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "TASKMETER_DATABASE_URL": database_url, "TASKMETER_SECRET_KEY": TEST_SECRET}
    exe = Path(sys.executable).with_name("taskmeter")
    done = subprocess.run([str(exe), "tenants", "create", "proc-tenant"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "proc-tenant"
    failed = subprocess.run([str(exe), "keys", "create", "--tenant", "ghost", "--scopes", "read"], env=env, capture_output=True, text=True, check=False)
    assert failed.returncode == 1 and failed.stdout == "" and "no tenant named 'ghost'" in failed.stderr


class TestMissingDatabase:
    """A command that needs data refuses a SQLite file that does not exist, naming it and how to
    make it, and leaves no file behind; the commands that start a database create it."""

    COMMANDS = {
        "keys": ("keys", "create", "--tenant", "acme-ai", "--scopes", "read"),
        "ingest": ("ingest", "{dir}/events.jsonl", "--tenant", "acme-ai"),
        "rollup": ("rollup",),
        "report": ("report", "--tenant", "acme-ai", "--month", "2026-10", "--out", "{dir}/out"),
        "config": ("config", "load", "{dir}/tenant.yaml", "--tenant", "acme-ai"),
        "compare": ("compare", "--tenant", "acme-ai", "--month", "2026-10"),
        "close": ("close", "--tenant", "acme-ai", "--month", "2026-10"),
        "invoices": ("invoices", "--tenant", "acme-ai"),
        "invoice": ("invoices", "show", "1", "--tenant", "acme-ai"),
        "quote": ("quote", "--tenant", "acme-ai"),
        "prices": ("prices", "check", "--tenant", "acme-ai"),
        "stripe": ("stripe", "status"),
    }

    @pytest.fixture
    def nowhere(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
        """The default database URL (./taskmeter.db) in an empty working directory."""
        monkeypatch.delenv("TASKMETER_DATABASE_URL", raising=False)
        monkeypatch.setenv("TASKMETER_SECRET_KEY", TEST_SECRET)
        monkeypatch.chdir(tmp_path)
        (tmp_path / "events.jsonl").write_text(json.dumps(make_event()) + "\n")
        (tmp_path / "tenant.yaml").write_text("plans: []\n")
        get_settings.cache_clear()
        yield tmp_path
        get_settings.cache_clear()

    @pytest.mark.parametrize("name", COMMANDS)
    def test_refused_naming_the_file_and_left_uncreated(self, name: str, nowhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
        before = sorted(nowhere.iterdir())
        code = cli.main([arg.format(dir=nowhere) for arg in self.COMMANDS[name]])
        out, err = capsys.readouterr()
        assert (code, out) == (1, "")
        assert f"no database at {nowhere / 'taskmeter.db'}" in err
        assert "`taskmeter demo`" in err and "`taskmeter tenants create NAME`" in err
        assert sorted(nowhere.iterdir()) == before  # no taskmeter.db, -wal or -shm

    def test_tenants_create_starts_the_database(self, nowhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli.main(["tenants", "create", "acme-ai"]) == 0
        assert (nowhere / "taskmeter.db").is_file()
        capsys.readouterr()
        assert cli.main(["invoices", "--tenant", "acme-ai"]) == 0
        assert json.loads(capsys.readouterr().out) == []


class TestUnknownTenant:
    def test_an_empty_database_says_how_to_make_a_tenant(self, run) -> None:
        code, out, err = run("compare", "--tenant", "acme-ai", "--month", "2026-10")
        assert (code, out) == (1, None)
        assert "no tenant named 'acme-ai': this database has no tenants yet" in err
        assert "`taskmeter tenants create acme-ai`" in err and "`taskmeter demo`" in err

    def test_names_no_other_tenant(self, run) -> None:
        run("tenants", "create", "secret-co")
        for argv in (("keys", "create", "--tenant", "ghost", "--scopes", "read"), ("invoices", "--tenant", "ghost"),
                     ("rollup", "--tenant", "ghost"), ("quote", "--tenant", "ghost")):  # fmt: skip
            code, out, err = run(*argv)
            assert (code, out) == (1, None)
            assert "no tenant named 'ghost' (create it with `taskmeter tenants create ghost`)" in err
            assert "secret-co" not in err
