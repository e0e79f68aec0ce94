"""Evidence: a task's events with the key that sent each, and the tasks behind an invoice line
(JSON pages, or streamed CSV with `Accept: text/csv`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.deps import ReadOrVerdict, SessionDep
from api.errors import responses
from metering.core.errors import NotFound
from metering.events.ingest import from_us
from metering.rollup import repository
from pricing import disputes, evidence
from reports import evidence as evidence_csv

router = APIRouter(tags=["evidence"])

InvoiceId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the invoice's id")]
LineNo = Annotated[int, Path(ge=1, le=2**31 - 1, description="the line's number on the invoice (1, 2, ...)")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]


class SentBy(BaseModel):
    id: int
    prefix: str
    name: str


class TaskEvent(BaseModel):
    seq: int
    id: str
    type: str
    time: Any
    customer: str
    task_type: str | None
    provider: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    actor: str | None = None
    agent: str | None = None
    ingested_at: Any
    key: SentBy | None


class Settlement(BaseModel):
    status: str
    completed_at: Any
    settled_at: Any
    outcome_rule_version: int | None


class TaskEvents(BaseModel):
    task: str
    settlement: Settlement
    offset: int
    events: list[TaskEvent]


class LineTask(BaseModel):
    task: str
    customer: str
    task_type: str | None
    status: str
    billed_at: str | None
    provider_cost: str
    outcome_rule_version: int | None


class LineTasks(BaseModel):
    total: int
    offset: int
    next_offset: int | None
    tasks: list[LineTask]


@router.get("/v1/tasks/{task:path}/events", response_model=TaskEvents, responses=responses(404))
def get_task_events(
    task: str,
    principal: ReadOrVerdict,
    session: SessionDep,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """The task's events in time order, each with the API key that sent it, and how the task
    settled (the outcome rule version used)."""
    info = disputes.task_settlement(session, principal.tenant, task, customer=principal.customer)
    found = repository.task_events(session, principal.tenant.id, task, offset=offset, limit=limit)
    settlement = {
        "status": info["status"],
        "completed_at": from_us(info["completed_us"]) if info["completed_us"] is not None else None,
        "settled_at": from_us(info["settled_us"]) if info["settled_us"] is not None else None,
        "outcome_rule_version": info["rule_version"],
    }
    return {"task": task, "settlement": settlement, "offset": offset, "events": found}


@router.get(
    "/v1/invoices/{invoice_id}/lines/{line_no}/tasks",
    response_model=LineTasks,
    responses=responses(404)
    | {200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with Accept: text/csv"}},
)
def get_line_tasks(
    invoice_id: InvoiceId,
    line_no: LineNo,
    request: Request,
    principal: ReadOrVerdict,
    session: SessionDep,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Any:
    """The tasks behind an invoice line, by task id: pages of JSON, or all of them as a streamed
    CSV when asked with `Accept: text/csv`."""
    if principal.customer is not None:
        if (
            evidence.invoice_line(session, principal.tenant, invoice_id, line_no)[0].customer
            != principal.customer
        ):
            raise NotFound(f"no invoice {invoice_id}")
    frame = evidence.line_tasks(session, principal.tenant, invoice_id, line_no)
    if "text/csv" in request.headers.get("accept", ""):
        filename = f"invoice-{invoice_id}-line-{line_no}-tasks.csv"
        return StreamingResponse(
            evidence_csv.csv_chunks(frame),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return evidence_csv.page(frame, offset=offset, limit=limit)
