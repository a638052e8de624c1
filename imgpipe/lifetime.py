"""A child process that dies with its parent: Linux's PR_SET_PDEATHSIG, so that a parent killed outright (kill -9,
a lost terminal) leaves no child of its running. The signal follows the parent *thread* that forked the child:
fork from a thread that lives as long as the parent should."""
from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
# The C library, loaded once (and shared: the fork server's mallopt uses it too); prctl looked up once, in the
# parent: a child between fork and exec should call, not load, the C library.
libc = ctypes.CDLL(None, use_errno=True)
_prctl = libc.prctl


def die_with_parent(expected_parent: int, signum: int = signal.SIGKILL) -> None:
    """`signum` when the parent goes (SIGKILL unless the child should stop in order); if it went before this
    call, exit now."""
    _prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != expected_parent:
        os._exit(1)
