"""What a `verdict` key may send (DESIGN.md "Outcome truth"): the buyer's own verdicts on its
tasks, `task.accepted` and `task.rejected`, for tasks that are its customer's. Anything else in a
batch refuses the whole batch (nothing is stored); another customer's task is not found, exactly
as a task that does not exist."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from metering.core.errors import Forbidden, NotFound
from metering.core.tables import events
from metering.events.ingest import Batch

VERDICT_TYPES = ("task.accepted", "task.rejected")
_CHUNK = 500


def check_verdicts(session: Session, tenant_id: int, customer: str, batch: Batch) -> None:
    """Refuse the batch unless every event is a verdict of `customer` on one of its tasks."""
    for event, position in zip(batch.events, batch.positions, strict=True):
        if event["type"] not in VERDICT_TYPES:
            raise Forbidden(
                "a verdict key sends only task.accepted and task.rejected events",
                detail=[{"field": f"[{position}].type", "message": f"{event['type']} is not a verdict"}],
            )
        if event["customer"] != customer:
            raise Forbidden(
                "a verdict key sends events of its own customer only",
                detail=[{"field": f"[{position}].customer", "message": "is not this key's customer"}],
            )
    tasks = sorted({event["task"] for event in batch.events})
    owners: dict[str, set[str]] = {}
    for start in range(0, len(tasks), _CHUNK):
        rows = session.execute(
            select(events.c.task, events.c.customer)
            .where(events.c.tenant_id == tenant_id, events.c.task.in_(tasks[start : start + _CHUNK]))
            .distinct()
        )
        for task, owner in rows:
            owners.setdefault(task, set()).add(owner)
    for task in tasks:
        if owners.get(task, set()) != {customer}:
            raise NotFound(f"no task {task!r}")
