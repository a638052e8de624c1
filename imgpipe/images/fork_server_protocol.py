"""What goes over the fork server's stdin and stdout, and over each of its children's two pipes.

Frames of a 4-byte big-endian length and a payload, each read straight into bytes of its own. A request is two
frames: a pickle of (job_id, work, max_pixels, max_frames, timeout, memory_bytes, slots, recycle, not_after,
renditions), then the image's bytes as they are, both sent on to the child as they came (nobody on the way
unpickles or copies the image); a child answers with one byte (1: it exits after this answer) and a pickle of its
result (a `CompressedImage`, its renditions included, or the reason the image failed); the server answers the
caller with (job_id, pid, seconds at work) packed as "!QId" and the child's pickle. An answer from a process that
is leaving is sent on once that process has been reaped.
"""
from __future__ import annotations

import collections
import fcntl
import importlib
import os
import struct
from typing import Callable

FRAME_LENGTH = struct.Struct("!I")
ANSWER_HEADER = struct.Struct("!QId")  # job id, pid of the process that did it, seconds it worked on the image
# Pipes of 1 MiB (Linux's default cap for an unprivileged process) carry a photograph in one write, not sixteen.
_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031


def write_all(fd: int, *parts: bytes) -> None:
    views = [memoryview(part) for part in parts if part]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def widen_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:  # a lower /proc/sys/fs/pipe-max-size: the default size works too, in more writes
        pass


class FrameReader:
    """Reads frames from a file descriptor, one read at a time (so that a reader woken by select never blocks):
    a frame's length, then its payload straight into bytes of that size, joined from parts only when it arrived in
    several reads."""

    def __init__(self, fd: int):
        self.fd = fd
        self._length = b""
        self._missing = 0  # bytes of the payload not read yet
        self._parts: list[bytes] = []
        self._done: collections.deque[bytes] = collections.deque()

    def read_available(self) -> bool:
        """One read; False at end of file."""
        if not self._missing:
            chunk = os.read(self.fd, FRAME_LENGTH.size - len(self._length))
            self._length += chunk
            if len(self._length) == FRAME_LENGTH.size:
                (self._missing,) = FRAME_LENGTH.unpack(self._length)
                self._length = b""
                if not self._missing:
                    self._done.append(b"")
            return bool(chunk)
        chunk = os.read(self.fd, min(self._missing, _PIPE_BYTES))  # a pipe gives at most that much a read
        self._parts.append(chunk)
        self._missing -= len(chunk)
        if not self._missing:
            self._done.append(self._parts[0] if len(self._parts) == 1 else b"".join(self._parts))
            self._parts = []
        return bool(chunk)

    def frames(self):
        while self._done:
            yield self._done.popleft()


def import_work(work: str) -> Callable:
    """What a request names as the child's work, "module:function"."""
    module, _, name = work.partition(":")
    return getattr(importlib.import_module(module), name)


def exit_reason(code: int | None) -> str:
    return f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
