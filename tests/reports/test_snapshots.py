"""When a month's dashboard snapshot is current (`reports.snapshots.freshness`): its outcomes
count up to the time it was computed, so in a month whose outcomes move with time a snapshot of an
earlier minute is aging (shown while a new one is made), then stale."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from metering.core.periods import parse_month
from reports import snapshots
from reports.snapshots import Snapshot

COMPUTED = datetime(2026, 10, 20, 12, 0, 30, tzinfo=UTC)


def snapshot(watermark: int = 7) -> Snapshot:
    return Snapshot("2026-10", "f3|x", watermark, COMPUTED, "{}")


@pytest.mark.parametrize(("now", "timed", "watermark", "expected"), [
    (datetime(2026, 10, 20, 12, 0, 59, tzinfo=UTC), True, 7, "fresh"),  # the same minute
    (datetime(2026, 10, 20, 12, 1, 10, tzinfo=UTC), True, 7, "aging"),  # the next minute
    (datetime(2026, 10, 20, 12, 1, 40, tzinfo=UTC), True, 7, "stale"),  # and more than a minute old
    (datetime(2026, 10, 20, 13, 0, 0, tzinfo=UTC), False, 7, "fresh"),  # nothing moves with time
    (datetime(2026, 10, 20, 12, 1, 10, tzinfo=UTC), False, 8, "aging"),  # newer usage
])  # fmt: skip
def test_an_open_month_whose_outcomes_move_with_time(now: datetime, timed: bool, watermark: int, expected: str) -> None:
    assert snapshots.freshness(snapshot(), "f3|x", watermark, closed=False, now=now, timed=timed) == expected


def test_another_fingerprint_is_stale_and_none_is_missing() -> None:
    now = datetime(2026, 10, 20, 12, 0, 40, tzinfo=UTC)
    assert snapshots.freshness(snapshot(), "f3|y", 7, closed=False, now=now) == "stale"
    assert snapshots.freshness(None, "f3|x", 7, closed=False, now=now) == "missing"


def test_outcome_rules_and_tasks_dated_ahead_make_an_open_month_timed(make_books) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.orm import Session

    from tests.reports.conftest import ended

    books = make_books("snapshots-timed")
    october = parse_month("2026-10", "UTC")
    inside, after = datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    books.send(ended("a", "2026-10-05T10:00:00Z"))
    books.rollup()
    with Session(books.engine) as session:
        assert not snapshots.timed(session, books.tenant, october, now=inside)
    books.send(ended("b", "2026-10-25T10:00:00Z"))  # dated ahead of `inside`
    books.rollup()
    with Session(books.engine) as session:
        assert snapshots.timed(session, books.tenant, october, now=inside)
        assert not snapshots.timed(session, books.tenant, october, now=after)  # the month has ended
    other = make_books("snapshots-rules")
    other.config({"outcomes": [{"task_type": "default", "settle_after": "72h"}]})
    with Session(other.engine) as session:
        assert snapshots.timed(session, other.tenant, october, now=inside)
