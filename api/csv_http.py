"""A month's CSV as a streamed HTTP response, for the API (`/v1/reports`) and the dashboard's
downloads alike."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.responses import StreamingResponse
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from metering.core.errors import NotFound
from metering.core.periods import parse_month
from metering.core.tenants import Tenant
from reports.columns import REPORTS
from reports.monthly import report_chunks


def csv_response(engine: Engine, tenant: Tenant, month: str, name: str) -> StreamingResponse:
    """A streamed CSV. The header and the first rows are made before the response starts, so
    that an error there is an error response, not a truncated file."""
    report = REPORTS.get(name)
    if report is None:
        raise NotFound(f"no report {name!r}: choose from {', '.join(REPORTS)}")
    period = parse_month(month, tenant.timezone)
    session = Session(engine)
    chunks = report_chunks(session, tenant, period, name)
    try:
        head = [next(chunks), next(chunks, b"")]
    except BaseException:
        chunks.close()
        _close(session)
        raise

    def body() -> Iterator[bytes]:
        try:
            yield b"".join(head)
            yield from chunks
        finally:
            chunks.close()
            _close(session)

    disposition = f'attachment; filename="{report.filename(period)}"'
    return StreamingResponse(
        body(), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": disposition}
    )


def _close(session: Session) -> None:
    session.rollback()
    session.close()
