"""Loaded at start-up by a worker of the clock-step test (its directory is put first on
PYTHONPATH): Python's wall clock, ``time.time`` and ``time.time_ns``, reads an offset from the
file named by ``RELIABILITY_CLOCK_FILE`` at every call, so the harness can step it while the
worker runs. The monotonic clock is left alone, as NTP leaves it. (libfaketime would step the
C library's clock too, but under it CPython's ``time.sleep`` fails with EINVAL.)"""

import os
import time

_path = os.environ.get("RELIABILITY_CLOCK_FILE", "")
if _path:
    _real_time, _real_time_ns = time.time, time.time_ns

    def _offset() -> float:
        try:
            with open(_path) as f:
                return float(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def _time() -> float:
        return _real_time() + _offset()

    def _time_ns() -> int:
        return _real_time_ns() + int(_offset() * 1e9)

    time.time, time.time_ns = _time, _time_ns
