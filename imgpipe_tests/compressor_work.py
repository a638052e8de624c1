"""Stand-ins for the image policy that the compressor tests name as the work of a child (as `faults` does):
ones that report when and where they ran, so that the tests can see the server's scheduling."""
from __future__ import annotations

import os
import time

TIMED = "imgpipe_tests.compressor_work:timed"
GROW = "imgpipe_tests.compressor_work:grow"


def timed(data, **limits):
    """Works `data` (a decimal number of seconds) long; answers "pid start end" (monotonic clock)."""
    started = time.monotonic()
    time.sleep(float(data.decode()))
    return f"{os.getpid()} {started} {time.monotonic()}"


_kept: list[bytes] = []


def grow(data, **limits):
    """Keeps `data` (a decimal number of MiB) of memory until the process ends: a leak that a pool worker
    carries from image to image. Answers how much it holds."""
    _kept.append(bytearray(int(data.decode()) << 20))
    return f"holding {sum(map(len, _kept)) >> 20} MiB"
