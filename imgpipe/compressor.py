"""Each image is decoded and encoded in a fresh child process of its own (contract section 9).

A crash, hang or memory blow-up in a decoder then fails that one image: the child is forked, so it inherits
the image bytes instead of having them pickled, it may use only so much more memory than its parent, and it
is killed when it overruns its time. Downloader threads call `compress_isolated` at the same time.

The child is forked with `os.fork` rather than `multiprocessing.Process`: `Process.start()` reaps every
finished child of the process, including other threads' children, so under concurrent calls `join()` can
return before the exit status is known and `close()` can fail with "process still running".
"""
from __future__ import annotations

import os
import resource
import signal
import threading
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import NoReturn

from imgpipe.image_policy import CompressedImage, ImageRejected, compress_image
from imgpipe.settings import MIB

# Held from creating a pipe until the parent has closed its copy of the write end, so that no child forked
# by another thread inherits that copy: it would keep the pipe open, and the parent would not see the end of
# file that tells it its own child died.
_FORK_LOCK = threading.Lock()


@dataclass(frozen=True)
class CompressionOutcome:
    ok: bool
    error: str | None
    image: CompressedImage | None
    pid: int  # the child process that did the work


def compress_isolated(
    data: bytes, *, max_pixels: int, max_frames: int, timeout: float, memory_bytes: int
) -> CompressionOutcome:
    """`compress_image(data)` run in a new child process that may use `memory_bytes` more memory than this
    one and is killed after `timeout` seconds. Image problems, crashes and overruns come back as ok=False."""
    with _FORK_LOCK:
        receiver, sender = Pipe(duplex=False)
        pid = os.fork()
        if pid == 0:
            _run_child(sender, data, max_pixels, max_frames, memory_bytes)
        sender.close()

    timed_out, answer = False, None
    try:
        with receiver:
            if receiver.poll(timeout):
                answer = receiver.recv()
            else:
                timed_out = True
    except (EOFError, OSError):
        pass  # the child ended without answering, or part way through its answer
    finally:
        # Ends a child that overran its time; one that has answered is only exiting, and one that has died
        # (the end of file above) keeps the exit status it had.
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)

    if isinstance(answer, CompressedImage):
        return CompressionOutcome(ok=True, error=None, image=answer, pid=pid)
    if timed_out:
        error = f"compression took longer than {timeout:.3g} s"
    else:
        error = answer or f"compression process died ({_exit_reason(status)})"
    return CompressionOutcome(ok=False, error=error, image=None, pid=pid)


def _run_child(
    sender: Connection, data: bytes, max_pixels: int, max_frames: int, memory_bytes: int
) -> NoReturn:
    # os._exit in every case: the child must never return into its parent's code, nor run its exit handlers.
    exit_code = 1
    try:
        _limit_address_space(memory_bytes)
        sender.send(_compress_or_explain(data, max_pixels, max_frames, memory_bytes))
        exit_code = 0
    finally:
        os._exit(exit_code)


def _compress_or_explain(
    data: bytes, max_pixels: int, max_frames: int, memory_bytes: int
) -> CompressedImage | str:
    try:
        return compress_image(data, max_pixels=max_pixels, max_frames=max_frames)
    except ImageRejected as exc:
        return str(exc)
    except MemoryError:
        return f"out of memory: the image needs more than {memory_bytes // MIB} MiB"
    except Exception as exc:  # a bug or an unforeseen decoder error: still this image's failure alone
        return f"compression failed: {type(exc).__name__}: {exc}"


def _limit_address_space(memory_bytes: int) -> None:
    # The child starts as a copy of its parent, whose size varies, so the cap is relative to that size.
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + memory_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _exit_reason(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"signal {-code}" if code < 0 else f"exit code {code}"
