"""Ingestion on a real database: exactly once, conflicts reported, atomic batches."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, select

from metering.core.db import unit_of_work
from metering.core.errors import InvalidInput
from metering.core.tables import events
from metering.core.tenants import Tenant
from metering.events.ingest import find_event, ingest_events
from metering.events.schemas import IngestResult
from tests.factories import make_event

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def ingest(engine: Engine, tenant: Tenant, items: list[object], atomic: bool = False) -> IngestResult:
    with unit_of_work(engine) as session:
        return ingest_events(session, tenant.id, items, now=NOW, atomic=atomic)


def stored(engine: Engine, tenant: Tenant | None = None) -> int:
    query = select(func.count()).select_from(events)
    if tenant is not None:
        query = query.where(events.c.tenant_id == tenant.id)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


class TestExactlyOnce:
    def test_replay_of_a_batch_changes_nothing(self, engine: Engine, tenant: Tenant) -> None:
        batch = [make_event(id=f"e{i}", input_tokens=i) for i in range(50)]
        assert ingest(engine, tenant, batch).accepted == 50
        replay = ingest(engine, tenant, batch)
        assert (replay.accepted, replay.duplicates, replay.conflicts, replay.rejected) == (0, 50, 0, [])
        assert stored(engine) == 50

    def test_same_id_twice_in_one_batch(self, engine: Engine, tenant: Tenant) -> None:
        event = make_event(id="dup")
        result = ingest(engine, tenant, [event, dict(event)])
        assert (result.accepted, result.duplicates) == (1, 1)

    def test_same_id_different_content_is_a_conflict(self, engine: Engine, tenant: Tenant) -> None:
        ingest(engine, tenant, [make_event(id="e1", input_tokens=100)])
        result = ingest(engine, tenant, [make_event(id="e1", input_tokens=101), make_event(id="e2")])
        assert (result.accepted, result.duplicates, result.conflicts) == (1, 0, 1)
        [conflict] = result.rejected
        assert (conflict.index, conflict.id, conflict.errors[0].field) == (0, "e1", "id")
        assert "different content" in conflict.errors[0].message
        with engine.connect() as connection:
            assert find_event(connection, tenant.id, "e1")["input_tokens"] == 100  # the first one stands

    def test_equal_content_in_other_spelling_is_a_duplicate(self, engine: Engine, tenant: Tenant) -> None:
        ingest(engine, tenant, [make_event(id="e1", time="2026-10-01T14:00:00+02:00")])
        result = ingest(engine, tenant, [make_event(id="e1", time="2026-10-01T12:00:00Z", cache_read_tokens=0)])
        assert (result.duplicates, result.conflicts) == (1, 0)

    def test_ids_are_per_tenant(self, engine: Engine, make_tenant: Callable[..., Tenant]) -> None:
        a, b = make_tenant("tenant-a"), make_tenant("tenant-b")
        assert ingest(engine, a, [make_event(id="same")]).accepted == 1
        assert ingest(engine, b, [make_event(id="same", input_tokens=5)]).accepted == 1
        assert (stored(engine, a), stored(engine, b)) == (1, 1)

    def test_concurrent_replays_store_each_event_once(self, engine: Engine, tenant: Tenant) -> None:
        batch = [make_event(id=f"c{i}", task=f"t{i % 37}", input_tokens=i) for i in range(1000)]
        chunks = [batch[i : i + 250] for i in range(0, 1000, 250)]

        def send(client: int) -> list[IngestResult]:
            # 4 clients, each sends all 1,000 events 3 times, in its own chunk order.
            order = chunks[client:] + chunks[:client]
            return [ingest(engine, tenant, chunk) for _ in range(3) for chunk in order]

        with ThreadPoolExecutor(4) as pool:
            results = [r for rs in pool.map(send, range(4)) for r in rs]
        assert sum(r.accepted for r in results) == 1000
        assert sum(r.duplicates for r in results) == 11_000
        assert not any(r.rejected for r in results)
        assert stored(engine) == 1000


class TestPartialAndAtomicBatches:
    def test_valid_events_are_stored_beside_rejected_ones(self, engine: Engine, tenant: Tenant) -> None:
        result = ingest(engine, tenant, [make_event(id="ok"), make_event(id="bad", output_tokens=-1)])
        assert result.accepted == 1
        assert [(r.index, r.id, r.errors[0].field) for r in result.rejected] == [(1, "bad", "output_tokens")]

    def test_atomic_batch_with_a_rejection_stores_nothing(self, engine: Engine, tenant: Tenant) -> None:
        with pytest.raises(InvalidInput) as raised:
            ingest(engine, tenant, [make_event(id="ok"), make_event(id="bad", output_tokens=-1)], atomic=True)
        assert raised.value.detail[0]["index"] == 1
        assert stored(engine) == 0

    def test_atomic_batch_with_a_conflict_stores_nothing(self, engine: Engine, tenant: Tenant) -> None:
        ingest(engine, tenant, [make_event(id="old", input_tokens=1)])
        with pytest.raises(InvalidInput):
            ingest(engine, tenant, [make_event(id="new"), make_event(id="old", input_tokens=2)], atomic=True)
        assert stored(engine) == 1

    def test_stored_event_is_normalized(self, engine: Engine, tenant: Tenant) -> None:
        ingest(engine, tenant, [make_event(id="n1", time="2026-10-01T00:30:00+05:30", metadata={"b": "2", "a": "1"})])
        with engine.connect() as connection:
            row = find_event(connection, tenant.id, "n1")
        assert row["time"] == datetime(2026, 9, 30, 19, 0, tzinfo=UTC)
        assert row["metadata"] == {"a": "1", "b": "2"}
