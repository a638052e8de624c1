"""Stand-ins for the image policy that fail the way a decoder might, run by the fork server's children.

The fork server imports them by name (`compress_isolated(..., work="imgpipe_tests.faults:hang")`); it starts
in the test's working directory, the repository root, so this package is importable there.
"""
from __future__ import annotations

import os
import signal
import time

HANG = "imgpipe_tests.faults:hang"
RAISE = "imgpipe_tests.faults:raise_bug"
KILLED = "imgpipe_tests.faults:killed"
EXITED = "imgpipe_tests.faults:exit_3"


def hang(data, **limits):
    time.sleep(60)


def raise_bug(data, **limits):
    raise RuntimeError("decoder bug")


def killed(data, **limits):
    # As the kernel's OOM killer would; SIGKILL, not a segfault, keeps faulthandler's report out of the log.
    os.kill(os.getpid(), signal.SIGKILL)


def exit_3(data, **limits):
    os._exit(3)


ECHO_LARGE = "imgpipe_tests.faults:echo_large"


def echo_large(data, **limits):
    """An answer larger than a pipe's buffer (as a big image's encoding is), made from the request."""
    return "x" * (4 * len(data))
