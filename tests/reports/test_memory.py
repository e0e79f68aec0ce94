"""The monthly CSVs stream: 200,000 tasks are written in the memory of 100,000.

Each measure runs in a fresh interpreter (its peak resident memory is its own). The tasks file of
a 200,000-task month takes no more memory than that of a 100,000-task month (past the database's
page cache, 16 MB per SQLite connection, filled by the first tens of thousands of rows), and the
whole month's four files, whose comparison rates every ended task in memory, stay far from the
1 GB budget of the million-task bench.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from bench.reports_data import build_month
from metering.core.tenants import Tenant

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import json, sys
from pathlib import Path
from sqlalchemy.orm import Session
from metering.core.db import make_engine
from metering.core.periods import parse_month
from metering.core.tenants import get_tenant
from reports.csvwriter import write_file
from reports.monthly import report_chunks, write_month

url, name, what, out = sys.argv[1:5]
engine = make_engine(url)
with engine.connect() as connection:
    tenant = get_tenant(connection, name)
if what == "tasks":
    with Session(engine) as session:
        size = write_file(Path(out) / f"{name}.csv", report_chunks(session, tenant, parse_month("2026-10", "UTC"), "tasks"))
    rows = (Path(out) / f"{name}.csv").read_bytes().count(b"\\r\\n") - 1
else:
    result = write_month(engine, tenant, "2026-10", Path(out) / name)
    rows = sum(f["rows"] for f in result["files"])
# VmHWM: this program's peak resident memory (ru_maxrss would include the forking parent's).
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mb": peak / 1024, "rows": rows}))
"""


def measure(url: str, tenant: str, what: str, out: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, url, tenant, what, str(out)], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.slow
def test_200k_tasks_stream_in_bounded_memory(
    database_url: str, engine: Engine, make_tenant: Callable[..., Tenant], tmp_path: Path
) -> None:
    build_month(engine, make_tenant("big"), tasks=200_000, customers=500)
    build_month(engine, make_tenant("small"), tasks=100_000, customers=500, configure=False)
    big = measure(database_url, "big", "tasks", tmp_path)
    small = measure(database_url, "small", "tasks", tmp_path)
    assert (big["rows"], small["rows"]) == (200_000, 100_000)
    assert big["peak_mb"] - small["peak_mb"] < 10, (big, small)  # twice the tasks, the same memory
    month = measure(database_url, "big", "month", tmp_path)
    assert month["rows"] > 200_000 and month["peak_mb"] < 700, month
    print(
        f"peak RSS: tasks file 200k {big['peak_mb']:.0f} MB, 100k {small['peak_mb']:.0f} MB; the whole month {month['peak_mb']:.0f} MB"
    )
