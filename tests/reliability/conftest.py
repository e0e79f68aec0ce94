"""Fixtures of the reliability tests: taskmeter processes on the test database (`serve`, one-shot
commands), catching a command inside its write transaction to kill it there, and the CLI run in
this process for the bad-input sweep."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, make_url, text

from api import cli
from api.settings import get_settings
from tests.conftest import TEST_SECRET
from tests.support.processes import ServeProcess, taskmeter_env


@pytest.fixture
def process_env(database_url: str, tmp_path: Path) -> Callable[..., dict[str, str]]:
    """The environment of a taskmeter subprocess on the test's database (scheduler off unless
    asked for); keywords are settings."""

    def make(**settings: Any) -> dict[str, str]:
        settings.setdefault("scheduler_enabled", False)
        settings.setdefault("reports_dir", tmp_path / "reports")
        return taskmeter_env(database_url, TEST_SECRET, **settings)

    return make


@pytest.fixture
def serve(process_env: Callable[..., dict[str, str]], tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Starts `taskmeter serve` subprocesses (stopped at the end of the test)."""
    started: list[ServeProcess] = []

    def start(**settings: Any) -> ServeProcess:
        server = ServeProcess(process_env(**settings), tmp_path / f"serve-{len(started)}.log")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


class MidWrite:
    """Catches a taskmeter command inside its write transaction, to kill it there.

    PostgreSQL: while the block runs, `table` is locked against writes (reads pass), so the
    command stops at its first write to it, having written everything before it in the same
    transaction; `wait()` returns once it waits for the lock. SQLite (one writer at a time):
    `wait()` returns once the command has held the database's write lock for a few polls in a
    row, which only its main transaction does for that long.
    """

    def __init__(self, engine: Engine, table: str) -> None:
        self.engine = engine
        self.table = table
        self.postgres = engine.dialect.name == "postgresql"
        self._locker: Any = None

    def __enter__(self) -> MidWrite:
        if self.postgres:
            self._locker = self.engine.connect()
            self._locker.begin()
            self._locker.execute(text(f'LOCK TABLE "{self.table}" IN EXCLUSIVE MODE'))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._locker is not None:
            self._locker.rollback()
            self._locker.close()

    def wait(self, process: subprocess.Popen[Any], timeout: float = 120) -> bool:
        """True once `process` is inside its write transaction; False if it exited first."""
        deadline = time.monotonic() + timeout
        sqlite_probe = None if self.postgres else sqlite3.connect(self._sqlite_path(), timeout=0, isolation_level=None)
        streak = 0
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return False
                held = self._postgres_waiting() if sqlite_probe is None else self._sqlite_locked(sqlite_probe)
                streak = streak + 1 if held else 0
                if streak >= (1 if sqlite_probe is None else 4):
                    return True
                time.sleep(0.01)
        finally:
            if sqlite_probe is not None:
                sqlite_probe.close()
        raise TimeoutError("the command neither wrote nor finished")

    def _postgres_waiting(self) -> bool:
        with self.engine.connect() as connection:
            return bool(connection.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() AND query ILIKE :table"
            ), {"table": f"%{self.table}%"}).scalar())  # fmt: skip

    def _sqlite_path(self) -> str:
        return str(make_url(str(self.engine.url)).database)

    @staticmethod
    def _sqlite_locked(probe: sqlite3.Connection) -> bool:
        try:
            probe.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return True
            raise
        probe.execute("ROLLBACK")
        return False


@pytest.fixture
def mid_write(engine: Engine) -> Callable[[str], MidWrite]:
    return lambda table: MidWrite(engine, table)


@pytest.fixture
def run(database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Any]]:
    """`taskmeter ARGS...` in this process: (exit code, JSON output or None, stderr)."""
    monkeypatch.setenv("TASKMETER_DATABASE_URL", database_url)
    monkeypatch.setenv("TASKMETER_SECRET_KEY", TEST_SECRET)
    get_settings.cache_clear()

    def invoke(*argv: str) -> tuple[int, Any, str]:
        code = cli.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, json.loads(captured.out) if captured.out.strip() else None, captured.err

    yield invoke
    get_settings.cache_clear()
