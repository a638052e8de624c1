"""Each image is decoded and encoded in a fresh child process of its own (contract section 9).

A crash, hang or memory blow-up in a decoder then fails that one image: the child may use only so much more
memory than its parent, and it is killed when it overruns its time.

The children are not forked from the caller (a Dagster step process of 150-300 MiB, with threads) but from a
lean fork server: `python -m imgpipe.images.compressor`, started once per calling process, which imports only the
image policy. Page tables and copy-on-write faults grow with the parent, so forking from it is cheaper than
from a loaded step process (`bench/fork_cost.py` measures both), and its children count about 30 MiB each,
not the step's size. Downloader threads call `compress_isolated` at the same time; one reader thread hands each
answer to the thread that asked.

Protocol, over the server's stdin and stdout: frames of a 4-byte big-endian length and a pickle. A request is
(job_id, work, data, max_pixels, max_frames, timeout, memory_bytes); an answer (job_id, pid, result), where
result is a `CompressedImage` or the reason the image failed. The server reaps a child before answering.
"""
from __future__ import annotations

import atexit
import importlib
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable, NoReturn

from imgpipe.images.image_policy import CompressedImage, ImageRejected
from imgpipe.settings import MIB

# What a child runs, as "module:function"; tests name stand-ins that hang or crash the way a decoder might.
DEFAULT_WORK = "imgpipe.images.image_policy:compress_image"
_HEADER = struct.Struct("!I")
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
    pid: int  # the child process that did the work


def _frame(message) -> bytes:
    blob = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(blob)) + blob


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _FrameReader:
    """Collects bytes from a file descriptor and cuts them into frames."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = bytearray()

    def read_available(self) -> bool:
        """One read; False at end of file."""
        chunk = os.read(self.fd, 1 << 20)
        self.buffer += chunk
        return bool(chunk)

    def frames(self):
        while len(self.buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self.buffer)
            if len(self.buffer) < _HEADER.size + size:
                return
            blob = bytes(self.buffer[_HEADER.size:_HEADER.size + size])
            del self.buffer[:_HEADER.size + size]
            yield pickle.loads(blob)


# ---------------------------------------------------------------- the caller's side


class ForkServerClient:
    """Starts the fork server on first use (again after it died, or in a forked copy of this process)."""

    def __init__(self):
        self._lock = threading.Lock()  # the server process and the unanswered requests
        self._send_lock = threading.Lock()  # one request's frame at a time into the server's stdin
        self._process: subprocess.Popen | None = None
        self._owner_pid = 0
        self._pending: dict[int, Future] = {}
        self._next_id = 0

    def compress(self, data: bytes, *, max_pixels: int, max_frames: int, timeout: float, memory_bytes: int,
                 work: str = DEFAULT_WORK) -> CompressionOutcome:
        answer: Future = Future()
        with self._lock:
            process = self._running_server()
            self._next_id += 1
            job_id = self._next_id
            self._pending[job_id] = answer
        # Not under `_lock`, which the reader thread needs for every answer: a request larger than the pipe
        # waits for the server to read it, and the server may first be waiting for its answers to be read.
        with self._send_lock:
            try:
                _write_all(process.stdin.fileno(),
                           _frame((job_id, work, data, max_pixels, max_frames, timeout, memory_bytes)))
            except OSError:
                with self._lock:
                    self._pending.pop(job_id, None)
                return CompressionOutcome(False, "compression server stopped", None, 0)
        try:
            pid, result = answer.result(timeout + _SERVER_GRACE)
        except FutureTimeout:
            with self._lock:
                self._pending.pop(job_id, None)
            return CompressionOutcome(False, "compression server stopped answering", None, 0)
        if isinstance(result, CompressedImage):
            return CompressionOutcome(ok=True, error=None, image=result, pid=pid)
        return CompressionOutcome(ok=False, error=result, image=None, pid=pid)

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

    def _running_server(self) -> subprocess.Popen:
        if self._process is None or self._owner_pid != os.getpid() or self._process.poll() is not None:
            # In a forked copy of a process that had a server, that server and its pipes are the parent's.
            self._pending = {}
            self._process = subprocess.Popen(
                [sys.executable, "-m", "imgpipe.images.compressor"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                bufsize=0, close_fds=True, env=_server_environment(),
            )
            self._owner_pid = os.getpid()
            threading.Thread(target=self._read_answers, args=(self._process, self._pending),
                             name="imgpipe-fork-server-reader", daemon=True).start()
        return self._process

    def _read_answers(self, process: subprocess.Popen, pending: dict[int, Future]) -> None:
        reader = _FrameReader(process.stdout.fileno())
        try:
            while reader.read_available():
                for job_id, pid, result in reader.frames():
                    with self._lock:
                        future = pending.pop(job_id, None)
                    if future is not None:
                        future.set_result((pid, result))
        except OSError:
            pass
        process.wait()
        with self._lock:
            orphans = list(pending.values())
            pending.clear()
        for future in orphans:
            future.set_result((0, f"compression server stopped ({_exit_reason(process.returncode)})"))


def _server_environment() -> dict[str, str]:
    # Imported here, in the caller: the fork server itself loads nothing but the image policy.
    from imgpipe.settings import process_environment

    configured = process_environment().get("GLIBC_TUNABLES")
    return process_environment(GLIBC_TUNABLES=f"{configured}:{_GLIBC_TUNABLES}" if configured else _GLIBC_TUNABLES)


_client = ForkServerClient()
atexit.register(_client.close)


def compress_isolated(data: bytes, *, max_pixels: int, max_frames: int, timeout: float, memory_bytes: int,
                      work: str = DEFAULT_WORK) -> CompressionOutcome:
    """`compress_image(data)` run in a new child process that may use `memory_bytes` more memory than the
    fork server and is killed after `timeout` seconds. Image problems, crashes and overruns come back as
    ok=False."""
    return _client.compress(data, max_pixels=max_pixels, max_frames=max_frames, timeout=timeout,
                            memory_bytes=memory_bytes, work=work)


# ---------------------------------------------------------------- the fork server


@dataclass
class _Child:
    job_id: int
    pid: int
    deadline: float
    timeout: float
    answer: _FrameReader


def serve(requests_fd: int, answers_fd: int) -> None:
    """Fork a child per request; answer when the child has answered and been reaped, or overran its time."""
    requests = _FrameReader(requests_fd)
    children: dict[int, _Child] = {}  # by the read end of the child's answer pipe
    works: dict[str, Callable] = {}
    try:
        while True:
            wait = min((c.deadline for c in children.values()), default=None)
            ready, _, _ = select.select([requests_fd, *children], [], [],
                                        None if wait is None else max(0.0, wait - time.monotonic()))
            if requests_fd in ready:
                if not requests.read_available():
                    return  # the caller went away
                for job_id, work, data, max_pixels, max_frames, timeout, memory_bytes in requests.frames():
                    function = works.get(work) or works.setdefault(work, _import(work))
                    child = _fork_child(job_id, function, data, max_pixels, max_frames, timeout, memory_bytes)
                    children[child.answer.fd] = child
            for fd in [fd for fd in ready if fd in children]:
                child = children[fd]
                if not child.answer.read_available():
                    del children[fd]
                    _write_all(answers_fd, _frame((child.job_id, child.pid, _finish(child, timed_out=False))))
            now = time.monotonic()
            for fd, child in [(fd, c) for fd, c in children.items() if c.deadline <= now]:
                del children[fd]
                _write_all(answers_fd, _frame((child.job_id, child.pid, _finish(child, timed_out=True))))
    finally:
        for child in children.values():
            os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)


def _import(work: str) -> Callable:
    module, _, name = work.partition(":")
    return getattr(importlib.import_module(module), name)


def _fork_child(job_id: int, function: Callable, data: bytes, max_pixels: int, max_frames: int,
                timeout: float, memory_bytes: int) -> _Child:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _run_child(write_end, function, data, max_pixels, max_frames, memory_bytes)
    os.close(write_end)
    return _Child(job_id, pid, time.monotonic() + timeout, timeout, _FrameReader(read_end))


def _finish(child: _Child, timed_out: bool) -> CompressedImage | str:
    # An answered child is only exiting; one that overran is killed; one that died keeps its exit status.
    if timed_out:
        os.kill(child.pid, signal.SIGKILL)
    _, status = os.waitpid(child.pid, 0)
    answers = list(child.answer.frames())
    os.close(child.answer.fd)
    if answers:
        return answers[0]
    if timed_out:
        return f"compression took longer than {child.timeout:.3g} s"
    return f"compression process died ({_exit_reason(os.waitstatus_to_exitcode(status))})"


def _run_child(answer_fd: int, function: Callable, data: bytes, max_pixels: int, max_frames: int,
               memory_bytes: int) -> NoReturn:
    # os._exit in every case: the child must never return into the server's loop, nor run exit handlers.
    exit_code = 1
    try:
        # Nothing a decoder prints may land in the server's answer stream or read its requests.
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        _limit_address_space(memory_bytes)
        _write_all(answer_fd, _frame(_compress_or_explain(function, data, max_pixels, max_frames, memory_bytes)))
        exit_code = 0
    finally:
        os._exit(exit_code)


def _compress_or_explain(function: Callable, data: bytes, max_pixels: int, max_frames: int,
                         memory_bytes: int) -> CompressedImage | str:
    try:
        return function(data, max_pixels=max_pixels, max_frames=max_frames)
    except ImageRejected as exc:
        return str(exc)
    except MemoryError:
        return f"out of memory: the image needs more than {memory_bytes // MIB} MiB"
    except Exception as exc:  # a bug or an unforeseen decoder error: still this image's failure alone
        return f"compression failed: {type(exc).__name__}: {exc}"


def _limit_address_space(memory_bytes: int) -> None:
    # The child starts as a copy of the server, whose size varies a little, so the cap is relative to it.
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + memory_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _exit_reason(code: int | None) -> str:
    return f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def main() -> None:
    # The answers keep their own copy of stdout; a stray print in the server goes to stderr instead.
    answers_fd = os.dup(1)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the caller, whose exit ends this server
    serve(0, answers_fd)


if __name__ == "__main__":
    main()
