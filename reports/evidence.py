"""Evidence of an invoice line as CSV or JSON pages: the tasks `pricing.evidence` finds behind it.

The CSV goes through the reports' one writer (`reports.csvwriter`: spreadsheet-safe text cells),
in batches, so a line of 100,000 tasks streams in bounded memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from reports.cells import instants_array_text
from reports.columns import Report
from reports.csvwriter import Batch, encode

LINE_TASKS = Report(
    "invoice-line-tasks",
    ("task", "customer", "task_type", "status", "billed_at", "provider_cost", "outcome_rule_version"),
    frozenset({"task", "customer", "task_type", "status"}),
)
BATCH_ROWS = 10_000


def _columns(frame: pd.DataFrame) -> Batch:
    billed = frame["billed_us"].astype("Int64")
    missing = billed.isna().to_numpy()
    micros = billed.fillna(0).to_numpy(dtype=np.int64)
    versions = frame["outcome_rule_version"].astype("Int64")
    nanos = frame["provider_cost_nanos"].to_numpy(dtype=np.int64)
    whole, fraction = np.divmod((nanos + 500) // 1000, 1_000_000)  # micro-units, half up (costs are >= 0)
    return {
        "task": frame["task"].tolist(),
        "customer": frame["customer"].tolist(),
        "task_type": ["" if t is None or t != t else t for t in frame["task_type"].tolist()],
        "status": frame["status"].tolist(),
        "billed_at": instants_array_text(micros, missing),
        "provider_cost": [f"{w}.{f:06d}" for w, f in zip(whole.tolist(), fraction.tolist(), strict=True)],
        "outcome_rule_version": ["" if v is pd.NA else str(v) for v in versions.tolist()],
    }


def csv_chunks(frame: pd.DataFrame) -> Iterator[bytes]:
    """The tasks as CSV bytes: the header, then a chunk per `BATCH_ROWS` tasks."""
    batches = (_columns(frame.iloc[start : start + BATCH_ROWS]) for start in range(0, len(frame), BATCH_ROWS))
    return encode(LINE_TASKS, batches)


def page(frame: pd.DataFrame, *, offset: int, limit: int) -> dict[str, Any]:
    """One page of the tasks as JSON-ready rows, with the total and the next offset (None: last)."""
    part = frame.iloc[offset : offset + limit]
    columns = _columns(part)
    rows = [
        {
            "task": task, "customer": customer, "task_type": task_type or None, "status": status,
            "billed_at": billed or None, "provider_cost": cost, "outcome_rule_version": int(version) if version else None,
        }
        for task, customer, task_type, status, billed, cost, version in zip(*columns.values(), strict=True)
    ]  # fmt: skip
    following = offset + limit if offset + limit < len(frame) else None
    return {"total": len(frame), "offset": offset, "next_offset": following, "tasks": rows}
