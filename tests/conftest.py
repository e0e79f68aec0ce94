"""Test fixtures: a clean database per test, built by the migrations, on SQLite or PostgreSQL.

`TASKMETER_TEST_DB=sqlite` (default) or `postgresql` picks the backend; the PostgreSQL URL is
`TASKMETER_TEST_POSTGRES_URL` (default postgresql+psycopg://postgres@127.0.0.1:5432/test), where each
test session creates a database of its own (taskmeter_test_<pid>) and drops it at the end. When
PostgreSQL is asked for but unreachable, every database test is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow.acero  # noqa: F401  (imported before any freeze_time: its Cython init checks datetime.date's size, which freezegun's FakeDate fails)
import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from sqlalchemy import Engine, make_url, text
from starlette.testclient import TestClient

from api import cli
from api.app import create_app
from api.settings import Settings, get_settings
from metering.core.db import make_engine, unit_of_work, upgrade_schema
from metering.core.tables import metadata
from metering.core.tenants import Tenant, create_api_key, create_tenant, parse_scopes
from tests.support.clock import start_from_environment
from tests.support.servers import ServerThread

BACKEND = os.environ.get("TASKMETER_TEST_DB", "sqlite")
POSTGRES_URL = os.environ.get("TASKMETER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TEST_SECRET = "test-secret-key"

hypothesis_settings.register_profile(
    "default", max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "60")), deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
hypothesis_settings.load_profile("default")


def pytest_configure(config: pytest.Config) -> None:
    start_from_environment()  # TASKMETER_TEST_CLOCK: the whole run a few seconds before a month ends


def pytest_report_header() -> str:
    return f"taskmeter test database: {BACKEND}" + (f" ({POSTGRES_URL})" if BACKEND == "postgresql" else "")


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the session: a SQLite file to copy, or the PostgreSQL database."""
    if BACKEND == "sqlite":
        path = tmp_path_factory.mktemp("template") / "template.db"
        engine = make_engine(f"sqlite:///{path}")
        upgrade_schema(engine)
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        yield str(path)
        return
    if BACKEND != "postgresql":
        raise pytest.UsageError(f"TASKMETER_TEST_DB must be sqlite or postgresql, not {BACKEND!r}")
    # A database of its own for this test session, so that concurrent runs never share state.
    admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", pool_size=1)
    name = f"taskmeter_test_{os.getpid()}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means: skip, and say why
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc.__class__.__name__}")
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url, pool_size=1)
    upgrade_schema(engine)
    engine.dispose()
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(database_template: str, tmp_path: Path) -> str:
    if BACKEND == "sqlite":
        path = tmp_path / "taskmeter.db"
        shutil.copyfile(database_template, path)
        return f"sqlite:///{path}"
    engine = make_engine(database_template, pool_size=1)
    names = ", ".join(t.name for t in reversed(metadata.sorted_tables))
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return database_template


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        secret_key=TEST_SECRET,
        scheduler_enabled=False,
        reports_dir=tmp_path / "reports",
        dashboard_wait_seconds=60,  # a busy test machine must not see the loading page by chance
    )


#: The instant "now" is frozen at by the `now` fixture: mid-month, mid-day, so that a test that
#: reads it never straddles a boundary by accident; tests about boundaries freeze their own.
FROZEN_NOW = datetime(2026, 11, 18, 10, 30, tzinfo=UTC)


@pytest.fixture
def now() -> Iterator[datetime]:
    """The clock frozen at FROZEN_NOW (ticking from there) for the test's whole duration."""
    with freeze_time(FROZEN_NOW, tick=True):
        yield FROZEN_NOW


@pytest.fixture
def make_tenant(engine: Engine) -> Callable[..., Tenant]:
    def make(name: str = "acme-ai", timezone: str = "UTC", currency: str = "USD") -> Tenant:
        with unit_of_work(engine) as session:
            return create_tenant(session, name, timezone=timezone, currency=currency, now=datetime.now(UTC))

    return make


@pytest.fixture
def make_key(engine: Engine) -> Callable[..., str]:
    def make(tenant: Tenant, scopes: str = "ingest,read,admin") -> str:
        with unit_of_work(engine) as session:
            key, _ = create_api_key(
                session, tenant, parse_scopes(scopes), secret=TEST_SECRET.encode(), now=datetime.now(UTC)
            )
        return key

    return make


@pytest.fixture
def tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant()


class LiveServer:
    """The real app. `client()` calls it in process through ASGI (starlette's TestClient: no
    socket, no server thread); `url` serves it under uvicorn on a loopback port, started on first
    use, for what needs a real socket (the Python client, a browser, subprocesses, load)."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.app = create_app(settings, engine)
        self._lifespan: TestClient | None = None
        self._socket: ServerThread | None = None

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._socket is not None:
            self._socket.__exit__(None, None, None)
        if self._lifespan is not None:
            self._lifespan.__exit__(None, None, None)

    @property
    def url(self) -> str:
        if self._socket is None:
            # The app's startup runs once: here, unless an in-process client already ran it.
            self._socket = ServerThread(self.app, lifespan="off" if self._lifespan else "on").__enter__()
        return self._socket.url

    def socket_client(self, key: str | None = None) -> httpx.Client:
        """A client over a real loopback socket (chunked transfer, connection behaviour)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def client(self, key: str | None = None) -> httpx.Client:
        if self._lifespan is None and self._socket is None:
            self._lifespan = TestClient(self.app)
            self._lifespan.__enter__()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # Errors come back as a server sends them (a 500), not raised into the test.
        return TestClient(self.app, headers=headers, raise_server_exceptions=False, follow_redirects=False)


@pytest.fixture
def live_server(settings: Settings, engine: Engine) -> Iterator[LiveServer]:
    with LiveServer(settings, engine) as server:
        yield server


@pytest.fixture
def api(live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str]) -> Iterator[httpx.Client]:
    """An in-process HTTP client of the app with an all-scopes key of the default tenant."""
    with live_server.client(make_key(tenant)) as client:
        yield client


@pytest.fixture
def run_cli(database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., tuple[int, Any, str]]]:
    """`taskmeter ARGS...` in this process: (exit code, JSON stdout or None, stderr)."""
    monkeypatch.setenv("TASKMETER_DATABASE_URL", database_url)
    monkeypatch.setenv("TASKMETER_SECRET_KEY", TEST_SECRET)
    get_settings.cache_clear()

    def invoke(*argv: str) -> tuple[int, Any, str]:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, json.loads(captured.out) if captured.out.strip() else None, captured.err

    yield invoke
    get_settings.cache_clear()
