"""The test run's clock, moved to a chosen instant: `TASKMETER_TEST_CLOCK=2026-12-31T23:59:57Z`.

`.ci/run` runs the suite a few seconds before a month ends (in UTC and in UTC+14) so that a test
which reads the wall clock instead of freezing it fails there, not on the day the month turns.
The clock starts at that instant and ticks; every Python process the tests start (pytest-xdist
workers, the CLI, `taskmeter serve`) follows the same timeline: they inherit `TEST_CLOCK_OFFSET_S`
(fake minus real seconds) and load `clockshift/sitecustomize.py` through `PYTHONPATH`.

time-machine moves the clock at the C level (`time.time`, `datetime.now`, ...) without replacing
the `datetime` classes, so libraries imported afterwards are unaffected; monotonic clocks, sleeps
and timeouts stay real. Tests that depend on "now" still freeze it themselves.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

OFFSET_ENV = "TEST_CLOCK_OFFSET_S"  # not TASKMETER_*: the process helpers pass on only their own of those
_TRAVELLER: Any = None


def start_from_environment() -> Any:
    """Start the shifted clock if the run asks for one (idempotent); None when not asked."""
    global _TRAVELLER
    offset = os.environ.get(OFFSET_ENV)
    target = os.environ.get("TASKMETER_TEST_CLOCK")
    if _TRAVELLER is not None or (offset is None and not target):
        return _TRAVELLER
    if os.environ.get("TEST_CLOCK_PID") == str(os.getpid()):  # sitecustomize moved this process already
        return True
    if offset is None:
        from datetime import datetime

        instant = datetime.fromisoformat(str(target).replace("Z", "+00:00"))
        if instant.tzinfo is None:
            raise ValueError("TASKMETER_TEST_CLOCK needs an offset, e.g. 2026-12-31T23:59:57Z")
        offset = repr(instant.timestamp() - time.time())
        os.environ[OFFSET_ENV] = offset
        here = str(Path(__file__).with_name("clockshift"))
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    import time_machine

    _TRAVELLER = time_machine.travel(time.time() + float(offset), tick=True)
    _TRAVELLER.start()
    return _TRAVELLER
