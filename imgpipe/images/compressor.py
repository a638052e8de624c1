"""Each image is decoded and encoded in an OS process of its own, with a hard timeout and a memory cap (the time
and memory per image of docs/safety.md#safety).

A crash, hang or memory blow-up in a decoder then fails that one image: the process may use only so much more
memory than it started with (RLIMIT_AS), and it is killed when it overruns its time.

The processes are not forked from the caller (a Dagster step process of 150-300 MiB, with threads) but from a
lean fork server (`imgpipe.images.fork_server`), started once per calling process, which queues this process's
images and runs at most `slots` at once. This module is the caller's side: `compress_isolated`, and the client
that starts (or adopts) the server, sends it requests and hands each thread its answer.
"""
from __future__ import annotations

import atexit
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import BinaryIO

from imgpipe.images.fork_server_protocol import (
    ANSWER_HEADER,
    FRAME_LENGTH,
    FrameReader,
    exit_reason,
    widen_pipe,
    write_all,
)
from imgpipe.images.image_policy import CompressedImage
from imgpipe.images.renditions import RenditionSpec

# What a child runs, as "module:function"; tests name stand-ins that hang or crash the way a decoder might.
DEFAULT_WORK = "imgpipe.images.image_policy:compress_image"
# The server enforces each image's timeout; this margin only guards against a server that stopped answering.
_SERVER_GRACE = 30.0
# A child's decoder and encoder buffers are fresh pages, faulted in one 4 KiB page at a time; with
# transparent huge pages (madvise mode, the usual kernel default) malloc can ask for 2 MiB pages instead.
_GLIBC_TUNABLES = "glibc.malloc.hugetlb=1"


@dataclass(frozen=True)
class CompressionOutcome:
    ok: bool
    error: str | None
    image: CompressedImage | None
    pid: int  # the process that did the work
    seconds: float = 0.0  # from the start of its process's work on the image to its answer (not the queue)


class ForkServerClient:
    """Starts the fork server on first use (again after it died, or in a forked copy of this process)."""

    def __init__(self):
        self._lock = threading.Lock()  # the server process and the unanswered requests
        self._send_lock = threading.Lock()  # one request's frame at a time into the server's stdin
        self._process: subprocess.Popen | None = None
        self._owner_pid = 0
        self._pending: dict[int, tuple[Future, float]] = {}  # job id -> (answer, its timeout)
        self._next_id = 0
        self._progress = 0.0  # when the server last answered, or was last sent work while it had none

    def compress(self, data: bytes, *, max_pixels: int, max_frames: int, timeout: float, memory_bytes: int,
                 work: str = DEFAULT_WORK, slots: int | None = None, recycle: int = 1,
                 not_after: float | None = None, renditions: RenditionSpec | None = None) -> CompressionOutcome:
        answer: Future = Future()
        with self._lock:
            process = self._running_server()
            self._next_id += 1
            job_id = self._next_id
            if not self._pending:
                self._progress = time.monotonic()
            self._pending[job_id] = (answer, timeout)
        header = pickle.dumps((job_id, work, max_pixels, max_frames, timeout, memory_bytes,
                               slots or os.cpu_count() or 2, recycle, not_after, renditions),
                              protocol=pickle.HIGHEST_PROTOCOL)
        # Not under `_lock`, which the reader thread needs for every answer: a request larger than the pipe
        # waits for the server to read it, and the server may first be waiting for its answers to be read.
        with self._send_lock:
            try:
                write_all(process.stdin.fileno(), FRAME_LENGTH.pack(len(header)), header,
                          FRAME_LENGTH.pack(len(data)), data)
            except OSError:
                with self._lock:
                    self._pending.pop(job_id, None)
                return CompressionOutcome(False, "compression server stopped", None, 0)
        while True:
            try:
                pid, result, seconds = answer.result(timeout=1.0)
                break
            except FutureTimeout:
                # The server answers something at least once per longest timeout while it has work (each
                # running image ends by then); silence beyond that means it is wedged.
                with self._lock:
                    longest = max((t for _, t in self._pending.values()), default=timeout)
                    if time.monotonic() - self._progress <= longest + _SERVER_GRACE:
                        continue
                    self._pending.pop(job_id, None)
                return CompressionOutcome(False, "compression server stopped answering", None, 0)
        if isinstance(result, CompressedImage):
            return CompressionOutcome(ok=True, error=None, image=result, pid=pid, seconds=seconds)
        return CompressionOutcome(ok=False, error=result, image=None, pid=pid, seconds=seconds)

    def close(self) -> None:
        with self._lock:
            process, self._process = self._process, None
        if process is not None and self._owner_pid == os.getpid():
            process.stdin.close()  # the server ends its children and exits at end of file
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def server_pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process is not None and self._owner_pid == os.getpid() else None

    def adopt(self, pid: int, requests: int | BinaryIO, answers: int | BinaryIO) -> None:
        """Use the fork server `pid`, started ahead of need by this process's parent (the warm run server), over
        the ends of its pipes this process inherited (file descriptors, or the unbuffered files of the parent's
        Popen), instead of starting one: that takes an interpreter 0.2-0.4 s to start and import the image
        policy, at the start of each run."""
        with self._lock:
            self._serve_through(_AdoptedServer(pid, requests, answers))

    def _running_server(self) -> subprocess.Popen | _AdoptedServer:
        if self._process is None or self._owner_pid != os.getpid() or self._process.poll() is not None:
            # In a forked copy of a process that had a server, that server and its pipes are the parent's.
            self._serve_through(start_server())
        return self._process

    def _serve_through(self, process: subprocess.Popen | _AdoptedServer) -> None:
        self._pending = {}
        self._process = process
        self._owner_pid = os.getpid()
        threading.Thread(target=self._read_answers, args=(process, self._pending),
                         name="imgpipe-fork-server-reader", daemon=True).start()

    def _read_answers(self, process: subprocess.Popen, pending: dict[int, tuple[Future, float]]) -> None:
        reader = FrameReader(process.stdout.fileno())
        try:
            while reader.read_available():
                for frame in reader.frames():
                    job_id, pid, seconds = ANSWER_HEADER.unpack_from(frame)
                    result = pickle.loads(memoryview(frame)[ANSWER_HEADER.size:])
                    with self._lock:
                        entry = pending.pop(job_id, None)
                        self._progress = time.monotonic()
                    if entry is not None:
                        entry[0].set_result((pid, result, seconds))
        except OSError:
            pass
        process.wait()
        with self._lock:
            orphans = [answer for answer, _ in pending.values()]
            pending.clear()
        for future in orphans:
            future.set_result((0, f"compression server stopped ({exit_reason(process.returncode)})", 0.0))


def start_server() -> subprocess.Popen:
    """A fork server: this process's own, or one started ahead of need for a process yet to be forked."""
    process = subprocess.Popen([sys.executable, "-m", "imgpipe.images.fork_server"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, bufsize=0, close_fds=True, env=_server_environment())
    widen_pipe(process.stdin.fileno())
    return process


class _AdoptedServer:
    """What the client uses of a Popen, for a fork server that this process's parent started: not this process's
    child, so its exit status is not ours to know. Like a server of our own, it exits at the end of its requests
    (this process's end of the pipe, the only one left open)."""

    def __init__(self, pid: int, requests: int | BinaryIO, answers: int | BinaryIO):
        self.pid = pid
        self.stdin = os.fdopen(requests, "wb", buffering=0) if isinstance(requests, int) else requests
        self.stdout = os.fdopen(answers, "rb", buffering=0) if isinstance(answers, int) else answers
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not _alive(self.pid):
            self.returncode = 0
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("imgpipe fork server", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def adopt_server(pid: int, requests: int | BinaryIO, answers: int | BinaryIO) -> None:
    """This process's compressions go to the fork server `pid` (see `ForkServerClient.adopt`)."""
    _client.adopt(pid, requests, answers)


def _server_environment() -> dict[str, str]:
    # Imported here, in the caller: the fork server itself loads nothing but the image policy.
    from imgpipe.settings import process_environment

    configured = process_environment().get("GLIBC_TUNABLES")
    return process_environment(GLIBC_TUNABLES=f"{configured}:{_GLIBC_TUNABLES}" if configured else _GLIBC_TUNABLES)


_client = ForkServerClient()
atexit.register(_client.close)


def compress_isolated(data: bytes, *, max_pixels: int, max_frames: int, timeout: float, memory_bytes: int,
                      work: str = DEFAULT_WORK, slots: int | None = None, isolation: str = "process",
                      recycle: int = 200, not_after: float | None = None,
                      renditions: RenditionSpec | None = None) -> CompressionOutcome:
    """`compress_image(data, renditions=renditions)` run in a process of its own that may use `memory_bytes` more
    memory than it started with and is killed after `timeout` seconds (counted from when it starts on the image, not
    from the wait for a free core), or at `not_after` (a time.monotonic() instant: the machine's clock, the
    server's too), whichever comes first; an image still waiting then is never started. At most `slots` images of this
    process are compressed at once (default: the cores); the others wait in the server's queue.
    `isolation="pool"`: in a worker process that does up to `recycle` images. Image problems, crashes and
    overruns come back as ok=False."""
    return _client.compress(data, max_pixels=max_pixels, max_frames=max_frames, timeout=timeout,
                            memory_bytes=memory_bytes, work=work, slots=slots,
                            recycle=max(1, recycle) if isolation == "pool" else 1, not_after=not_after,
                            renditions=renditions)
