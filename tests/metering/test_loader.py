"""The loader's database side (`metering.events.loader.load`) without NATS: messages of the ingest log
stored with the HTTP path's function, the verdicts it records, the quarantine of what it cannot
store, and the rollup of events that reach the database after later-accepted ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, func, select

from metering.core.db import unit_of_work
from metering.core.event_columns import DIGEST
from metering.core.tables import events, load_verdicts, log_quarantine, task_usage
from metering.core.tenants import Tenant
from metering.events.ingest import ingest_events, prepare_rows, to_us, validate_items
from metering.events.ingest_log import envelope
from metering.events.loader import LogMessage, Outcome, load, state_of
from metering.rollup.pipeline import rollup_tenant
from tests.factories import make_event

ACCEPTED = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
LOADED = ACCEPTED + timedelta(minutes=5)


def message(
    tenant: Tenant, event: dict[str, Any], *, accepted: datetime = ACCEPTED, seq: int = 1
) -> LogMessage:
    """A message as the API publishes it: the validated event, its tenant, when it was accepted."""
    validated = validate_items([event]).events[0]
    return LogMessage(data=envelope(tenant.id, to_us(accepted), validated), subject="t", stream_seq=seq)


def load_now(engine: Engine, messages: list[LogMessage]) -> list[Outcome]:
    with unit_of_work(engine) as session:
        return load(session, messages, now=LOADED)


def stored_ids(engine: Engine, tenant: Tenant) -> list[str]:
    with engine.connect() as connection:
        query = select(events.c.event_id).where(events.c.tenant_id == tenant.id).order_by(events.c.seq)
        return list(connection.execute(query).scalars())


class TestStoring:
    def test_events_are_stored_as_of_when_the_api_accepted_them(self, engine: Engine, tenant: Tenant) -> None:
        sent = [make_event(id="a"), make_event(id="b", type="task.completed")]
        assert load_now(engine, [message(tenant, e) for e in sent]) == [Outcome.STORED, Outcome.STORED]
        with engine.connect() as connection:
            rows = connection.execute(
                select(events.c.event_id, events.c.ingested_us).where(events.c.tenant_id == tenant.id)
            ).all()
        assert sorted(rows) == [("a", to_us(ACCEPTED)), ("b", to_us(ACCEPTED))]

    def test_the_rows_are_those_of_direct_ingestion(
        self, engine: Engine, tenant: Tenant, make_tenant: Any
    ) -> None:
        other = make_tenant("direct")
        event = make_event(id="same", metadata={"trace": "x"}, cache_read_tokens=100)
        load_now(engine, [message(tenant, event)])
        with unit_of_work(engine) as session:
            ingest_events(session, other.id, [event], now=ACCEPTED)
        with engine.connect() as connection:
            rows = connection.execute(select(events).order_by(events.c.seq)).all()
        through_log, direct = (row._asdict() for row in rows)
        for row in (through_log, direct):
            del row["seq"], row["tenant_id"]
        assert through_log == direct

    def test_a_redelivered_message_stores_nothing_twice_and_says_stored(
        self, engine: Engine, tenant: Tenant
    ) -> None:
        sent = message(tenant, make_event(id="once"))
        load_now(engine, [sent])
        assert load_now(engine, [sent]) == [Outcome.STORED]  # the loader died before its ack
        assert stored_ids(engine, tenant) == ["once"]
        with unit_of_work(engine) as session:
            assert state_of(session, tenant.id, "once").state == "stored"  # type: ignore[union-attr]


class TestVerdicts:
    def test_a_later_copy_is_a_duplicate(self, engine: Engine, tenant: Tenant) -> None:
        event = make_event(id="dup")
        load_now(engine, [message(tenant, event)])
        later = message(tenant, event, accepted=ACCEPTED + timedelta(hours=1))
        assert load_now(engine, [later]) == [Outcome.DUPLICATE]
        assert stored_ids(engine, tenant) == ["dup"]
        with unit_of_work(engine) as session:
            state = state_of(session, tenant.id, "dup")
        assert state is not None and state.state == "duplicate" and state.event is not None
        assert state.event.input_tokens == event["input_tokens"]

    def test_other_content_under_a_stored_id_is_a_conflict_and_the_stored_event_stays(
        self, engine: Engine, tenant: Tenant
    ) -> None:
        load_now(engine, [message(tenant, make_event(id="c", input_tokens=10, output_tokens=1))])
        other = message(
            tenant,
            make_event(id="c", input_tokens=99, output_tokens=1),
            accepted=ACCEPTED + timedelta(seconds=1),
        )
        assert load_now(engine, [other]) == [Outcome.CONFLICT]
        with unit_of_work(engine) as session:
            state = state_of(session, tenant.id, "c")
            verdict = session.execute(select(load_verdicts)).one()
        assert state is not None and state.state == "conflict" and state.event is not None
        assert state.event.input_tokens == 10
        assert "different content" in (state.detail or "")
        assert (
            verdict.content_hash
            == prepare_rows(
                validate_items([make_event(id="c", input_tokens=99, output_tokens=1)]),
                tenant.id,
                now=ACCEPTED,
            ).rows[0][DIGEST]
        )

    def test_unknown_ids_have_no_state(self, engine: Engine, tenant: Tenant) -> None:
        with unit_of_work(engine) as session:
            assert state_of(session, tenant.id, "never-sent") is None


class TestPoison:
    def test_an_undecodable_message_is_quarantined_whole_and_the_rest_stored(
        self, engine: Engine, tenant: Tenant
    ) -> None:
        garbage = LogMessage(data=b"\xff not json", subject="taskmeter.events.1.x", stream_seq=7)
        good = message(tenant, make_event(id="fine"), seq=8)
        assert load_now(engine, [garbage, good]) == [Outcome.QUARANTINED, Outcome.STORED]
        with engine.connect() as connection:
            kept = connection.execute(select(log_quarantine)).one()
        assert (kept.payload, kept.stream_seq, kept.tenant_id, kept.event_id) == (
            b"\xff not json",
            7,
            None,
            None,
        )
        assert kept.reason.startswith("undecodable")
        assert stored_ids(engine, tenant) == ["fine"]

    def test_an_event_invalid_at_load_is_quarantined_with_its_reasons(
        self, engine: Engine, tenant: Tenant
    ) -> None:
        bad = {
            "tenant": tenant.id,
            "accepted_us": to_us(ACCEPTED),
            "event": {**make_event(id="bad"), "input_tokens": -1},
        }
        assert load_now(engine, [LogMessage(data=orjson.dumps(bad))]) == [Outcome.QUARANTINED]
        with unit_of_work(engine) as session:
            state = state_of(session, tenant.id, "bad")
        assert state is not None and state.state == "quarantined"
        assert "invalid at load: input_tokens" in (state.detail or "")
        assert stored_ids(engine, tenant) == []

    def test_an_envelope_without_its_parts_is_undecodable(self, engine: Engine, tenant: Tenant) -> None:
        shapes = [
            b"[]",
            b'{"tenant": "1", "accepted_us": 1, "event": {}}',
            b'{"tenant": true, "accepted_us": 1, "event": {}}',
        ]
        assert load_now(engine, [LogMessage(data=d) for d in shapes]) == [Outcome.QUARANTINED] * 3


class TestTheSendingKey:
    """The envelope names the key that sent the event; the stored event keeps it, as direct
    ingestion does (`GET /v1/tasks/{task}/events` shows it)."""

    def test_each_event_is_stored_with_its_key(self, engine: Engine, tenant: Tenant) -> None:
        def keyed(event_id: str, key_id: int | None) -> LogMessage:
            validated = validate_items([make_event(id=event_id)]).events[0]
            return LogMessage(data=envelope(tenant.id, to_us(ACCEPTED), validated, key_id))

        # Same tenant and instant, other keys: each event keeps its own.
        assert load_now(engine, [keyed("k7", 7), keyed("k9", 9), keyed("none", None)]) == [Outcome.STORED] * 3
        with engine.connect() as connection:
            rows = connection.execute(
                select(events.c.event_id, events.c.key_id).where(events.c.tenant_id == tenant.id)
            ).all()
        assert sorted(rows, key=lambda r: r[0]) == [("k7", 7), ("k9", 9), ("none", None)]

    def test_a_key_that_is_not_a_positive_integer_is_undecodable(self, engine: Engine, tenant: Tenant) -> None:
        event = validate_items([make_event(id="x")]).events[0]
        bodies = [{"tenant": tenant.id, "accepted_us": to_us(ACCEPTED), "event": event, "key": key}
                  for key in ("7", True, 0, -3)]  # fmt: skip
        outcomes = load_now(engine, [LogMessage(data=orjson.dumps(b)) for b in bodies])
        assert outcomes == [Outcome.QUARANTINED] * 4
        assert stored_ids(engine, tenant) == []


class TestLateEventsAndTheWatermark:
    def test_events_loaded_after_later_ones_were_rolled_up_are_rolled_up(
        self, engine: Engine, tenant: Tenant
    ) -> None:
        """The rollup's watermark is the events' insertion sequence, not their time nor when they
        were accepted: an event the loader inserts late gets a sequence number past the watermark
        and the next rollup reads it, however old its time or acceptance."""
        with unit_of_work(engine) as session:
            ingest_events(
                session,
                tenant.id,
                [make_event(id="direct", task="t", input_tokens=100, output_tokens=0)],
                now=LOADED,
            )
        first = rollup_tenant(engine, tenant, now=LOADED)
        accepted_earlier = message(
            tenant, make_event(id="late", task="t", input_tokens=50, output_tokens=0), accepted=ACCEPTED
        )
        load_now(engine, [accepted_earlier])
        second = rollup_tenant(engine, tenant, now=LOADED)
        assert second.watermark > first.watermark and second.events_read == 1
        with engine.connect() as connection:
            tokens, count = connection.execute(
                select(task_usage.c.input_tokens, task_usage.c.usage_events).where(
                    task_usage.c.tenant_id == tenant.id
                )
            ).one()
            newest = connection.execute(select(func.max(events.c.seq))).scalar_one()
        assert (tokens, count) == (150, 2)
        assert second.watermark == newest
