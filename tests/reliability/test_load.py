"""Load with faults, the CI variant of `bench/load_faults.py`: 20 s of concurrent clients against
a real `taskmeter serve` (scheduler on) with overlapping batches, replays, conflicts, invalid
events, unread answers, readers of every report and two SIGKILLs of the server; then nothing is
lost, doubled or mispriced, and the month closes to invoices equal to their lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load_faults import LoadOptions, markdown, run_load
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.slow


def test_concurrent_load_with_faults_loses_and_doubles_nothing(database_url: str, tmp_path: Path) -> None:
    options = LoadOptions(seconds=20, clients=6, readers=2, batch=200, kill_every=8, customers=16)
    report = run_load(database_url, tmp_path, options, secret=TEST_SECRET)
    print("\n" + markdown(report))  # the figures, with -s

    assert report.problems == []
    assert report.events_stored == report.distinct_ids_sent > 1000
    counts = report.counts
    assert counts["kills"] >= 1 and report.server_starts == counts["kills"] + 1
    assert counts["replays"] > 0 and counts["conflicts_sent"] > 0 and counts["invalid_sent"] > 0
    assert counts["invalid_rejected"] >= counts["invalid_sent"]
    assert counts["accepted"] <= report.events_stored  # answers lost to SIGKILL may hide some
    assert report.rollup_catch_up_s is not None and report.close["exit"] == 0
    assert report.close["invoices"] == options.customers
    assert report.latency_ms["POST /v1/events"]["n"] > 0
    assert len([name for name in report.latency_ms if name.startswith("GET")]) >= 3  # reads ran beside
