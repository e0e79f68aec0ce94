"""Attribution: the `actor` and `agent` of events, through every way in, and the rollup's usage per
actor and agent against a plain Python reference."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from metering.adapters.cloudevents import from_batch
from metering.adapters.otlp import spans_to_events
from metering.core.db import unit_of_work
from metering.core.tables import events, usage_daily
from metering.core.tenants import Tenant
from metering.events.ingest import find_event, ingest_events, to_us
from metering.events.schemas import event_scope
from metering.rollup.pipeline import rollup_tenant
from tests.factories import make_event

FIXTURES = Path(__file__).parents[1] / "fixtures"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
# The tenant's own price, per million tokens: exact Decimal references without genai-prices.
PRICE = {
    "provider": "acme-ai",
    "model": "acme-large",
    "input": "3.00",
    "output": "15.00",
    "cache_read": "0.30",
}


def ingest(engine: Engine, tenant: Tenant, batch: list[dict[str, Any]], *, now: datetime = NOW):  # type: ignore[no-untyped-def]
    with unit_of_work(engine) as session:
        return ingest_events(session, tenant.id, batch, now=now)


def stored(engine: Engine, tenant: Tenant, event_id: str) -> dict[str, Any]:
    with unit_of_work(engine) as session:
        found = find_event(session, tenant.id, event_id)
    assert found is not None
    return found


class TestValidation:
    @pytest.mark.parametrize("field", ["actor", "agent"])
    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("x" * 257, "at most 256 characters"),
            ("", "at least 1 character"),
            ("ben\x00@acme.com", "must not contain NUL characters"),
            ("ben\n@acme.com", "must not contain control characters"),
            ("ben\x7f", "must not contain control characters"),
            (42, "valid string"),
        ],
    )
    def test_a_bad_value_is_rejected_naming_the_field(
        self, engine: Engine, tenant: Tenant, field: str, value: Any, message: str
    ) -> None:
        result = ingest(engine, tenant, [make_event(**{field: value})])
        assert result.accepted == 0
        [rejected] = result.rejected
        assert [e.field for e in rejected.errors] == [field]
        assert message in rejected.errors[0].message

    def test_the_longest_and_unicode_values_are_stored_as_given(self, engine: Engine, tenant: Tenant) -> None:
        event = make_event(id="long", actor="a" * 256, agent="bén/コーデックス-3")
        assert ingest(engine, tenant, [event]).accepted == 1
        found = stored(engine, tenant, "long")
        assert (found["actor"], found["agent"]) == ("a" * 256, "bén/コーデックス-3")

    def test_null_is_absent(self, engine: Engine, tenant: Tenant) -> None:
        assert (
            ingest(
                engine, tenant, [make_event(id="n", actor=None, agent=None) | {"actor": None, "agent": None}]
            ).accepted
            == 1
        )
        found = stored(engine, tenant, "n")
        assert found["actor"] is None and found["agent"] is None

    def test_the_scope_of_an_event(self) -> None:
        event = make_event(actor="ben@acme.com", task_type="support_ticket")
        assert event_scope(event) == {
            "customer": "acme",
            "actor": "ben@acme.com",
            "agent": None,
            "task_type": "support_ticket",
        }


class TestReplays:
    def test_an_event_without_attribution_keeps_its_digest(self, engine: Engine, tenant: Tenant) -> None:
        """Stored before events had actor and agent, an event's replay is still a duplicate: its
        digest is computed as it was."""
        event = make_event(id="old", time="2026-10-15T12:00:00Z")
        ingest(engine, tenant, [event])
        values = (
            "old",
            "usage",
            to_us(datetime(2026, 10, 15, 12, tzinfo=UTC)),
            "acme",
            "task-1",
            None,
            "openai",
            "gpt-4o",
            1200,
            300,
            0,
            0,
            0,
            None,
        )
        legacy = hashlib.blake2b(orjson.dumps(values), digest_size=16).hexdigest()
        with engine.connect() as connection:
            assert connection.execute(select(events.c.content_hash)).scalar_one() == legacy
        assert ingest(engine, tenant, [event]).duplicates == 1

    def test_the_same_id_with_another_actor_is_a_conflict(self, engine: Engine, tenant: Tenant) -> None:
        ingest(engine, tenant, [make_event(id="e", actor="ben@acme.com")])
        assert ingest(engine, tenant, [make_event(id="e", actor="ben@acme.com")]).duplicates == 1
        for changed in (
            make_event(id="e", actor="ann@acme.com"),
            make_event(id="e"),
            make_event(id="e", actor="ben@acme.com", agent="x"),
        ):
            result = ingest(engine, tenant, [changed])
            assert result.conflicts == 1 and result.accepted == 0


class TestWaysIn:
    def test_http_batch(self, api: Any, engine: Engine, tenant: Tenant) -> None:
        response = api.post(
            "/v1/events",
            json=[make_event(id="h1", actor="ben@acme.com", agent="ben/codex-3"), make_event(id="h2")],
        )
        assert response.status_code == 200 and response.json()["accepted"] == 2
        first = api.get("/v1/events/h1").json()
        assert (first["actor"], first["agent"]) == ("ben@acme.com", "ben/codex-3")
        second = api.get("/v1/events/h2").json()
        assert second["actor"] is None and second["agent"] is None

    def test_http_batch_names_the_bad_field(self, api: Any) -> None:
        response = api.post("/v1/events", json=[make_event(id="bad", agent="x" * 300)])
        [rejected] = response.json()["rejected"]
        assert rejected["errors"][0]["field"] == "agent"

    def test_jsonl_file(self, tmp_path: Path, run_cli: Any, engine: Engine) -> None:
        run_cli("tenants", "create", "files")
        path = tmp_path / "events.jsonl"
        lines = [make_event(id="j1", actor="ben@acme.com", agent="ben/codex-3"), make_event(id="j2", actor="ben@acme.com"),
                 make_event(id="j3", actor="bad\x00")]  # fmt: skip
        path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        _, out, _ = run_cli("ingest", str(path), "--tenant", "files")
        assert (out["accepted"], out["rejected"]) == (2, 1)
        with engine.connect() as connection:
            rows = connection.execute(
                select(events.c.event_id, events.c.actor, events.c.agent).order_by(events.c.event_id)
            ).all()
        assert [tuple(r) for r in rows] == [
            ("j1", "ben@acme.com", "ben/codex-3"),
            ("j2", "ben@acme.com", None),
        ]

    def test_otlp_span_and_resource_attributes(self) -> None:
        result = spans_to_events(json.loads((FIXTURES / "otlp" / "attribution.json").read_text()))
        assert result.rejected == []
        who = {e["task"]: (e.get("actor"), e.get("agent")) for e in result.events}
        assert who == {
            "t-resource": (
                "ben@acme.com",
                "ben/codex-3",
            ),  # the resource's taskmeter.actor and gen_ai.agent.name
            "t-span": ("ben@acme.com", "ben/reviewer"),  # the span's taskmeter.agent wins
            "t-id": ("ben@acme.com", "asst_42"),  # gen_ai.agent.id before gen_ai.agent.name
            "t-enduser": ("ann@acme.com", "ben/codex-3"),  # the span's enduser.id wins over the resource
            "t-nobody": (None, None),
            "t-semconv": ("svc-batch", "7"),  # enduser.id; an integer gen_ai.agent.id as its digits
        }

    def test_otlp_over_http(self, api: Any) -> None:
        body = (FIXTURES / "otlp" / "attribution.json").read_bytes()
        assert (
            api.post(
                "/v1/otlp/v1/traces", content=body, headers={"content-type": "application/json"}
            ).status_code
            == 200
        )
        found = api.get("/v1/events/otel:7a3f0c1d2e4b5a69788796a5b4c3d2e1:1000000000000004").json()
        assert (found["actor"], found["agent"]) == ("ann@acme.com", "ben/codex-3")

    def test_cloudevents_extension_attributes(self, api: Any) -> None:
        body = (FIXTURES / "cloudevents" / "attribution.json").read_bytes()
        converted = from_batch(json.loads(body))
        assert [(e.get("actor"), e.get("agent")) for e in converted.events] == [
            ("ben@acme.com", "ben/codex-3"),
            ("ben@acme.com", None),
        ]
        assert converted.rejected == [
            {
                "index": 2,
                "id": "ce-attr-3",
                "errors": [{"field": "actor", "message": "must be a non-empty string"}],
            }
        ]
        response = api.post(
            "/v1/events", content=body, headers={"content-type": "application/cloudevents-batch+json"}
        )
        assert response.json()["accepted"] == 2
        found = api.get("/v1/events/ce-attr-1").json()
        assert (found["actor"], found["agent"]) == ("ben@acme.com", "ben/codex-3")


def _reference(
    batches: list[list[dict[str, Any]]],
) -> dict[tuple[str, str, str], tuple[int, int, int, Decimal]]:
    """Per (customer, actor, agent): usage events, input and output tokens and the exact cost, each
    distinct event id counted once (its first version), from the events alone."""
    seen: set[str] = set()
    out: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for batch in batches:
        for e in batch:
            if e["id"] in seen:
                continue
            seen.add(e["id"])
            if e["type"] != "usage":
                continue
            row = out[(e["customer"], e.get("actor") or "", e.get("agent") or "")]
            cached = e.get("cache_read_tokens", 0)
            row[0] += 1
            row[1] += e["input_tokens"]
            row[2] += e["output_tokens"]
            row[3] += (Decimal(e["input_tokens"] - cached) * Decimal("3.00") + Decimal(cached) * Decimal("0.30")
                       + Decimal(e["output_tokens"]) * Decimal("15.00")) / 10**6  # fmt: skip
    return {key: (n, i, o, cost) for key, (n, i, o, cost) in out.items()}


def _stored(engine: Engine, tenant: Tenant) -> dict[tuple[str, str, str], tuple[int, int, int, Decimal]]:
    u = usage_daily.c
    out: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    with engine.connect() as connection:
        for r in connection.execute(select(usage_daily).where(u.tenant_id == tenant.id)):
            row = out[(r.customer, r.actor, r.agent)]
            row[0] += r.usage_events
            row[1] += r.input_tokens
            row[2] += r.output_tokens
            row[3] += Decimal(r.cost_nanos).scaleb(-9) + Decimal(r.cost_rem).scaleb(-15)
    return {key: tuple(row) for key, row in out.items()}  # type: ignore[misc]


class TestRollupByActorAndAgent:
    PEOPLE = [None, "ann@acme.com", "ben@acme.com"]
    AGENTS = [None, "ben/codex-1", "ben/codex-2", "triage"]

    def random_batch(self, rng: random.Random, start: int, size: int, base: datetime) -> list[dict[str, Any]]:
        batch = []
        for n in range(start, start + size):
            at = base + timedelta(hours=rng.randrange(0, 24 * 30))
            kind = rng.choice(["usage", "usage", "usage", "task.started", "task.completed"])
            event: dict[str, Any] = {"id": f"r{n}", "type": kind, "time": at.isoformat().replace("+00:00", "Z"),
                                     "customer": rng.choice(["acme", "globex"]), "task": f"t{rng.randrange(12)}"}  # fmt: skip
            if kind == "usage":
                inp = rng.randrange(0, 50_000)
                event |= {"provider": "acme-ai", "model": "acme-large", "input_tokens": inp, "output_tokens": rng.randrange(0, 5_000),
                          "cache_read_tokens": rng.randrange(0, inp + 1)}  # fmt: skip
            actor, agent = rng.choice(self.PEOPLE), rng.choice(self.AGENTS)
            event |= ({"actor": actor} if actor else {}) | ({"agent": agent} if agent else {})
            batch.append(event)
        return batch

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_usage_per_actor_and_agent_equals_the_reference(
        self, engine: Engine, make_tenant: Any, seed: int
    ) -> None:
        """Random batches, some replayed, some late (times before events already rolled up), rolled
        up between batches: the figures per (customer, actor, agent) are the reference's."""
        from pricing import service

        tenant = make_tenant(f"attr-{seed}")
        with unit_of_work(engine) as session:
            service.load_config(session, tenant, json.dumps({"prices": [PRICE]}), now=NOW)
        rng = random.Random(seed)
        batches: list[list[dict[str, Any]]] = []
        for round_ in range(5):
            base = datetime(2026, 9, 1, tzinfo=UTC) + timedelta(
                days=20 * round_ if round_ % 2 else 0
            )  # odd rounds: later
            batch = self.random_batch(rng, 1000 * round_, rng.randrange(20, 80), base)
            if batches and rng.random() < 0.7:  # replays of earlier events, in the same batch as new ones
                batch += rng.sample(batches[-1], min(10, len(batches[-1])))
            result = ingest(engine, tenant, batch)
            assert not result.rejected
            batches.append(batch)
            rollup_tenant(engine, tenant, now=NOW)
            assert _stored(engine, tenant) == _reference(batches)
        assert any(
            actor == "" for _, actor, _ in _stored(engine, tenant)
        )  # usage that named nobody is kept apart
