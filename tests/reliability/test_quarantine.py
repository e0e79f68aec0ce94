"""One stored event that billing cannot process never stops a tenant (issue 15).

Events outside the span every layer can represent are refused at the door now; these tests plant
them straight into `events`, as a database from before the bounds (or a hand-written row) holds
them, in a tenant west of UTC and in one at UTC+14, and show: the rollup succeeds and moves them
to the quarantine, the tenant's other events are rolled up, closed by the scheduler and
invoiced, every read answers, and an admin can release or drop them, audited.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update

from api.scheduler import Runtime, run_close
from api.settings import Settings
from metering.core.audit import audit_log
from metering.core.tables import events, quarantine, rollup_state, task_usage
from metering.events.ingest import to_us
from metering.rollup.pipeline import rollup_tenant
from metering.rollup.quarantine import REASONS
from pricing.tables import invoices
from tests.conftest import LiveServer
from tests.dashboard.conftest import sign_in
from tests.reports.conftest import Books, ended, make_books, started, usage  # noqa: F401 - fixtures

YEAR_1 = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
YEAR_0 = YEAR_1 - 14 * 3_600_000_000  # 0001-01-01T00:00:00+14:00: no calendar day in Python
YEAR_1600 = to_us(datetime(1600, 6, 1, tzinfo=UTC))
AFTER_OCTOBER = datetime(2026, 11, 2, 12, tzinfo=UTC)
ZONES = ["America/Los_Angeles", "Pacific/Kiritimati"]  # UTC-8/-7 and UTC+14


def plant(engine: Engine, tenant_id: int, event_id: str, time_us: int, *, task: str, **fields: Any) -> None:
    """A usage event written straight into `events`, bypassing validation."""
    row = {"tenant_id": tenant_id, "event_id": event_id, "type": "usage", "time_us": time_us, "customer": "acme",
           "task": task, "provider": "acme-ai", "model": "acme-large", "input_tokens": 1_000, "output_tokens": 10,
           "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0, "content_hash": "0" * 32,
           "ingested_us": 0} | fields  # fmt: skip
    with engine.begin() as connection:
        connection.execute(insert(events).values(**row))


def october(books: Books, task: str) -> None:
    books.send(
        started(task, "2026-10-10T09:00:00Z"),
        usage(task, "2026-10-10T09:30:00Z", input_tokens=1_000_000, output_tokens=100_000),
        ended(task, "2026-10-10T10:00:00Z", task_type="support_ticket"),
    )


@pytest.fixture(params=ZONES)
def planted(request: pytest.FixtureRequest, make_books: Callable[..., Books], engine: Engine) -> Books:  # noqa: F811
    """A tenant with one valid October task (a1) and three rows the rollup cannot take: one of
    them on a1 itself, at year 1 (at year 0 in UTC for a UTC+14 tenant), one at 1600."""
    books = make_books("west" if request.param.startswith("America") else "east", timezone=request.param)
    october(books, "a1")
    plant(engine, books.tenant.id, "ancient", YEAR_1, task="a1")
    plant(engine, books.tenant.id, "year-0", YEAR_0, task="old")
    plant(engine, books.tenant.id, "y1600", YEAR_1600, task="old")
    return books


def quarantined(engine: Engine, tenant_id: int) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(select(quarantine.c.event_id, quarantine.c.reason).where(quarantine.c.tenant_id == tenant_id))
        return dict(rows.all())


class TestRollup:
    def test_the_rollup_moves_them_aside_and_rolls_up_the_rest(self, planted: Books, engine: Engine) -> None:
        result = rollup_tenant(engine, planted.tenant, now=AFTER_OCTOBER)
        assert result.quarantined == 3
        assert quarantined(engine, planted.tenant.id) == dict.fromkeys(("ancient", "year-0", "y1600"), REASONS[1])
        with engine.connect() as connection:
            left = connection.execute(select(events.c.event_id).where(events.c.tenant_id == planted.tenant.id)).scalars().all()
            tasks = connection.execute(select(task_usage.c.task, task_usage.c.first_event_us, task_usage.c.usage_events)).all()
        assert len(left) == 3 and not {"ancient", "year-0", "y1600"} & set(left)  # a1's three valid events stay
        assert tasks == [("a1", to_us(datetime(2026, 10, 10, 9, tzinfo=UTC)), 1)]

        planted.send(usage("a2", "2026-10-20T12:00:00Z", input_tokens=200_000), ended("a2", "2026-10-20T13:00:00Z"))
        later = rollup_tenant(engine, planted.tenant, now=AFTER_OCTOBER)
        assert (later.events_read, later.quarantined) == (2, 0)
        with engine.connect() as connection:
            assert sorted(connection.execute(select(task_usage.c.task)).scalars()) == ["a1", "a2"]

    def test_a_rebuild_after_a_price_change_keeps_going(self, planted: Books, engine: Engine) -> None:
        rollup_tenant(engine, planted.tenant, now=AFTER_OCTOBER)
        planted.config({"prices": [{"provider": "acme-ai", "model": "acme-large", "input": "4.00", "output": "15.00"}]})
        plant(engine, planted.tenant.id, "late-bad", YEAR_1600, task="a1")
        with engine.begin() as connection:  # no price buckets: the change needs a rebuild from the first event
            connection.execute(update(rollup_state).where(rollup_state.c.tenant_id == planted.tenant.id).values(price_buckets=None))
        result = rollup_tenant(engine, planted.tenant, now=AFTER_OCTOBER)
        assert result.rebuilt and result.quarantined == 1
        assert len(quarantined(engine, planted.tenant.id)) == 4

    def test_a_price_change_applied_from_the_rollup_keeps_going(self, planted: Books, engine: Engine) -> None:
        rollup_tenant(engine, planted.tenant, now=AFTER_OCTOBER)
        planted.config({"prices": [{"provider": "acme-ai", "model": "acme-large", "input": "4.00", "output": "15.00"}]})
        plant(engine, planted.tenant.id, "late-bad", YEAR_1600, task="a1")
        result = rollup_tenant(engine, planted.tenant, now=AFTER_OCTOBER)
        assert result.repriced is not None and not result.rebuilt and result.quarantined == 1
        assert len(quarantined(engine, planted.tenant.id)) == 4

    def test_impossible_token_counts_are_set_aside_too(self, make_books: Callable[..., Books], engine: Engine) -> None:  # noqa: F811
        books = make_books()
        october(books, "a1")
        when = to_us(datetime(2026, 10, 11, tzinfo=UTC))
        plant(engine, books.tenant.id, "negative", when, task="a1", input_tokens=-5)
        plant(engine, books.tenant.id, "subsets", when, task="a1", cache_read_tokens=2_000)
        plant(engine, books.tenant.id, "no-model", when, task="a1", model=None)
        plant(engine, books.tenant.id, "unknown", when, task="a1", type="task.paused", input_tokens=0, output_tokens=0)
        rollup_tenant(engine, books.tenant, now=AFTER_OCTOBER)
        assert quarantined(engine, books.tenant.id) == {
            "negative": REASONS[2], "subsets": REASONS[3], "no-model": REASONS[4], "unknown": REASONS[5],
        }  # fmt: skip

    def test_newer_events_never_get_the_seqs_of_events_moved_aside(self, make_books: Callable[..., Books], engine: Engine) -> None:  # noqa: F811
        books = make_books()
        october(books, "a1")
        plant(engine, books.tenant.id, "newest-and-bad", YEAR_1600, task="a1")  # the table's highest seq
        rollup_tenant(engine, books.tenant, now=AFTER_OCTOBER)
        books.send(usage("a2", "2026-10-20T12:00:00Z", input_tokens=10))
        assert rollup_tenant(engine, books.tenant, now=AFTER_OCTOBER).events_read == 1


class TestBilling:
    def test_the_scheduler_closes_the_month_and_bills_the_valid_events(
        self, planted: Books, engine: Engine, settings: Settings
    ) -> None:
        planted.send(usage("a2", "2026-10-20T12:00:00Z", input_tokens=200_000), ended("a2", "2026-10-20T13:00:00Z"))
        closed = run_close(Runtime(settings, engine), now=AFTER_OCTOBER)
        assert (planted.tenant.name, "2026-10") in closed
        with engine.connect() as connection:
            bills = connection.execute(
                select(invoices.c.customer, invoices.c.period, invoices.c.status, invoices.c.total_minor)
                .where(invoices.c.tenant_id == planted.tenant.id)
            ).all()  # fmt: skip
        # acme is on `jobs`: a1 a support ticket (1.20), a2 a default job (0.50); nothing of the planted rows.
        assert bills == [("acme", "2026-10", "finalized", 170)]
        assert len(quarantined(engine, planted.tenant.id)) == 3


class TestReads:
    def test_every_read_answers_before_and_after_the_rollup(
        self, planted: Books, engine: Engine, live_server: LiveServer, make_key: Callable[..., str]
    ) -> None:
        with live_server.client(make_key(planted.tenant)) as api:
            before = api.get("/v1/events/year-0")
            assert before.status_code == 200 and before.json()["time"] is None and before.json()["quarantine"] is None
            assert api.get("/v1/events/y1600").json()["time"] == "1600-06-01T00:00:00Z"

            rollup_tenant(engine, planted.tenant, now=AFTER_OCTOBER)
            after = api.get("/v1/events/ancient")
            assert after.status_code == 200
            assert after.json()["time"] == "0001-01-01T00:00:00Z"
            assert after.json()["quarantine"]["reason"] == REASONS[1]
            task = api.get("/v1/tasks/a1")
            assert task.status_code == 200 and task.json()["first_event_at"] == "2026-10-10T09:00:00Z"
            assert api.get("/v1/tasks/old").status_code == 404  # only quarantined events: no task

            listed = api.get("/v1/quarantine").json()
            assert listed["count"] == 3
            assert {e["event_id"]: e["time"] for e in listed["events"]} == {
                "ancient": "0001-01-01T00:00:00Z", "year-0": None, "y1600": "1600-06-01T00:00:00Z",
            }  # fmt: skip
            assert {e["time_us"] for e in listed["events"]} == {YEAR_1, YEAR_0, YEAR_1600}

        with sign_in(live_server, make_key(planted.tenant, "read")) as browser:
            assert browser.get("/dashboard", params={"month": "2026-10"}).status_code == 200  # maybe still preparing
            page = browser.get("/dashboard", params={"month": "2026-10", "customer": "acme"})  # computed for the page
            assert page.status_code == 200
            assert "3 event(s) could not be processed" in page.text and "/dashboard/quarantine" in page.text
            explained = browser.get("/dashboard/quarantine")
            assert explained.status_code == 200 and "y1600" in explained.text and "not billed" in explained.text

    def test_the_quarantine_is_the_tenants_own(
        self, planted: Books, engine: Engine, live_server: LiveServer, make_key: Callable[..., str], make_tenant: Callable[..., Any]
    ) -> None:
        rollup_tenant(engine, planted.tenant, now=AFTER_OCTOBER)
        other = make_tenant("other")
        with live_server.client(make_key(other)) as api:
            assert api.get("/v1/quarantine").json() == {"count": 0, "events": [], "next_before": None}
            entry = _entries(engine, planted.tenant.id)["ancient"]
            assert api.post(f"/v1/quarantine/{entry}/drop").status_code == 404
            assert api.get("/v1/events/ancient").status_code == 404


def _entries(engine: Engine, tenant_id: int) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(select(quarantine.c.event_id, quarantine.c.id).where(quarantine.c.tenant_id == tenant_id))
        return dict(rows.all())


def _audit(engine: Engine, tenant_id: int) -> list[tuple[str, str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(audit_log.c.actor, audit_log.c.action, audit_log.c.target).where(audit_log.c.tenant_id == tenant_id).order_by(audit_log.c.id)
        )
        return [tuple(r) for r in rows if r.action.startswith("quarantine.")]


class TestReleaseAndDrop:
    def test_still_invalid_stays_dropped_goes_both_audited(
        self, planted: Books, engine: Engine, live_server: LiveServer, make_key: Callable[..., str]
    ) -> None:
        rollup_tenant(engine, planted.tenant, now=AFTER_OCTOBER)
        entries = _entries(engine, planted.tenant.id)
        with live_server.client(make_key(planted.tenant, "ingest,read")) as reader:
            assert reader.post(f"/v1/quarantine/{entries['ancient']}/drop").status_code == 403
        with live_server.client(make_key(planted.tenant)) as api:
            refused = api.post(f"/v1/quarantine/{entries['y1600']}/release")
            assert refused.status_code == 422
            assert refused.json()["detail"][0]["field"] == "time"
            assert "2000-01-01T00:00:00Z" in refused.json()["detail"][0]["message"]
            unrepresentable = api.post(f"/v1/quarantine/{entries['year-0']}/release")
            assert unrepresentable.status_code == 422 and unrepresentable.json()["detail"][0]["field"] == "time"
            assert set(_entries(engine, planted.tenant.id)) == {"ancient", "year-0", "y1600"}

            dropped = api.post(f"/v1/quarantine/{entries['ancient']}/drop")
            assert dropped.status_code == 200 and dropped.json()["dropped"] is True
            assert api.post(f"/v1/quarantine/{entries['ancient']}/drop").status_code == 404
            assert api.get("/v1/events/ancient").status_code == 404
        assert set(_entries(engine, planted.tenant.id)) == {"year-0", "y1600"}
        [(actor, action, target)] = _audit(engine, planted.tenant.id)
        assert actor.startswith("key:") and (action, target) == ("quarantine.drop", "event:ancient")

    def test_a_released_event_is_ingested_and_rolled_up(
        self, make_books: Callable[..., Books], engine: Engine, live_server: LiveServer, make_key: Callable[..., str]  # noqa: F811
    ) -> None:
        """An entry whose cause is fixed (here: one set aside by hand, its content valid) goes
        back into `events` with a new seq, and the next rollup counts it."""
        books = make_books()
        october(books, "a1")
        rollup_tenant(engine, books.tenant, now=AFTER_OCTOBER)
        with engine.begin() as connection:
            row = {"tenant_id": books.tenant.id, "seq": 999, "event_id": "fixed", "type": "usage",
                   "time_us": to_us(datetime(2026, 10, 12, tzinfo=UTC)), "customer": "acme", "task": "a1",
                   "provider": "acme-ai", "model": "acme-large", "input_tokens": 500, "output_tokens": 5,
                   "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0, "content_hash": "0" * 32,
                   "ingested_us": 0, "reason": "a row the driver refused", "quarantined_at": AFTER_OCTOBER}  # fmt: skip
            entry = connection.execute(insert(quarantine).values(**row).returning(quarantine.c.id)).scalar_one()
        with live_server.client(make_key(books.tenant)) as api:
            released = api.post(f"/v1/quarantine/{entry}/release")
            assert released.status_code == 200, released.text
            assert released.json() == {"id": entry, "event_id": "fixed", "released": True, "accepted": 1, "duplicates": 0}
            assert api.get("/v1/quarantine").json()["count"] == 0
        assert rollup_tenant(engine, books.tenant, now=AFTER_OCTOBER).events_read == 1
        with engine.connect() as connection:
            used = connection.execute(select(task_usage.c.input_tokens).where(task_usage.c.task == "a1")).scalar_one()
        assert used == 1_000_500
        assert _audit(engine, books.tenant.id)[0][1:] == ("quarantine.release", "event:fixed")

    def test_the_command_line_lists_releases_and_drops(
        self, planted: Books, engine: Engine, run: Callable[..., Any]
    ) -> None:
        rollup_tenant(engine, planted.tenant, now=AFTER_OCTOBER)
        code, listed, _ = run("quarantine", "list", "--tenant", planted.tenant.name)
        assert code == 0 and listed["count"] == 3
        entries = {e["event_id"]: e["id"] for e in listed["events"]}
        code, _, err = run("quarantine", "release", str(entries["y1600"]))
        assert code == 1 and "stays in quarantine" in err
        code, dropped, _ = run("quarantine", "drop", str(entries["y1600"]))
        assert code == 0 and dropped["dropped"] is True and dropped["tenant"] == planted.tenant.name
        assert run("quarantine", "list", "--tenant", planted.tenant.name)[1]["count"] == 2
        [(actor, action, target)] = _audit(engine, planted.tenant.id)
        assert actor.startswith("cli:") and (action, target) == ("quarantine.drop", "event:y1600")

