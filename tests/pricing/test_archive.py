"""`taskmeter archive`: closed months' events as Parquet partitions with manifests, dropped from the
database only after a verified copy, never for an open month; the rollup after a drop."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sqlalchemy import Engine, func, select, update

from metering.core.db import unit_of_work
from metering.core.errors import Conflict
from metering.core.event_columns import EVENT_COLUMNS, TEXT_COLUMNS
from metering.core.periods import parse_month
from metering.core.tables import archived_months, events, rollup_state, task_usage
from metering.core.tenants import Tenant
from metering.events.archive import (
    Archive,
    ArchivedHistory,
    ArchiveMismatch,
    checksum,
    read_archived_events,
)
from metering.events.ingest import ingest_events
from metering.rollup.archive_guard import check_rebuild
from metering.rollup.pipeline import bring_up_to_date
from metering.rollup.stores import store_for
from pricing import invoices, service
from pricing.archive import archive_tenant, restore_tenant
from tests.factories import make_event

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
NOVEMBER = parse_month("2026-11", "UTC")


def send(engine: Engine, tenant: Tenant, items: list[dict[str, Any]]) -> None:
    with unit_of_work(engine) as session:
        ingest_events(session, tenant.id, items, now=NOW)


def month_events(month: str, tasks: int) -> list[dict[str, Any]]:
    items = []
    for n in range(tasks):
        task = f"{month}-t{n}"
        items += [
            make_event(
                id=f"{task}-s",
                type="task.started",
                task=task,
                time=f"{month}-10T08:00:00Z",
                task_type="review",
            ),
            make_event(
                id=f"{task}-u",
                task=task,
                time=f"{month}-10T09:00:00Z",
                input_tokens=1000 + n,
                output_tokens=n,
                metadata={"trace": f"tr-{n}"},
            ),  # fmt: skip
            make_event(id=f"{task}-e", type="task.completed", task=task, time=f"{month}-11T10:00:00Z"),
        ]
    return items


@pytest.fixture
def billed(engine: Engine, tenant: Tenant) -> Tenant:
    """September and October closed (their invoices final), November open; all rolled up."""
    config = {"plans": [{"id": "tokens", "type": "per_token", "rates": {"input": "6.00", "output": "30.00", "cache_read": "0.60", "cache_write": "7.50"}}],
              "customers": [{"id": "acme", "plan": "tokens"}]}  # fmt: skip
    with unit_of_work(engine) as session:
        service.load_config(session, tenant, yaml.safe_dump(config), now=datetime(2026, 1, 1, tzinfo=UTC))
    send(engine, tenant, month_events("2026-09", 4) + month_events("2026-10", 5) + month_events("2026-11", 2))
    for month in ("2026-09", "2026-10"):
        with unit_of_work(engine) as session:
            invoices.close_period(session, tenant, parse_month(month, "UTC"), now=NOW)
    return tenant


def stored(engine: Engine, tenant: Tenant, month: str) -> pd.DataFrame:
    period = parse_month(month, "UTC")
    start, end = int(period.start.timestamp() * 1e6), int(period.end.timestamp() * 1e6)
    with engine.connect() as connection:
        rows = connection.execute(
            select(events)
            .where(events.c.tenant_id == tenant.id, events.c.time_us >= start, events.c.time_us < end)
            .order_by(events.c.seq)
        ).all()
    return pd.DataFrame(rows, columns=[c.name for c in events.columns])


def usage_rows(engine: Engine, tenant: Tenant) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [
            tuple(r)
            for r in connection.execute(
                select(task_usage).where(task_usage.c.tenant_id == tenant.id).order_by(task_usage.c.task)
            )
        ]


class TestArchive:
    def test_closed_months_become_parquet_partitions_with_manifests(
        self, engine: Engine, billed: Tenant, tmp_path: Path
    ) -> None:
        root = tmp_path / "archive"
        done = archive_tenant(engine, billed, before=NOVEMBER, url=str(root), drop=False, now=NOW)

        assert [(m.month, m.rows, m.new_rows, m.parts, m.dropped) for m in done] == [
            ("2026-09", 12, 12, 1, 0),
            ("2026-10", 15, 15, 1, 0),
        ]
        folder = root / f"tenant={billed.id}" / "month=2026-10"
        assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "part-00000.parquet"]
        table = pq.read_table(folder / "part-00000.parquet")
        assert table.num_rows == 15
        manifest = Archive(str(root)).manifest(billed.id, "2026-10")
        assert manifest is not None
        database = stored(engine, billed, "2026-10")
        assert (manifest.rows, manifest.checksum, manifest.max_seq) == (
            15,
            checksum(database),
            int(database["seq"].max()),
        )
        assert manifest.snapshot_at == NOW.isoformat()
        assert not (root / f"tenant={billed.id}" / "month=2026-11").exists()  # open: not archived
        assert len(stored(engine, billed, "2026-10")) == 15  # without --drop the database keeps them

    def test_the_reader_gives_the_rollup_readers_columns(
        self, engine: Engine, billed: Tenant, tmp_path: Path
    ) -> None:
        archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=False, now=NOW)
        archived = read_archived_events(str(tmp_path), billed.id, ["2026-10", "2026-09"])

        from_database = pd.concat(
            list(store_for(engine).read_events(engine, billed.id, 0, 10**9, 1000)), ignore_index=True
        )
        from_database = from_database[from_database["seq"].isin(archived["seq"])].reset_index(drop=True)
        assert list(archived.columns) == list(EVENT_COLUMNS)
        assert len(archived) == 27
        assert [str(t) for t in archived.dtypes] == [str(t) for t in from_database.dtypes]
        pd.testing.assert_frame_equal(
            archived.astype({c: object for c in TEXT_COLUMNS}),
            from_database.astype({c: object for c in TEXT_COLUMNS}), check_exact=True,
        )

    def test_archiving_again_writes_only_what_arrived_since(
        self, engine: Engine, billed: Tenant, tmp_path: Path
    ) -> None:
        archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=False, now=NOW)
        again = archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=False, now=NOW)
        assert [(m.month, m.rows, m.new_rows, m.parts) for m in again] == [
            ("2026-09", 12, 0, 1),
            ("2026-10", 15, 0, 1),
        ]

        send(engine, billed, [make_event(id="late-1", task="2026-10-t0", time="2026-10-20T12:00:00Z")])
        bring_up_to_date(engine, billed, now=NOW)
        late = archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=False, now=NOW)
        assert [(m.month, m.rows, m.new_rows, m.parts) for m in late] == [
            ("2026-09", 12, 0, 1),
            ("2026-10", 16, 1, 2),
        ]
        back = Archive(str(tmp_path)).read(billed.id, "2026-10")
        assert back["event_id"].is_unique and len(back) == 16
        assert Archive(str(tmp_path)).verify(billed.id, "2026-10").checksum == checksum(
            stored(engine, billed, "2026-10")
        )

    def test_events_not_yet_rolled_up_wait_for_the_next_run(
        self, engine: Engine, billed: Tenant, tmp_path: Path
    ) -> None:
        send(engine, billed, [make_event(id="late-2", task="2026-10-t1", time="2026-10-21T12:00:00Z")])
        done = archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=True, now=NOW)
        assert done[1].rows == 15
        assert "late-2" in set(stored(engine, billed, "2026-10")["event_id"])  # still in the database

    def test_an_open_month_is_refused_and_nothing_is_written(
        self, engine: Engine, billed: Tenant, tmp_path: Path
    ) -> None:
        with pytest.raises(
            Conflict, match=r"2026-11 of tenant 'acme-ai' not closed.*archive --before 2026-11"
        ):
            archive_tenant(
                engine,
                billed,
                before=parse_month("2026-12", "UTC"),
                url=str(tmp_path / "a"),
                drop=True,
                now=NOW,
            )
        assert not (tmp_path / "a").exists()
        assert len(stored(engine, billed, "2026-09")) == 12


class TestDrop:
    def test_drop_deletes_only_verified_closed_months(
        self, engine: Engine, billed: Tenant, tmp_path: Path
    ) -> None:
        done = archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=True, now=NOW)
        assert [(m.month, m.dropped) for m in done] == [("2026-09", 12), ("2026-10", 15)]
        assert stored(engine, billed, "2026-09").empty and stored(engine, billed, "2026-10").empty
        assert len(stored(engine, billed, "2026-11")) == 6
        with engine.connect() as connection:
            recorded = connection.execute(
                select(archived_months.c.month, archived_months.c.rows).order_by(archived_months.c.month)
            ).all()
        assert [tuple(r) for r in recorded] == [("2026-09", 12), ("2026-10", 15)]
        # Again: nothing left in the database to archive or drop.
        assert archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=True, now=NOW) == []

    def test_a_copy_that_does_not_verify_drops_nothing(
        self, engine: Engine, billed: Tenant, tmp_path: Path
    ) -> None:
        archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=False, now=NOW)
        part = tmp_path / f"tenant={billed.id}" / "month=2026-10" / "part-00000.parquet"
        table = pq.read_table(part)
        tokens = table.column("input_tokens").to_pylist()
        pq.write_table(
            table.set_column(
                table.schema.get_field_index("input_tokens"),
                "input_tokens",
                pa.array([tokens[0] + 1, *tokens[1:]]),
            ),
            part,
        )

        with pytest.raises(ArchiveMismatch, match="does not match its manifest"):
            archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=True, now=NOW)
        assert len(stored(engine, billed, "2026-10")) == 15

    def test_the_rollup_keeps_working_after_a_drop(
        self, engine: Engine, billed: Tenant, tmp_path: Path
    ) -> None:
        before = usage_rows(engine, billed)
        archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=True, now=NOW)
        send(engine, billed, [make_event(id="nov-new", task="2026-11-t0", time="2026-11-20T12:00:00Z")])
        result = bring_up_to_date(engine, billed, now=NOW)
        assert (result.events_read, result.rebuilt) == (1, False)
        after = {row[1]: row for row in usage_rows(engine, billed)}
        assert all(after[row[1]] == row for row in before if not row[1].startswith("2026-11-t0"))

    def test_a_rebuild_over_dropped_months_is_refused_until_they_are_restored(
        self, engine: Engine, billed: Tenant, tmp_path: Path
    ) -> None:
        before = usage_rows(engine, billed)
        archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=True, now=NOW)
        check_rebuild(engine, billed)  # prices unchanged: incremental runs go on
        with engine.begin() as connection:  # as a price change does: the stored version no longer matches
            connection.execute(
                update(rollup_state)
                .where(rollup_state.c.tenant_id == billed.id)
                .values(price_version="before-the-change", price_buckets=None)
            )

        with pytest.raises(
            ArchivedHistory, match=r"2026-09\.\.2026-10 were archived to .* restore them first"
        ):
            check_rebuild(engine, billed)
        restored = restore_tenant(engine, billed)
        assert [(r["month"], r["restored"]) for r in restored] == [("2026-09", 12), ("2026-10", 15)]
        check_rebuild(engine, billed)
        assert bring_up_to_date(engine, billed, now=NOW).rebuilt
        assert usage_rows(engine, billed) == before

    def test_a_price_change_over_dropped_months_is_repriced_without_them(
        self, engine: Engine, billed: Tenant, tmp_path: Path
    ) -> None:
        before = usage_rows(engine, billed)
        archive_tenant(engine, billed, before=NOVEMBER, url=str(tmp_path), drop=True, now=NOW)
        with engine.begin() as connection:  # a price change whose previous prices are unknown
            connection.execute(
                update(rollup_state).where(rollup_state.c.tenant_id == billed.id).values(price_version="before-the-change")
            )
        check_rebuild(engine, billed)  # not refused: applied from the rollup's rows, no event read
        result = bring_up_to_date(engine, billed, now=NOW)
        assert result.repriced is not None and not result.rebuilt and result.events_read == 0
        assert usage_rows(engine, billed) == before

    def test_memory_url(self, engine: Engine, billed: Tenant) -> None:
        url = f"memory://taskmeter-{uuid.uuid4().hex}/archive"
        done = archive_tenant(engine, billed, before=NOVEMBER, url=url, drop=True, now=NOW)
        assert [(m.month, m.dropped) for m in done] == [("2026-09", 12), ("2026-10", 15)]
        assert Archive(url).months(billed.id) == ["2026-09", "2026-10"]
        archived = read_archived_events(url, billed.id, ["2026-09", "2026-10"])
        assert len(archived) == 27 and np.all(np.diff(archived["seq"].to_numpy()) > 0)
        with engine.connect() as connection:
            assert (
                connection.execute(
                    select(func.count()).select_from(events).where(events.c.tenant_id == billed.id)
                ).scalar()
                == 6
            )


class TestCommand:
    def test_archive_and_drop_from_the_command_line(
        self, engine: Engine, billed: Tenant, tmp_path: Path, run_cli: Callable[..., Any]
    ) -> None:
        code, payload, _ = run_cli(
            "archive", "--tenant", billed.name, "--before", "2026-11", "--to", str(tmp_path), "--drop"
        )
        assert code == 0
        assert [(m["month"], m["rows"], m["dropped"]) for m in payload["months"]] == [
            ("2026-09", 12, 12),
            ("2026-10", 15, 15),
        ]

    def test_an_open_month_fails_with_a_clear_message(
        self, engine: Engine, billed: Tenant, tmp_path: Path, run_cli: Callable[..., Any]
    ) -> None:
        code, payload, stderr = run_cli(
            "archive", "--tenant", billed.name, "--before", "2026-12", "--to", str(tmp_path)
        )
        assert code == 1 and payload is None
        assert "2026-11 of tenant 'acme-ai' not closed" in stderr

    def test_a_rollup_that_must_rebuild_over_dropped_months_is_refused(
        self, engine: Engine, billed: Tenant, tmp_path: Path, run_cli: Callable[..., Any]
    ) -> None:
        assert (
            run_cli(
                "archive", "--tenant", billed.name, "--before", "2026-11", "--to", str(tmp_path), "--drop"
            )[0]
            == 0
        )
        assert run_cli("rollup", "--tenant", billed.name)[0] == 0  # incremental: goes on
        with engine.begin() as connection:
            connection.execute(
                update(rollup_state)
                .where(rollup_state.c.tenant_id == billed.id)
                .values(price_version="older", price_buckets=None)
            )
        code, _, stderr = run_cli("rollup", "--tenant", billed.name)
        assert code == 1 and "restore them first" in stderr
        code, payload, _ = run_cli("archive", "--tenant", billed.name, "--restore")
        assert code == 0 and [m["restored"] for m in payload["restored"]] == [12, 15]
        code, payload, _ = run_cli("rollup", "--tenant", billed.name)
        assert code == 0 and payload["rebuilt"] is True
