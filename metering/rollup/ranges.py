"""Ranges of seqs read → priced → summarized: the work the rollup hands an executor
(`metering.rollup.executors`), in this process or apart, and the ranges' results gathered into one."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import Engine

from metering.core.db import make_engine
from metering.costs.book import price_events
from metering.costs.price_buckets import BucketScheme
from metering.costs.ratecards import PriceBook
from metering.rollup import quarantine
from metering.rollup.stores import RollupStore
from metering.rollup.summary import Summary, combine, summarize

Parts = tuple[Summary | None, dict[tuple[str, str], int], int, dict[int, list[int]]]
"""A range's summary, unpriced usage events by (provider, model), events read, and the seqs
set aside for the quarantine by reason."""


def summarize_range(
    engine: Engine, store: RollupStore, tenant_id: int, timezone: str, book: PriceBook, chunk_size: int, bounds: tuple[int, int], *,
    progress: Callable[[int, int], None] | None = None, after_chunk: Callable[[int], None] | None = None, own_process: bool = False,
    scheme: BucketScheme | None = None,
) -> Parts:  # fmt: skip
    """Read, price and summarize the events with start < seq <= end, chunk by chunk; the seqs of
    those that cannot be rolled up come back by reason (`metering.rollup.quarantine`), left out."""
    start, end = bounds
    summary: Summary | None = None
    unpriced: dict[tuple[str, str], int] = {}
    unprocessable: dict[int, list[int]] = {}
    read = 0
    frames = store.read_events(engine, tenant_id, start, end, chunk_size, own_process=own_process)
    for number, frame in enumerate(frames):
        last_seq = int(frame["seq"].iloc[-1])
        read += len(frame)
        frame = quarantine.split(frame, unprocessable)
        if not frame.empty:
            part = summarize(price_events(frame, book, unpriced), timezone, scheme)
            summary = part if summary is None else combine(summary, part)
        if progress is not None:
            progress(last_seq - start, end - start)
        if after_chunk is not None:
            after_chunk(number)
    return summary, unpriced, read, unprocessable


def summarize_apart(
    url: str, store: RollupStore, tenant_id: int, timezone: str, overrides: list[dict[str, str]], chunk_size: int, bounds: tuple[int, int],
    *, scheme: BucketScheme | None = None,
) -> Parts:  # fmt: skip
    """A range summarized in a process of its own: its own engine, the same prices."""
    engine = make_engine(url)
    try:
        return summarize_range(engine, store, tenant_id, timezone, PriceBook(overrides), chunk_size, bounds, own_process=True, scheme=scheme)  # fmt: skip
    finally:
        engine.dispose()


def gather(parts: Iterable[Parts]) -> Parts:
    """The ranges' results as one: summaries combined, counts and set-aside seqs added up."""
    summary: Summary | None = None
    unpriced: dict[tuple[str, str], int] = {}
    unprocessable: dict[int, list[int]] = {}
    read = 0
    for part, missing, count, set_aside in parts:
        if part is not None:
            summary = part if summary is None else combine(summary, part)
        for key, n in missing.items():
            unpriced[key] = unpriced.get(key, 0) + n
        for code, seqs in set_aside.items():
            unprocessable.setdefault(code, []).extend(seqs)
        read += count
    return summary, unpriced, read, unprocessable
