"""The monthly CSVs of a tenant (DESIGN.md, "The monthly CSVs"): one file as a stream of bytes
(`report_chunks`), and `write_month` writing the five of them. What each file holds is described
in `reports.month_data`, which reads the month for both the files and the dashboard.

Every file is read from one snapshot of the database and comes out byte-identical for the same
data. The tasks file is streamed from a server-side cursor; the others hold one row per customer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from metering.core.db import unit_of_work
from metering.core.periods import Period, parse_month
from metering.core.tenants import Tenant
from pricing import open_month
from reports import dashboard, repository, snapshots
from reports.billed import month_invoices
from reports.columns import COMPARISON, CUSTOMERS, INVOICE_LINES, REPORTS, SPEND, TASKS, Report
from reports.csvwriter import Batch, encode, write_file
from reports.month_data import (
    begin_snapshot,
    comparison_batches,
    costs_of,
    customer_batches,
    invoice_line_batches,
    month_comparison,
    month_summary,
    rating_input,
    spend_batches,
)
from reports.tasks import TaskScan, scan_tasks, task_batches


def report_batches(session: Session, tenant: Tenant, period: Period, report: Report) -> Iterator[Batch]:
    """The batches of one of the five files."""
    if report is SPEND:
        return spend_batches(repository.spend(session, tenant.id, period))
    if report is TASKS:
        return task_batches(session, tenant, period)
    if report is INVOICE_LINES:
        return invoice_line_batches(month_invoices(session, tenant, period))
    scan = scan_tasks(session, tenant, period)
    month = rating_input(session, tenant, period, ended=scan.ended(), figures=open_month.usable_figures(session, tenant.id, period))
    summary = month_summary(session, tenant, period, counts=scan.counts, billed=month.ended, rating=month)
    if report is CUSTOMERS:
        return customer_batches(summary)
    return comparison_batches(month_comparison(tenant, period, month, costs_of(summary)))


def report_chunks(session: Session, tenant: Tenant, period: Period, name: str) -> Iterator[bytes]:
    """One file as chunks of bytes, read from one snapshot of the database."""
    report = REPORTS[name]
    begin_snapshot(session)
    yield from encode(report, report_batches(session, tenant, period, report))


def write_month(source: Session | Engine, tenant: Tenant, period: Period | str, out_dir: Path | str,
                *, now: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the five CSVs of a tenant-local month into `out_dir` (each file replaced
    atomically); returns what was written. The files depend on the data only.

    They are read from one snapshot of the database, on a connection of their own (so that a
    caller's transaction is never turned into a long read). The tasks file goes first, counting
    the customers' tasks as it streams; the rating of the comparison comes after it, so that the
    two never hold memory at once, and before the customers file, which counts the jobs it bills. With `now`, the month's dashboard snapshot
    (`reports.snapshots`) is kept too, computed from the same reads: given an engine, this commits
    it; given a session, the caller's unit of work does."""
    engine = source if isinstance(source, Engine) else source.get_bind()
    month = parse_month(period, tenant.timezone) if isinstance(period, str) else period
    out = Path(out_dir)
    files: dict[str, dict[str, Any]] = {}

    def write(report: Report, batches: Iterable[Batch]) -> None:
        counted = _Counted(batches)
        path = out / report.filename(month)
        size = write_file(path, encode(report, counted))
        files[report.name] = {"name": report.name, "path": str(path), "rows": counted.rows, "bytes": size}

    with Session(engine) as session:
        try:
            begin_snapshot(session)
            closed = repository.closed_months(session, tenant.id)
            current = snapshots.fingerprint(session, tenant, month, closed)
            scan = TaskScan(month)
            write(TASKS, task_batches(session, tenant, month, scan=scan))
            figures = open_month.usable_figures(session, tenant.id, month)  # rating reads them as groups of tasks
            rating = rating_input(session, tenant, month, ended=scan.ended(), figures=figures)
            counts = scan.counts
            del scan
            summary = month_summary(session, tenant, month, closed=closed, counts=counts, billed=rating.ended, rating=rating)
            write(CUSTOMERS, customer_batches(summary))
            write(INVOICE_LINES, invoice_line_batches(summary.invoices))
            comparison = month_comparison(tenant, month, rating, costs_of(summary))
            write(COMPARISON, comparison_batches(comparison))
            spend = repository.spend(session, tenant.id, month)
            write(SPEND, spend_batches(spend))
            view = None
            if now is not None:
                outcomes = dashboard.month_outcomes(session, tenant, month, None, now, figures)
                view = dashboard.build_view(session, tenant, month, summary, rating, comparison, outcomes=outcomes)
            del rating
        finally:
            session.rollback()
    if view is not None and now is not None:
        if isinstance(source, Engine):
            with unit_of_work(engine) as writer:
                snapshots.store(writer, tenant, view, current, now=now)
        else:
            snapshots.store(source, tenant, view, current, now=now)
    return {"tenant": tenant.name, "month": month.label, "closed": summary.closed,
            "files": [files[name] for name in REPORTS], "unrated_customers": list(summary.invoices.unrated)}  # fmt: skip


class _Counted:
    def __init__(self, batches: Iterable[Batch]) -> None:
        self.batches, self.rows = batches, 0

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.batches:
            self.rows += len(next(iter(batch.values())))
            yield batch
