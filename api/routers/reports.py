"""The monthly CSVs over HTTP: `GET /v1/reports/{month}/{name}.csv`, streamed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.csv_http import csv_response
from api.deps import EngineDep, ReadScope
from api.errors import responses

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
