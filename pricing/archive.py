"""Archive a tenant's closed months (`taskmeter archive`), and drop them from the database only
after a verified copy.

A month may be archived once it is closed (its row in `billing_periods`: its invoices are
final). An archive run takes the tenant's events before `--before` that the rollup has already
read (seq at or below its watermark: a later event has not reached the rollup tables yet and
stays for the next run), refuses the whole run if any of them falls in a month still open, and
appends each month's new events to its Parquet partition (`metering.events.archive`).

`drop` then deletes each archived month's events from `events`, in one transaction per month,
only once the copy reads back with its manifest's row count and checksum and holds every row
about to be deleted, byte for byte; the month is recorded in `archived_months`. The rollup's
incremental runs never read those events again (they are below its watermark). A run that
would rebuild the tenant from its first event (a price change) would no longer see them:
`metering.rollup.archive_guard.check_rebuild` refuses it with the way out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, delete, func, select
from sqlalchemy.orm import Session

from metering.core.db import dialect_insert, driver_rows, upsert
from metering.core.errors import Conflict
from metering.core.periods import Period, parse_month
from metering.core.tables import archived_months, events, rollup_state
from metering.core.tenants import Tenant
from metering.events.archive import (
    ARCHIVE_COLUMNS,
    Archive,
    ArchiveMismatch,
    Manifest,
    normalized,
    row_hashes,
)
from metering.events.ingest import to_us
from metering.rollup.summary import local_days
from pricing.tables import billing_periods

READ_BATCH = 200_000
RESTORE_BATCH = 10_000


@dataclass
class MonthArchived:
    month: str
    rows: int  # in the archive, all parts
    new_rows: int  # written by this run
    checksum: str
    parts: int
    dropped: int = 0  # events deleted from the database by this run

    def as_dict(self) -> dict[str, Any]:
        return {"month": self.month, "rows": self.rows, "new_rows": self.new_rows, "checksum": self.checksum,
                "parts": self.parts, "dropped": self.dropped}  # fmt: skip


def closed_months(session: Session | Connection, tenant_id: int) -> set[str]:
    """The tenant's closed months (YYYY-MM): their invoices are final."""
    return set(
        session.execute(
            select(billing_periods.c.period).where(billing_periods.c.tenant_id == tenant_id)
        ).scalars()
    )


def archive_tenant(
    engine: Engine, tenant: Tenant, *, before: Period, url: str, drop: bool, now: datetime
) -> list[MonthArchived]:
    """Archive (and with `drop`, delete) the tenant's closed months before `before`."""
    archive = Archive(url)
    with engine.connect() as connection:
        closed = closed_months(connection, tenant.id)
        watermark = (
            connection.execute(
                select(rollup_state.c.watermark_seq).where(rollup_state.c.tenant_id == tenant.id)
            ).scalar()
            or 0
        )
        stored = _stored_events(connection, tenant.id, before=before, upto_seq=watermark)
    labels = month_labels(stored["time_us"].to_numpy(dtype=np.int64), tenant.timezone)
    months = sorted(set(labels.tolist()))
    still_open = [month for month in months if month not in closed]
    if still_open:
        raise Conflict(
            f"{', '.join(still_open)} of tenant {tenant.name!r} not closed: only closed months (final invoices) are archived; "
            f"close them first or archive --before {still_open[0]}",
            detail={"open_months": still_open},
        )
    results = []
    for month in months:
        rows = stored[labels == month]
        before_rows = (archive.manifest(tenant.id, month) or Manifest(tenant.id, month)).rows
        manifest = archive.append(tenant.id, month, rows, now=now)
        done = MonthArchived(
            month, manifest.rows, manifest.rows - before_rows, manifest.checksum, len(manifest.parts)
        )
        if drop:
            done.dropped = _drop_month(engine, tenant, archive, month, now=now)
        results.append(done)
    return results


def month_labels(time_us: np.ndarray, timezone: str) -> np.ndarray:
    """Each instant's tenant-local month, as YYYY-MM."""
    days = local_days(time_us, timezone).astype("datetime64[D]")
    return np.datetime_as_string(days.astype("datetime64[M]"), unit="M")


def _stored_events(connection: Connection, tenant_id: int, *, before: Period, upto_seq: int) -> pd.DataFrame:
    query = (
        select(*[events.c[name] for name in ARCHIVE_COLUMNS])
        .where(
            events.c.tenant_id == tenant_id, events.c.time_us < to_us(before.start), events.c.seq <= upto_seq
        )
        .order_by(events.c.seq)
    )
    blocks = [
        np.array(rows, dtype=object) for rows in driver_rows(connection, query, batch_size=READ_BATCH) if rows
    ]
    table = np.concatenate(blocks) if blocks else np.empty((0, len(ARCHIVE_COLUMNS)), dtype=object)
    return normalized(pd.DataFrame(table, columns=list(ARCHIVE_COLUMNS)))


def _drop_month(engine: Engine, tenant: Tenant, archive: Archive, month: str, *, now: datetime) -> int:
    """Delete the month's archived events from the database, after checking the copy; returns
    how many. In one transaction: nothing is deleted unless every row is in the archive."""
    manifest = archive.verify(tenant.id, month)
    copy = archive.read(tenant.id, month)
    archived = pd.Series(row_hashes(copy), index=copy["event_id"].to_numpy(dtype=object))
    period = parse_month(month, tenant.timezone)
    where = (
        events.c.tenant_id == tenant.id,
        events.c.time_us >= to_us(period.start),
        events.c.time_us < to_us(period.end),
        events.c.seq <= manifest.max_seq,
    )
    with engine.begin() as connection:
        blocks = [np.array(rows, dtype=object) for rows in driver_rows(
            connection, select(*[events.c[name] for name in ARCHIVE_COLUMNS]).where(*where), batch_size=READ_BATCH
        ) if rows]  # fmt: skip
        table = np.concatenate(blocks) if blocks else np.empty((0, len(ARCHIVE_COLUMNS)), dtype=object)
        here = pd.DataFrame(table, columns=list(ARCHIVE_COLUMNS))
        if not here.empty:
            ids = here["event_id"].to_numpy(dtype=object)
            found = archived.reindex(ids)
            if found.isna().any() or not np.array_equal(found.to_numpy(dtype=np.uint64), row_hashes(here)):
                raise ArchiveMismatch(
                    f"the archive of {month} at {archive.url} does not hold every event the database has for it; nothing was dropped",
                    detail={"month": month},
                )
        deleted = connection.execute(
            delete(events).where(*where).execution_options(preserve_rowcount=True)
        ).rowcount
        if deleted != len(here):
            raise ArchiveMismatch(
                f"{month}: events changed while they were dropped; nothing was dropped",
                detail={"month": month},
            )
        record = {
            "url": archive.url,
            "max_seq": manifest.max_seq,
            "rows": manifest.rows,
            "checksum": manifest.checksum,
            "dropped_at": now,
        }
        upsert(
            connection,
            archived_months,
            {"tenant_id": tenant.id, "month": month, **record},
            key=["tenant_id", "month"],
            update=record,
        )
    return int(deleted)


def restore_tenant(engine: Engine, tenant: Tenant, *, url: str | None = None) -> list[dict[str, Any]]:
    """Put the tenant's dropped months back into `events` from the archive (their original seqs,
    so a rebuild reads them in their order), one transaction per month, and forget that they
    were dropped. The copy is verified first; events already back are left as they are."""
    with engine.connect() as connection:
        dropped = connection.execute(
            select(archived_months)
            .where(archived_months.c.tenant_id == tenant.id)
            .order_by(archived_months.c.month)
        ).all()
    restored = []
    for row in dropped:
        archive = Archive(url or row.url)
        manifest = archive.verify(tenant.id, row.month)
        copy = archive.read(tenant.id, row.month)
        copy = copy[copy["seq"].to_numpy(dtype=np.int64) <= row.max_seq].assign(tenant_id=tenant.id)
        records = copy.astype(object).where(copy.notna(), None).to_dict("records")
        with engine.begin() as connection:
            insert = dialect_insert(connection, events)
            count = select(func.count()).select_from(events).where(events.c.tenant_id == tenant.id)
            present = connection.execute(count).scalar_one()
            for start in range(0, len(records), RESTORE_BATCH):
                connection.execute(
                    insert.on_conflict_do_nothing(index_elements=["tenant_id", "event_id"]),
                    records[start : start + RESTORE_BATCH],
                )
            written = connection.execute(count).scalar_one() - present
            connection.execute(
                delete(archived_months).where(
                    archived_months.c.tenant_id == tenant.id, archived_months.c.month == row.month
                )
            )
        restored.append({"month": row.month, "rows": manifest.rows, "restored": int(written)})
    return restored
