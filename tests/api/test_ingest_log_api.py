"""POST /v1/events and GET /v1/events/{id} through the ingest log (TASKMETER_INGEST_LOG), on a
real NATS JetStream (a stream of each test's own) and a real socket, with loaders in process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import nats
import pytest
from sqlalchemy import Engine, func, select

from api.ingest_log import log_config
from api.settings import Settings
from metering.core.db import unit_of_work
from metering.core.tables import api_keys, events, log_quarantine
from metering.core.tenants import Tenant, create_api_key, key_prefix
from metering.events.ingest import ingest_events, to_us, validate_items
from metering.events.ingest_log import connect, envelope
from metering.events.loader import LoaderStats, run
from tests.conftest import TEST_SECRET, LiveServer
from tests.factories import make_event
from tests.support.nats import NATS_URL, log_stream

__all__ = ["log_stream"]  # fixture


@pytest.fixture
def log_settings(settings: Settings, log_stream: tuple[str, str]) -> Settings:
    stream, subject = log_stream
    return settings.model_copy(
        update={"ingest_log": NATS_URL, "ingest_log_stream": stream, "ingest_log_subject": subject}
    )


@pytest.fixture
def server(log_settings: Settings, engine: Engine) -> Iterator[LiveServer]:
    with LiveServer(log_settings, engine) as live:
        yield live


@pytest.fixture
def http(server: LiveServer, tenant: Tenant, make_key: Callable[..., str]) -> Iterator[httpx.Client]:
    with server.socket_client(make_key(tenant)) as client:
        yield client


@pytest.fixture
def load(log_settings: Settings, engine: Engine) -> Callable[[], LoaderStats]:
    """Runs a loader until the log has been empty for a moment."""

    def drain() -> LoaderStats:
        clock = lambda: datetime.now(UTC)  # noqa: E731
        return asyncio.run(run(log_config(log_settings), engine, clock=clock, idle_exit=0.5))

    return drain


def stored(engine: Engine, tenant: Tenant) -> list[str]:
    with engine.connect() as connection:
        query = select(events.c.event_id).where(events.c.tenant_id == tenant.id).order_by(events.c.event_id)
        return list(connection.execute(query).scalars())


class TestAccepting:
    def test_202_once_the_log_holds_the_batch_then_pending_then_stored(
        self, http: httpx.Client, engine: Engine, tenant: Tenant, load: Callable[[], LoaderStats]
    ) -> None:
        batch = [
            make_event(id="a"),
            make_event(id="b", input_tokens=5, cache_read_tokens=6),
            make_event(id="c"),
        ]
        answer = http.post("/v1/events", json=batch)
        assert answer.status_code == 202
        body = answer.json()
        assert (body["accepted"], body["duplicates"], body["conflicts"]) == (2, 0, 0)
        assert [(r["index"], r["id"]) for r in body["rejected"]] == [(1, "b")]
        assert "duplicates and conflicts" in body["note"].lower()
        assert stored(engine, tenant) == []  # not in the database yet
        assert http.get("/v1/events/a").json() == {
            "id": "a",
            "state": "pending",
            "detail": None,
            "decided_at": None,
            "event": None,
        }
        assert http.get("/v1/events/b").status_code == 404  # rejected when sent: never in the log

        stats = load()
        assert (stats.stored, stats.duplicates, stats.conflicts, stats.quarantined) == (2, 0, 0, 0)
        assert stored(engine, tenant) == ["a", "c"]
        state = http.get("/v1/events/a").json()
        assert (
            state["state"] == "stored"
            and state["event"]["id"] == "a"
            and state["event"]["input_tokens"] == 1200
        )

    def test_a_retry_is_absorbed_by_the_log_and_reported_as_duplicates(
        self, http: httpx.Client, engine: Engine, tenant: Tenant, load: Callable[[], LoaderStats]
    ) -> None:
        batch = [make_event(id=f"r{i}") for i in range(20)]
        assert http.post("/v1/events", json=batch).json()["accepted"] == 20
        again = http.post("/v1/events", json=batch).json()
        assert (again["accepted"], again["duplicates"]) == (0, 20)
        assert load().stored == 20
        after_load = http.post("/v1/events", json=batch).json()  # still within the window
        assert (after_load["accepted"], after_load["duplicates"]) == (0, 20)
        assert load().stored == 0
        assert len(stored(engine, tenant)) == 20

    def test_other_content_under_a_stored_id_is_a_conflict_decided_at_load(
        self, http: httpx.Client, engine: Engine, tenant: Tenant, load: Callable[[], LoaderStats]
    ) -> None:
        http.post("/v1/events", json=[make_event(id="x", input_tokens=10, output_tokens=1)])
        load()
        answer = http.post("/v1/events", json=[make_event(id="x", input_tokens=77, output_tokens=1)]).json()
        assert answer["accepted"] == 1  # the log does not know what the database holds
        assert load().conflicts == 1
        state = http.get("/v1/events/x").json()
        assert state["state"] == "conflict" and state["event"]["input_tokens"] == 10

    def test_atomic_publishes_nothing_when_an_event_is_invalid(
        self, http: httpx.Client, engine: Engine, tenant: Tenant, load: Callable[[], LoaderStats]
    ) -> None:
        batch = [make_event(id="ok"), make_event(id="bad", reasoning_tokens=10_000)]
        answer = http.post("/v1/events", params={"atomic": "true"}, json=batch)
        assert answer.status_code == 422
        assert load().stored == 0 and stored(engine, tenant) == []

    def test_bad_bodies_get_the_same_answers_as_without_the_log(self, http: httpx.Client) -> None:
        assert (
            http.post("/v1/events", content=b"[{", headers={"Content-Type": "application/json"}).status_code
            == 400
        )
        assert (
            http.post("/v1/events", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415
        )
        assert http.post("/v1/events", json={"id": "x"}).status_code == 422


def stored_keys(engine: Engine, tenant: Tenant) -> dict[str, int | None]:
    with engine.connect() as connection:
        query = select(events.c.event_id, events.c.key_id).where(events.c.tenant_id == tenant.id)
        return {row.event_id: row.key_id for row in connection.execute(query)}


def key_id_of(engine: Engine, key: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(api_keys.c.id).where(api_keys.c.prefix == key_prefix(key))).scalar_one())


class TestKeys:
    """The log path takes the keys the direct path takes, with the same checks
    (`api.routers.events.check_sender`), and the stored event keeps the key that sent it."""

    @pytest.fixture
    def verdict_key(self, engine: Engine, tenant: Tenant) -> tuple[str, int]:
        with unit_of_work(engine) as session:
            sent = [make_event(id="u-acme", customer="acme", task="t-acme"),
                    make_event(id="u-globex", customer="globex", task="t-globex")]  # fmt: skip
            assert not ingest_events(session, tenant.id, sent, now=datetime.now(UTC)).rejected
            key, key_id = create_api_key(
                session, tenant, frozenset({"verdict"}), secret=TEST_SECRET.encode(), now=datetime.now(UTC),
                customer="acme",
            )  # fmt: skip
        return key, key_id

    @staticmethod
    def verdict(event_id: str, task: str, customer: str = "acme", kind: str = "task.accepted") -> dict[str, str]:
        return {"id": event_id, "type": kind, "time": "2026-11-20T10:00:00Z", "customer": customer, "task": task}

    def test_an_ingest_keys_events_are_stored_with_it(
        self, server: LiveServer, engine: Engine, tenant: Tenant, make_key: Callable[..., str],
        load: Callable[[], LoaderStats],
    ) -> None:  # fmt: skip
        first, second = make_key(tenant, "ingest"), make_key(tenant, "ingest")
        with server.socket_client(first) as one, server.socket_client(second) as two:
            assert one.post("/v1/events", json=[make_event(id="one")]).status_code == 202
            assert two.post("/v1/events", json=[make_event(id="two")]).status_code == 202
        assert load().stored == 2
        assert stored_keys(engine, tenant) == {"one": key_id_of(engine, first), "two": key_id_of(engine, second)}

    def test_a_verdict_key_sends_its_customers_verdicts_and_they_keep_the_key(
        self, server: LiveServer, engine: Engine, tenant: Tenant, verdict_key: tuple[str, int],
        load: Callable[[], LoaderStats],
    ) -> None:  # fmt: skip
        key, key_id = verdict_key
        with server.socket_client(key) as client:
            answer = client.post("/v1/events", json=[self.verdict("v1", "t-acme"),
                                                     self.verdict("v2", "t-acme", kind="task.rejected")])  # fmt: skip
            assert (answer.status_code, answer.json()["accepted"]) == (202, 2)
        assert load().stored == 2
        assert {k: v for k, v in stored_keys(engine, tenant).items() if k.startswith("v")} == {"v1": key_id, "v2": key_id}

    def test_a_verdict_key_is_refused_what_the_direct_path_refuses(
        self, server: LiveServer, engine: Engine, tenant: Tenant, verdict_key: tuple[str, int],
        load: Callable[[], LoaderStats],
    ) -> None:  # fmt: skip
        key, _ = verdict_key
        with server.socket_client(key) as client:
            usage = client.post("/v1/events", json=[make_event(id="x1", customer="acme", task="t-acme")])
            assert (usage.status_code, usage.json()["detail"][0]["field"]) == (403, "[0].type")
            other = client.post("/v1/events", json=[self.verdict("x2", "t-globex", customer="globex")])
            assert (other.status_code, other.json()["detail"][0]["field"]) == (403, "[0].customer")
            # Its customer's name on another customer's task, or on no task: not found.
            assert client.post("/v1/events", json=[self.verdict("x3", "t-globex")]).status_code == 404
            assert client.post("/v1/events", json=[self.verdict("x4", "nobody")]).status_code == 404
            # One refused event refuses the batch: nothing of it reaches the log.
            mixed = [self.verdict("x5", "t-acme"), self.verdict("x6", "t-globex")]
            assert client.post("/v1/events", json=mixed).status_code == 404
            assert client.get("/v1/events/x5").status_code == 403  # no read scope
        assert load().stored == 0
        assert sorted(stored_keys(engine, tenant)) == ["u-acme", "u-globex"]


def plant(settings: Settings, tenant: Tenant, *payloads: bytes) -> None:
    """Messages published straight to the log, as no API would."""
    config = log_config(settings)

    async def publish() -> None:
        client, stream = await connect(config)
        for n, payload in enumerate(payloads):
            await stream.publish(f"{config.subject}.{tenant.id}.planted{n}", payload)
        await client.close()

    asyncio.run(publish())


class TestPoison:
    def test_an_undecodable_message_goes_to_the_quarantine_and_does_not_come_back(
        self, log_settings: Settings, engine: Engine, tenant: Tenant, load: Callable[[], LoaderStats]
    ) -> None:
        config = log_config(log_settings)
        plant(log_settings, tenant, b"not json at all")
        assert load().quarantined == 1
        assert load().batches == 0  # terminated: not delivered again
        with engine.connect() as connection:
            kept = connection.execute(select(log_quarantine)).one()
            assert connection.execute(select(func.count()).select_from(events)).scalar_one() == 0
        assert kept.payload == b"not json at all" and kept.reason.startswith("undecodable")

        async def remaining() -> int:
            client = await nats.connect(NATS_URL)
            info = await client.jetstream().stream_info(config.stream)
            await client.close()
            return int(info.state.messages)

        assert asyncio.run(remaining()) == 0

    def test_a_message_the_database_refuses_on_its_own_is_quarantined_and_its_batch_stored(
        self,
        log_settings: Settings,
        http: httpx.Client,
        engine: Engine,
        tenant: Tenant,
        load: Callable[[], LoaderStats],
    ) -> None:
        http.post("/v1/events", json=[make_event(id="before")])
        no_such_tenant = envelope(
            987_654, to_us(datetime.now(UTC)), validate_items([make_event(id="orphan")]).events[0]
        )
        plant(log_settings, tenant, no_such_tenant)
        http.post("/v1/events", json=[make_event(id="after")])
        stats = load()
        assert (stats.stored, stats.quarantined) == (2, 1)
        assert stored(engine, tenant) == ["after", "before"]
        with engine.connect() as connection:
            kept = connection.execute(select(log_quarantine)).one()
        assert (kept.tenant_id, kept.event_id) == (987_654, "orphan")
        assert kept.reason.startswith("refused by the database: ")


class TestLogUnavailable:
    def test_a_batch_the_log_does_not_acknowledge_in_time_is_a_503_to_retry(
        self,
        log_settings: Settings,
        engine: Engine,
        tenant: Tenant,
        make_key: Callable[..., str],
        load: Callable[[], LoaderStats],
    ) -> None:
        hurried = log_settings.model_copy(update={"ingest_log_publish_timeout_seconds": 1e-9})
        batch = [make_event(id=f"t{i}") for i in range(200)]
        with LiveServer(hurried, engine) as live, live.socket_client(make_key(tenant)) as http:
            answer = http.post("/v1/events", json=batch)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "2"
        assert "retry the batch" in answer.json()["message"]
        with LiveServer(log_settings, engine) as live, live.socket_client(make_key(tenant)) as http:
            assert http.post("/v1/events", json=batch).status_code == 202  # the retry
        load()
        assert stored(engine, tenant) == sorted(e["id"] for e in batch)  # once each, whatever the log held


def test_the_setting_must_be_a_nats_url() -> None:
    with pytest.raises(ValueError, match="nats://"):
        Settings(ingest_log="http://localhost:4222")
    assert Settings(ingest_log="").ingest_log is None
