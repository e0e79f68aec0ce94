"""Loaded by every Python process that a clock-shifted test run starts (tests/support/clock.py)."""

import os
import time

_offset = os.environ.get("TEST_CLOCK_OFFSET_S")
if _offset:
    import time_machine

    _TRAVELLER = time_machine.travel(time.time() + float(_offset), tick=True)
    _TRAVELLER.start()
    os.environ["TEST_CLOCK_PID"] = str(os.getpid())  # tests/support/clock.py must not move it twice
