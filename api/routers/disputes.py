"""Disputes of billed jobs: open one on a task, resolve it (admin). Each step is in the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Response

from api.deps import AuditDep, NowDep, ReadOrVerdict, SessionDep, VerdictAuditDep
from api.errors import BODY_ERRORS, responses
from pricing import disputes
from pricing.schemas import Dispute, DisputeIn, DisputeResolveIn

router = APIRouter(tags=["disputes"])

DisputeId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the dispute's id")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="a replay with the same key answers the same",
    ),
]


@router.post(
    "/v1/tasks/{task:path}/disputes",
    response_model=Dispute,
    status_code=201,
    responses=responses(*BODY_ERRORS, 404, 409),
)
def post_dispute(
    task: str,
    body: DisputeIn,
    audit: VerdictAuditDep,
    now: NowDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Dispute a completed task, within its rule's `dispute_window` after it settled (409 past it)."""
    principal = audit.principal
    found, created = disputes.open_dispute(
        audit.session, principal.tenant, task, reason=body.reason, actor=principal.actor, now=now,
        customer=principal.customer, idempotency_key=idempotency_key,
    )  # fmt: skip
    if created:
        audit.record("dispute.open", f"task:{task}", dispute=found["id"], reason=found["reason"])
    else:
        response.status_code = 200
    return found


@router.post(
    "/v1/disputes/{dispute_id}/resolve", response_model=Dispute, responses=responses(*BODY_ERRORS, 404, 409)
)
def post_resolve(
    dispute_id: DisputeId, body: DisputeResolveIn, audit: AuditDep, now: NowDep
) -> dict[str, Any]:
    """Accept (the job is credited, or not billed while its month is open) or reject a dispute."""
    principal = audit.principal
    found, resolved = disputes.resolve_dispute(
        audit.session,
        principal.tenant,
        dispute_id,
        accept=body.accept,
        note=body.note,
        actor=principal.actor,
        now=now,
    )
    if resolved:
        audit.record(
            "dispute.resolve", f"task:{found['task']}", dispute=dispute_id, status=found["status"], note=found["note"],
            invoice=found["invoice_id"], credit_note=found["credit_note_id"],
        )  # fmt: skip
    return found


@router.get("/v1/disputes/{dispute_id}", response_model=Dispute, responses=responses(404))
def get_dispute(dispute_id: DisputeId, principal: ReadOrVerdict, session: SessionDep) -> dict[str, Any]:
    """A dispute and how it was resolved."""
    return disputes.get_dispute(session, principal.tenant, dispute_id, customer=principal.customer)
