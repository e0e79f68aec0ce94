"""The five monthly CSVs of DESIGN.md: file names and columns, declared once, in order.

`TEXT` names the columns that carry text a tenant or its agents chose (customer and task names,
plan ids, descriptions): only those are neutralized against spreadsheet formulas; numeric columns
(negative adjustments such as `-1.50` included) stay numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from metering.core.periods import Period


@dataclass(frozen=True)
class Report:
    name: str  # customers, invoice-lines, tasks, comparison, spend
    columns: tuple[str, ...]
    text: frozenset[str]

    def filename(self, period: Period | str) -> str:
        label = period if isinstance(period, str) else period.label
        return f"{self.name}-{label}.csv"


CUSTOMERS = Report(
    "customers",
    (
        "customer", "plan", "currency", "tasks_completed", "tasks_failed", "tasks_cancelled", "tasks_open",
        "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
        "provider_cost", "amount_due", "margin", "jobs_billed", "jobs_pending",
    ),
    frozenset({"customer", "plan", "currency"}),
)  # fmt: skip

INVOICE_LINES = Report(
    "invoice-lines",
    ("invoice", "customer", "period", "line", "description", "quantity", "unit_price", "amount", "currency"),
    frozenset({"invoice", "customer", "period", "description", "currency"}),
)

TASKS = Report(
    "tasks",
    (
        "task", "customer", "task_type", "status", "started_at", "ended_at", "usage_events", "input_tokens",
        "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "provider_cost", "priced",
    ),
    frozenset({"task", "customer", "task_type", "status"}),
)  # fmt: skip

COMPARISON = Report(
    "comparison",
    (
        "customer", "plan", "billed", "revenue", "provider_cost", "margin", "margin_pct", "tasks_completed",
        "revenue_per_completed_task", "break_even_job_price",
    ),
    frozenset({"customer", "plan"}),
)  # fmt: skip

SPEND = Report(
    "spend",
    ("customer", "actor", "agent", "tasks", "usage_events", "input_tokens", "output_tokens", "provider_cost"),
    frozenset({"customer", "actor", "agent"}),
)

REPORTS: dict[str, Report] = {r.name: r for r in (CUSTOMERS, INVOICE_LINES, TASKS, COMPARISON, SPEND)}
"""By name, in the order `write_month` writes them."""
