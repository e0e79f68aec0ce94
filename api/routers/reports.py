"""The monthly CSVs over HTTP: `GET /v1/reports/{month}/{name}.csv`, streamed."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.deps import EngineDep, ReadScope
from api.errors import responses
from metering.errors import NotFound
from metering.periods import parse_month
from metering.tenants import Tenant
from reports.columns import REPORTS
from reports.monthly import report_chunks

router = APIRouter(tags=["reports"])

CSV_RESPONSE = {200: {"content": {"text/csv": {}}, "description": "The CSV file (UTF-8, header row, `,`)"}}


@router.get(
    "/v1/reports/{month}/{name}.csv",
    response_class=StreamingResponse,
    responses={**CSV_RESPONSE, **responses(404)},
)
def get_report(month: str, name: str, principal: ReadScope, engine: EngineDep) -> StreamingResponse:
    """One of the month's CSVs (`customers`, `invoice-lines`, `tasks`, `comparison`) for the
    key's tenant; the month is the tenant's calendar month (YYYY-MM)."""
    return csv_response(engine, principal.tenant, month, name)


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
