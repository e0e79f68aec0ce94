"""Keyword-default factories: a test names only what matters to it."""

from __future__ import annotations

import itertools
from typing import Any

_ids = itertools.count(1)


def make_event(**fields: Any) -> dict[str, Any]:
    """A valid usage event as a client sends it (JSON-ready dict)."""
    event: dict[str, Any] = {
        "id": f"evt-{next(_ids)}",
        "type": "usage",
        "time": "2026-10-15T12:00:00Z",
        "customer": "acme",
        "task": "task-1",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1200,
        "output_tokens": 300,
    }
    event.update(fields)
    if event["type"] != "usage":
        for key in ("provider", "model", "input_tokens", "output_tokens"):
            if key not in fields:
                event.pop(key, None)
    return {k: v for k, v in event.items() if v is not None}


def make_task_events(task: str = "task-1", customer: str = "acme", outcome: str = "task.completed", **usage: Any) -> list[dict[str, Any]]:
    """A started task, one usage event and its terminal event."""
    return [
        make_event(id=f"{task}-start", type="task.started", task=task, customer=customer, time="2026-10-15T11:59:00Z"),
        make_event(id=f"{task}-u1", task=task, customer=customer, **usage),
        make_event(id=f"{task}-end", type=outcome, task=task, customer=customer, time="2026-10-15T12:01:00Z"),
    ]
