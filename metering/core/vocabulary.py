"""The words taskmeter meters and bills with, declared once: token classes, the measures of the
rollup, task statuses and the event types that end a task."""

from __future__ import annotations

from typing import Literal, get_args

TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
"""Token counts as usage events report them: `input_tokens` INCLUDES cache reads and writes, and
`reasoning_tokens` are part of `output_tokens` (reported apart, never priced apart)."""

ONE_HOUR_FIELD = "cache_write_1h_tokens"
"""Anthropic's 1-hour cache writes: a subset of `cache_write_tokens`, priced at the 1-hour rate
where the price has one (else as other cache writes). Not a column of the monthly CSVs."""

EVENT_TOKEN_FIELDS = (*TOKEN_FIELDS, ONE_HOUR_FIELD)
"""Every token count an event carries and the rollup sums."""

PRICED_TOKEN_FIELDS = (*TOKEN_FIELDS[:4], ONE_HOUR_FIELD)
"""The reported counts a rate card prices (`metering.costs.prices`)."""

TOKEN_CLASSES = ("input", "output", "cache_read", "cache_write")
"""Billable token classes, priced by rate cards and plans. Billable `input` EXCLUDES cache reads
and writes: reported `input_tokens - cache_read_tokens - cache_write_tokens`."""

RATE_CARD_CLASSES = ("input", "cache_read", "cache_write", "cache_write_1h", "output")
"""The classes a provider's rate card prices: `cache_write` the cache writes that are not
1-hour, `cache_write_1h` the 1-hour ones (at the write rate where the card has no 1-hour rate)."""

USAGE_MEASURES = ("usage_events", *EVENT_TOKEN_FIELDS, "cost_nanos", "cost_rem", "unpriced_events")
"""The measures the rollup sums per task, day and model (`usage_daily`, `task_usage`)."""

Outcome = Literal["completed", "failed", "cancelled"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
"""How a task ended: the status of an ended task."""

TaskStatus = Literal["completed", "failed", "cancelled", "open"]
TASK_STATUSES: tuple[TaskStatus, ...] = get_args(TaskStatus)
"""A task's status: its outcome, or `open` while no terminal event is known."""

TERMINAL_TYPES = tuple(f"task.{outcome}" for outcome in OUTCOMES)
"""The event types that end a task (`task.<outcome>`)."""
