"""POST /v1/events through real HTTP: limits, errors, scopes, tenants, idempotency."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
from sqlalchemy import Engine, func, select

from metering.core.tables import events
from metering.core.tenants import Tenant
from tests.conftest import LiveServer
from tests.factories import make_event


def count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(events)).scalar_one())


class TestIngestBatches:
    def test_batch_answer(self, api: httpx.Client) -> None:
        batch = [make_event(id="a"), make_event(id="b", input_tokens=5, cache_read_tokens=6), make_event(id="c")]
        response = api.post("/v1/events", json=batch)
        assert response.status_code == 200
        assert response.json() == {
            "accepted": 2,
            "duplicates": 0,
            "conflicts": 0,
            "rejected": [
                {"index": 1, "id": "b", "errors": [{"field": "cache_read_tokens", "message": "cache_read_tokens must not exceed input_tokens (input_tokens includes cache reads)"}]}
            ],
        }

    def test_replay_is_all_duplicates(self, api: httpx.Client) -> None:
        batch = [make_event(id=f"r{i}") for i in range(10)]
        api.post("/v1/events", json=batch)
        assert api.post("/v1/events", json=batch).json() == {"accepted": 0, "duplicates": 10, "conflicts": 0, "rejected": []}

    def test_conflict_is_reported(self, api: httpx.Client) -> None:
        api.post("/v1/events", json=[make_event(id="x", output_tokens=1)])
        body = api.post("/v1/events", json=[make_event(id="x", output_tokens=2)]).json()
        assert body["conflicts"] == 1 and body["rejected"][0]["id"] == "x"

    def test_atomic_rejection_is_422_and_stores_nothing(self, api: httpx.Client, engine: Engine) -> None:
        response = api.post("/v1/events?atomic=true", json=[make_event(id="ok"), make_event(id="bad", type="nope")])
        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "invalid"
        assert body["detail"][0]["index"] == 1 and body["detail"][0]["errors"][0]["field"] == "type"
        assert count(engine) == 0

    def test_atomic_valid_batch_is_stored(self, api: httpx.Client, engine: Engine) -> None:
        assert api.post("/v1/events?atomic=true", json=[make_event(id="ok")]).json()["accepted"] == 1
        assert count(engine) == 1

    def test_stored_event_can_be_read_back(self, api: httpx.Client) -> None:
        api.post("/v1/events", json=[make_event(id="back", time="2026-10-01T02:00:00+02:00")])
        body = api.get("/v1/events/back").json()
        assert body["time"] == "2026-10-01T00:00:00Z" and body["input_tokens"] == 1200


class TestBadRequests:
    def test_malformed_json_gets_400_with_position(self, api: httpx.Client) -> None:
        response = api.post("/v1/events", content=b'[{"id": "a",\n "type": }]', headers={"content-type": "application/json"})
        assert response.status_code == 400
        body = response.json()
        assert body["error"] == "malformed_json"
        assert body["detail"]["line"] == 2 and "line 2" in body["message"]

    def test_not_an_array(self, api: httpx.Client) -> None:
        response = api.post("/v1/events", json=make_event())
        assert response.status_code == 422
        assert response.json()["detail"] == [{"field": "body", "message": "expected an array of events, got an object"}]

    def test_too_many_events_gets_413_with_limits(self, api: httpx.Client, engine: Engine) -> None:
        response = api.post("/v1/events", json=[make_event(id=f"e{i}") for i in range(10_001)])
        assert response.status_code == 413
        assert "10,000 events" in response.json()["message"] and "10,485,760 bytes" in response.json()["message"]
        assert count(engine) == 0

    def test_too_many_bytes_gets_413(self, api: httpx.Client) -> None:
        big = [make_event(id="big", metadata={f"k{i}": "v" * 1000 for i in range(60)})] * 200
        response = api.post("/v1/events", content=orjson.dumps(big), headers={"content-type": "application/json"})
        assert response.status_code == 413

    def test_chunked_body_past_the_limit_gets_413(self, api: httpx.Client) -> None:
        def body():  # no Content-Length: the server must count as it reads
            yield b"["
            for i in range(12_000):
                yield orjson.dumps(make_event(id=f"c{i}", metadata={"pad": "x" * 1000})) + b","
            yield b"{}]"

        response = api.post("/v1/events", content=body(), headers={"content-type": "application/json"})
        assert response.status_code == 413

    def test_wrong_query_parameter_is_422_naming_it(self, api: httpx.Client) -> None:
        response = api.post("/v1/events?atomic=maybe", json=[])
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == "query.atomic"


class TestAuth:
    def test_no_key_is_401(self, live_server: LiveServer) -> None:
        with live_server.client() as client:
            response = client.post("/v1/events", json=[make_event()])
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"

    def test_wrong_key_is_401(self, live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str]) -> None:
        key = make_key(tenant)
        forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        for bad in (forged, "tm_000000000000_" + "x" * 43, "not-a-key"):
            with live_server.client(bad) as client:
                assert client.post("/v1/events", json=[make_event()]).status_code == 401

    def test_missing_scope_is_403(self, live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str]) -> None:
        with live_server.client(make_key(tenant, "read")) as client:
            response = client.post("/v1/events", json=[make_event()])
        assert response.status_code == 403 and "'ingest'" in response.json()["message"]
        with live_server.client(make_key(tenant, "ingest")) as client:
            assert client.get("/v1/events/x").status_code == 403

    def test_tenant_comes_from_the_key(
        self, live_server: LiveServer, make_tenant: Callable[..., Tenant], make_key: Callable[..., str], engine: Engine
    ) -> None:
        a, b = make_tenant("tenant-a"), make_tenant("tenant-b")
        with live_server.client(make_key(a)) as client_a, live_server.client(make_key(b)) as client_b:
            assert client_a.post("/v1/events", json=[make_event(id="secret-a")]).json()["accepted"] == 1
            # B cannot read A's event, and cannot write into A by naming it in the body.
            assert client_b.get("/v1/events/secret-a").status_code == 404
            sneaky = client_b.post("/v1/events", json=[{**make_event(id="x"), "tenant": "tenant-a"}]).json()
            assert sneaky["rejected"][0]["errors"][0] == {"field": "tenant", "message": "is not a known event field"}
            # B's own event with A's id is B's, and A's event is unchanged.
            assert client_b.post("/v1/events", json=[make_event(id="secret-a", output_tokens=1)]).json()["accepted"] == 1
            assert client_a.get("/v1/events/secret-a").json()["output_tokens"] == 300

    def test_revoked_key_is_401(self, live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str], engine: Engine) -> None:
        from datetime import UTC, datetime

        from metering.core.db import unit_of_work
        from metering.core.tenants import revoke_api_key

        key = make_key(tenant)
        with unit_of_work(engine) as session:
            revoke_api_key(session, tenant, key.split("_")[1], now=datetime.now(UTC))
        with live_server.client(key) as client:
            assert client.get("/v1/events/x").status_code == 401


def test_four_clients_replaying_1000_events_three_times(live_server: LiveServer, tenant: Tenant, make_key: Callable[..., str], engine: Engine) -> None:
    batch = [make_event(id=f"p{i}", task=f"t{i % 50}") for i in range(1000)]
    key = make_key(tenant, "ingest")

    def client_run(n: int) -> tuple[int, int]:
        accepted = duplicates = 0
        with live_server.client(key) as client:
            for round_ in range(3):
                shift = (n * 250 + round_ * 100) % 1000
                for start in range(0, 1000, 200):
                    chunk = (batch[shift:] + batch[:shift])[start : start + 200]
                    body = client.post("/v1/events", json=chunk).json()
                    accepted += body["accepted"]
                    duplicates += body["duplicates"]
        return accepted, duplicates

    with ThreadPoolExecutor(4) as pool:
        totals = list(pool.map(client_run, range(4)))
    assert sum(a for a, _ in totals) == 1000
    assert sum(d for _, d in totals) == 11_000
    assert count(engine) == 1000


class TestNoInputBreaksTheServer:
    """Whatever a client sends: a 2xx or a 4xx with a reason, and atomic batches all-or-nothing."""

    @staticmethod
    def events_strategy():  # type: ignore[no-untyped-def]
        from hypothesis import strategies as st

        value = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=12) | st.floats(allow_nan=False, allow_infinity=False)
        event = st.fixed_dictionaries(
            {"id": st.text(min_size=0, max_size=6), "type": st.sampled_from(["usage", "task.completed", "x"])},
            optional={
                "time": st.sampled_from(["2026-10-01T00:00:00Z", "2026-10-01", "nope"]),
                "customer": st.text(max_size=3), "task": st.text(max_size=3), "provider": st.text(max_size=3),
                "model": st.text(max_size=3), "input_tokens": value, "output_tokens": value,
                "cache_read_tokens": value, "metadata": st.dictionaries(st.text(max_size=3), value, max_size=2),
                "extra": value,
            },
        )  # fmt: skip
        return st.lists(event | value, max_size=6)

    def test_random_batches(self, api: httpx.Client, engine: Engine) -> None:
        from hypothesis import given, settings

        @settings(max_examples=80, deadline=None)
        @given(items=self.events_strategy())
        def run(items: list[object]) -> None:
            before = count(engine)
            response = api.post("/v1/events?atomic=true", json=items)
            assert response.status_code in (200, 422), response.text
            body = response.json()
            if response.status_code == 200:
                assert count(engine) == before + body["accepted"]
                assert body["rejected"] == []
            else:
                assert body["error"] == "invalid" and body["detail"]
                assert count(engine) == before  # nothing half-written

        run()

    def test_random_bytes(self, api: httpx.Client) -> None:
        from hypothesis import given, settings
        from hypothesis import strategies as st

        @settings(max_examples=60, deadline=None)
        @given(body=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
        def run(body: bytes) -> None:
            response = api.post("/v1/events", content=body, headers={"content-type": "application/json"})
            assert response.status_code in (200, 400, 422), response.text
            assert "error" in response.json() or "accepted" in response.json()

        run()
