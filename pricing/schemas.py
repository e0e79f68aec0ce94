"""Pydantic shapes of the pricing API: plans, customers, comparisons, quotes, invoices.

Money and quantities are `Decimal`s shown as fixed-point strings (`"0.00000000"`, never `0E-8`);
amounts a client sends are strings too (`"12.50"`), never floats. Times are UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictInt,
    StrictStr,
)

from metering.core.vocabulary import Outcome
from metering.costs.prices import MAX_TOKENS

Exact = Annotated[Decimal, PlainSerializer(lambda d: f"{d:f}", return_type=str, when_used="json")]
Utc = Annotated[datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=UTC))]
Instant = Annotated[
    datetime,
    BeforeValidator(lambda v: v if isinstance(v, str) else _not_a_time()),
    Field(examples=["2026-10-05T12:00:00Z"]),
]  # RFC 3339 text only: a bare number is not read as a timestamp
Month = Annotated[str, Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", examples=["2026-10"])]
DecimalText = Annotated[StrictStr | StrictInt, Field(examples=["0.6"])]


def _not_a_time() -> datetime:
    raise ValueError("must be an RFC 3339 time with an offset, like 2026-10-05T12:00:00Z")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- plans --------------------------------------------------------------------------------------


class PlanVersion(BaseModel):
    version: int
    effective_from: date | None = Field(description="tenant-local first day; null: since always")
    created_at: Utc
    superseded: bool = Field(description="a later version with the same effective_from replaced it")
    terms: dict[str, Any]


class PlanOut(BaseModel):
    id: str
    type: Literal["per_token", "per_job"]
    versions: list[PlanVersion]


class PlanSaved(BaseModel):
    id: str
    effective_from: date | None
    version: int | None
    status: Literal["created", "unchanged"]
    plan: PlanOut


# --- customers ----------------------------------------------------------------------------------


class CustomerIn(_In):
    plan: str
    compare_with: list[str] = []
    effective_from: date | None = Field(
        None, description="tenant-local day the plan applies from (default: today; a new customer's first plan: always)"
    )


class Assignment(BaseModel):
    plan: str
    compare_with: list[str]
    effective_from: date | None
    created_at: Utc


class CustomerOut(BaseModel):
    id: str
    plan: str
    compare_with: list[str]
    stripe_customer_id: str | None
    created_at: Utc
    updated_at: Utc
    history: list[Assignment]


# --- comparison ---------------------------------------------------------------------------------


class CompareIn(_In):
    month: Month
    plans: list[str] | None = Field(None, description="compare every customer under these plans instead")
    target_margin: DecimalText = "0.6"


class CustomerComparison(BaseModel):
    customer: str
    plan: str
    billed: bool
    currency: str
    revenue: Exact
    provider_cost: Exact
    margin: Exact
    margin_pct: Exact | None
    tasks_completed: int
    tasks_failed: int
    tasks_cancelled: int
    revenue_per_completed_task: Exact | None
    break_even_job_price: Exact | None
    target_margin_job_price: Exact | None
    failed_cost: Exact
    unpriced_events: int


class TaskTypeComparison(BaseModel):
    task_type: str | None
    tasks_completed: int
    tasks_failed: int
    tasks_cancelled: int
    provider_cost: Exact
    failed_cost: Exact
    cost_per_completed_task: Exact | None
    target_margin_job_price: Exact | None


class ModelComparison(BaseModel):
    customer: str | None = Field(description="null: all customers")
    provider: str
    model: str
    basis: str
    tasks_completed: int
    provider_cost: Exact
    cost_per_completed_task: Exact | None
    input_tokens_per_completed_task: Exact | None
    output_tokens_per_completed_task: Exact | None
    cache_read_tokens_per_completed_task: Exact | None
    cache_write_tokens_per_completed_task: Exact | None


class TenantComparison(BaseModel):
    plan: str
    currency: str
    customers: int
    revenue: Exact
    provider_cost: Exact
    margin: Exact
    margin_pct: Exact | None
    tasks_completed: int
    tasks_failed: int
    tasks_cancelled: int
    revenue_per_completed_task: Exact | None
    break_even_job_price: Exact | None
    target_margin_job_price: Exact | None
    failed_cost: Exact


class SpendRow(BaseModel):
    """Usage of one customer by one actor and agent (null: the events named none)."""

    customer: str
    actor: str | None
    agent: str | None
    usage_events: int
    input_tokens: int
    output_tokens: int
    provider_cost: Exact


class TaskTypeOutcomesOut(BaseModel):
    """One task type's outcomes in the month (`pricing.outcome_counts`)."""

    task_type: str | None
    completed: int
    settled: int
    pending: int
    reopened: int
    rejected: int
    disputed: int
    billed_jobs: int = Field(description="settled jobs of customers billed per job")
    billed: Exact = Field(description="what per-job plans billed for those jobs")
    price_per_settled_job: Exact | None = Field(description="billed / billed_jobs, 6 decimals")


class ComparisonOut(BaseModel):
    month: str
    currency: str
    target_margin: Exact
    customers: list[CustomerComparison]
    task_types: list[TaskTypeComparison]
    models: list[ModelComparison]
    tenant: list[TenantComparison]
    spend: list[SpendRow] = Field(default_factory=list, description="the month's usage per customer, actor and agent")
    outcomes: list[TaskTypeOutcomesOut] = Field(default_factory=list, description="per task type: completed, settled, pending, reopened, rejected and disputed jobs, and the effective price per settled job")


# --- quotes -------------------------------------------------------------------------------------


def _no_nul(text: str) -> str:
    if "\x00" in text:  # PostgreSQL cannot store it, and no model is named with it
        raise ValueError("must not contain NUL characters")
    return text


QuoteText = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_nul)]


class ModelUsageIn(_In):
    provider: QuoteText
    model: QuoteText
    input_tokens: Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS, description="all input tokens, cache reads and writes included")] = 0
    output_tokens: Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS)] = 0
    cache_read_tokens: Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS)] = 0
    cache_write_tokens: Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS)] = 0
    cache_write_1h_tokens: Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS, description="1-hour cache writes, of cache_write_tokens")] = 0


class QuoteIn(_In):
    usage: list[ModelUsageIn] = []
    task_type: QuoteText | None = None
    outcome: Outcome = "completed"
    plans: list[str] | None = Field(None, description="default: every plan")
    units_before: Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS, description="the month's usage so far in the plan's unit")] = 0
    at: Instant | None = Field(None, description="price at this instant, RFC 3339 with offset (default: now)")


class PlanQuote(BaseModel):
    plan: str
    version: int | None
    effective_from: date | None
    type: str
    currency: str
    amount: Exact = Field(description="rounded once to the currency's minor unit")
    amount_exact: Exact = Field(description="unrounded: exact, trailing zeros removed, at least the minor unit's decimals")
    provider_cost: Exact | None = Field(description="6 decimals; null when some usage has no price (see reason)")
    margin: Exact | None = Field(description="amount - provider_cost; null when the provider cost is unknown")
    reason: str | None = Field(None, description="why provider_cost and margin are null")


class QuoteOut(BaseModel):
    at: datetime
    task_type: str | None
    outcome: str
    units_before: int
    unpriced_models: list[dict[str, str]]
    quotes: list[PlanQuote]


# --- invoices -----------------------------------------------------------------------------------


class InvoiceLine(BaseModel):
    line_no: int
    kind: str
    description: str
    quantity: Exact
    unit_price: Exact
    amount: Exact = Field(description="rounded once to the currency's minor unit: what is paid")
    amount_exact: Exact
    plan: str | None
    plan_version: int | None
    adjusts_period: str | None = Field(description="late usage: the closed month this line corrects")
    adjustment_reason: str | None = Field(
        None, description="why an adjustment line: late_usage, repricing, late_usage+repricing (outcome_change and dispute reserved)"
    )


class CreditNoteIn(_In):
    amount: Annotated[str, Field(examples=["12.50"], description="in the invoice currency, at most its minor unit")]
    reason: Annotated[str, Field(min_length=1, max_length=2000)]


class DisputeIn(_In):
    reason: Annotated[str, Field(min_length=1, max_length=2000, examples=["the ticket was not resolved"])]


class DisputeResolveIn(_In):
    accept: Annotated[bool, Field(strict=True, description="true: the job is not billed (or credited); false: it stands")]
    note: Annotated[str, Field(max_length=2000)] = ""


class Dispute(BaseModel):
    id: int
    task: str
    customer: str
    status: Literal["open", "accepted", "rejected"]
    reason: str
    note: str | None
    opened_at: datetime
    opened_by: str
    resolved_at: datetime | None
    resolved_by: str | None
    invoice_id: int | None = Field(description="the finalized invoice that billed the task, when its month was closed")
    credit_note_id: int | None


class CreditNote(BaseModel):
    id: int
    invoice_id: int
    amount: Exact
    currency: str
    reason: str
    created_at: Utc
    stripe_credit_note_id: str | None
    task: str | None = Field(default=None, description="the disputed task a dispute's credit note is for")
    dispute_id: int | None = None


class PendingJobs(BaseModel):
    """Completed tasks awaiting settlement (outcome rules): not billed yet."""

    count: int
    amount: Exact = Field(description="what they would add to this invoice if they settled this month")
    currency: str


class DraftInvoice(BaseModel):
    id: None
    number: None
    status: Literal["draft"]
    customer: str
    period: str
    period_start: datetime
    period_end: datetime
    as_of: datetime
    currency: str
    plan: str
    plan_versions: dict[str, list[int]]
    outcome_versions: list[int] = Field(default=[], description="outcome rule versions that settled its tasks")
    price_version: str
    total: Exact
    lines: list[InvoiceLine]
    pending: PendingJobs


class Invoice(BaseModel):
    id: int
    number: str | None
    status: Literal["draft", "finalized", "void"]
    customer: str
    period: str
    currency: str
    plan: str
    plan_versions: dict[str, list[int]]
    outcome_versions: list[int] = Field(default=[], description="outcome rule versions that settled its tasks")
    price_version: str
    total: Exact
    total_minor: int
    credited: Exact
    amount_due: Exact
    created_at: Utc
    finalized_at: Utc | None
    stripe_invoice_id: str | None
    stripe_status: str | None
    stripe_error: str | None
    payment_status: str | None
    lines: list[InvoiceLine]
    credit_notes: list[CreditNote]


class InvoiceSummary(BaseModel):
    id: int
    number: str | None
    status: str
    period: str
    currency: str
    total: Exact
    finalized_at: Utc | None


class TenantInvoice(BaseModel):
    """An invoice in the list of a tenant's invoices (`taskmeter invoices`)."""

    id: int
    number: str | None
    customer: str
    status: str
    period: str
    currency: str
    total: Exact
    lines: int
    adjustment_lines: int = Field(description="lines billing late usage of an earlier, closed month")
    finalized_at: Utc | None
