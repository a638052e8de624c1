"""Each image is decoded and encoded in an OS process of its own (contract section 9).

A crash, hang or memory blow-up in a decoder then fails that one image: the process may use only so much more
memory than it started with (RLIMIT_AS), and it is killed when it overruns its time.

The processes are not forked from the caller (a Dagster step process of 150-300 MiB, with threads) but from a
lean fork server: `python -m imgpipe.images.compressor`, started once per calling process, which imports only the
image policy and then freezes its heap (`gc.freeze`), so that a child's garbage collector never touches, and so
copies, the pages it shares with the server. The server does the scheduling itself, so that nothing on the
caller's side (threads waiting for the GIL) stands between one image and the next:

- it queues the images it is sent and runs at most `slots` at once (the cores), starting the next one the moment
  an image's answer is in, before that process has even exited;
- it keeps processes forked ahead of need ("spares", blocked reading their job), so that a fork is never on the
  way from an answer to the next image; a spare is given its job (the request's own frames, forwarded unread)
  through a pipe of its own;
- an answer is the child's own pickle, forwarded to the caller behind a small header, never unpickled and
  pickled again on the way.

Isolation `process` (the default, IMGPIPE_ISOLATION): every process does one image, then exits; its answer is
forwarded once it has been reaped. Isolation `pool`: a process (a worker) does up to `recycle` images
(IMGPIPE_POOL_RECYCLE) one after another, each under the same memory cap and timeout; a worker that overruns is
killed, and only its image fails; one that failed in any way but a rejected image (a bug, out of memory) is
replaced.

Protocol over the server's stdin and stdout, and over each child's two pipes: frames of a 4-byte big-endian
length and a payload, each read straight into bytes of its own. A request is two frames: a pickle of (job_id,
work, max_pixels, max_frames, timeout, memory_bytes, slots, recycle, not_after, renditions), then the image's bytes
as they are, both sent on to the child as they came (nobody on the way unpickles or copies the image); a child
answers with one byte (1: it exits after this answer) and a pickle of its result (a `CompressedImage`, its
renditions included, or the reason the image failed); the server answers the caller with (job_id, pid, seconds at work) packed as "!QId" and the child's
pickle. An answer from a process that is leaving is sent on once that process has been reaped.
"""
from __future__ import annotations

import atexit
import collections
import fcntl
import gc
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
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, NoReturn

from imgpipe.images.image_policy import CompressedImage, ImageRejected
from imgpipe.images.renditions import RenditionSpec
from imgpipe.lifetime import die_with_parent, libc

MIB = 1024 * 1024  # not imported from imgpipe.settings: the server's heap stays without pydantic

# What a child runs, as "module:function"; tests name stand-ins that hang or crash the way a decoder might.
DEFAULT_WORK = "imgpipe.images.image_policy:compress_image"
_LENGTH = struct.Struct("!I")
_ANSWER = struct.Struct("!QId")  # job id, pid of the process that did it, seconds it worked on the image
# The server enforces each image's timeout; this margin only guards against a server that stopped answering.
_SERVER_GRACE = 30.0
# A child's decoder and encoder buffers are fresh pages, faulted in one 4 KiB page at a time; with
# transparent huge pages (madvise mode, the usual kernel default) malloc can ask for 2 MiB pages instead.
_GLIBC_TUNABLES = "glibc.malloc.hugetlb=1"
# Pipes of 1 MiB (Linux's default cap for an unprivileged process) carry a photograph in one write, not sixteen.
_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031
# A child's codec buffers (a decoded photograph, an encoder's coefficients: megabytes each) come from the top of
# the heap, which malloc grows in 2 MiB steps advised for transparent huge pages, rather than from mmap regions of
# their own, which are not 2 MiB-aligned and so fault in mostly one 4 KiB page at a time; and what a child frees
# stays in its heap for the next buffer (a pool worker's next image) instead of going back to the kernel.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
_HEAP_BUFFERS_UP_TO = 32 * MIB  # glibc's largest mmap threshold
_HEAP_KEPT_FREE = 64 * MIB
# Set in the server before its first fork: the C library, for mallopt.
_libc = None


@dataclass(frozen=True)
class CompressionOutcome:
    ok: bool
    error: str | None
    image: CompressedImage | None
    pid: int  # the process that did the work
    seconds: float = 0.0  # from the start of its process's work on the image to its answer (not the queue)


def _write_all(fd: int, *parts: bytes) -> None:
    views = [memoryview(part) for part in parts if part]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def _widen(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:  # a lower /proc/sys/fs/pipe-max-size: the default size works too, in more writes
        pass


class _FrameReader:
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
            chunk = os.read(self.fd, _LENGTH.size - len(self._length))
            self._length += chunk
            if len(self._length) == _LENGTH.size:
                (self._missing,) = _LENGTH.unpack(self._length)
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


# ---------------------------------------------------------------- the caller's side


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
                _write_all(process.stdin.fileno(), _LENGTH.pack(len(header)), header, _LENGTH.pack(len(data)), data)
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
        reader = _FrameReader(process.stdout.fileno())
        try:
            while reader.read_available():
                for frame in reader.frames():
                    job_id, pid, seconds = _ANSWER.unpack_from(frame)
                    result = pickle.loads(memoryview(frame)[_ANSWER.size:])
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
            future.set_result((0, f"compression server stopped ({_exit_reason(process.returncode)})", 0.0))


def start_server() -> subprocess.Popen:
    """A fork server: this process's own, or one started ahead of need for a process yet to be forked."""
    process = subprocess.Popen([sys.executable, "-m", "imgpipe.images.compressor"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, bufsize=0, close_fds=True, env=_server_environment())
    _widen(process.stdin.fileno())
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


# ---------------------------------------------------------------- the fork server


@dataclass
class _Job:
    job_id: int
    work: str
    timeout: float
    not_after: float | None
    slots: int
    recycle: int
    # The request's two frames as they came, for the child.
    header: bytes
    data: bytes


@dataclass
class _Worker:
    pid: int
    job_fd: int  # write end of the pipe the worker reads its jobs from
    answers: _FrameReader  # read end of the pipe it answers on
    limit: int = 0  # images it does before it exits; 0 while it is a spare that has had no job
    done: int = 0
    job: _Job | None = None
    started: float = 0.0
    deadline: float = 0.0
    held: list[bytes] = field(default_factory=list)  # a last answer, forwarded once the worker is reaped


class _Server:
    """Queue, spares and running workers; one loop around select()."""

    def __init__(self, requests_fd: int, answers_fd: int):
        self.requests_fd = requests_fd
        self.answers_fd = answers_fd
        self.requests = _FrameReader(requests_fd)
        self.request_header: bytes | None = None  # a request's first frame, until its second (the image) is in
        self.queue: collections.deque[_Job] = collections.deque()
        self.workers: dict[int, _Worker] = {}  # by the read end of the worker's answer pipe
        self.works: dict[str, Callable] = {}
        self.slots = os.cpu_count() or 2
        self.spares_wanted = 0  # spares to keep forked ahead: the cores for one image a process, none for a pool

    # -------------------------------------------------------- the loop

    def serve(self) -> None:
        try:
            while True:
                self._start_queued()
                self._fork_spares()
                running = [w for w in self.workers.values() if w.job is not None]
                wait = min((w.deadline for w in running), default=None)
                ready, _, _ = select.select([self.requests_fd, *self.workers], [], [],
                                            None if wait is None else max(0.0, wait - time.monotonic()))
                if self.requests_fd in ready:
                    if not self.requests.read_available():
                        return  # the caller went away
                    for frame in self.requests.frames():
                        if self.request_header is None:
                            self.request_header = frame
                        else:
                            self._enqueue(self.request_header, frame)
                            self.request_header = None
                for fd in ready:
                    if fd in self.workers:
                        self._read_worker(self.workers[fd])
                now = time.monotonic()
                for worker in [w for w in self.workers.values() if w.job is not None and w.deadline <= now]:
                    self._overran(worker)
        finally:
            for worker in list(self.workers.values()):
                self._kill(worker)

    def _enqueue(self, header: bytes, data: bytes) -> None:
        job_id, work, _, _, timeout, _, slots, recycle, not_after, _ = pickle.loads(header)
        if work not in self.works:
            try:
                self.works[work] = _import(work)
            except Exception as exc:  # noqa: BLE001 - a wrong name fails its own image
                self._answer(job_id, 0, pickle.dumps(f"compression failed: cannot load {work}: {exc}"))
                return
        self.slots = max(1, slots)
        self.spares_wanted = self.slots if recycle == 1 else 0
        self.queue.append(_Job(job_id, work, timeout, not_after, self.slots, recycle, header, data))

    def _start_queued(self) -> None:
        lost = 0
        while self.queue:
            running = sum(1 for w in self.workers.values() if w.job is not None)
            job = self.queue[0]
            if job.not_after is not None and time.monotonic() >= job.not_after:
                self.queue.popleft()
                self._answer(job.job_id, 0, pickle.dumps("compression did not start before its deadline"))
                continue
            if running >= job.slots:
                return
            worker = self._idle_worker_for(job) or self._fork_worker()
            try:
                _write_all(worker.job_fd, _LENGTH.pack(len(job.header)), job.header, _LENGTH.pack(len(job.data)),
                           job.data)
            except OSError as exc:  # the worker died before its job: another takes it, twice at most
                self._reap(worker)
                lost += 1
                if lost > 2:
                    self.queue.popleft()
                    self._answer(job.job_id, worker.pid, pickle.dumps(f"compression process could not start: {exc}"))
                continue
            self.queue.popleft()
            worker.job, worker.started = job, time.monotonic()
            worker.deadline = min(worker.started + job.timeout, job.not_after or float("inf"))
            worker.limit = worker.limit or job.recycle

    def _idle_worker_for(self, job: _Job) -> _Worker | None:
        """A pool worker of the same recycling that has images left, else a spare that has done none."""
        idle = [w for w in self.workers.values() if w.job is None and not w.held]
        if job.recycle > 1:
            for worker in idle:
                if worker.limit == job.recycle and worker.done < worker.limit:
                    return worker
        return next((w for w in idle if w.limit == 0), None)

    def _fork_spares(self) -> None:
        spares = sum(1 for w in self.workers.values() if w.limit == 0)
        for _ in range(self.spares_wanted - spares):
            self._fork_worker()

    # -------------------------------------------------------- workers

    def _fork_worker(self) -> _Worker:
        job_read, job_write = os.pipe()
        answer_read, answer_write = os.pipe()
        _widen(job_write)
        _widen(answer_write)
        # Everything of the server's that the child must not keep open: the caller's pipes, the other workers'.
        inherited = [self.requests_fd, self.answers_fd, job_write, answer_read,
                     *(fd for w in self.workers.values() for fd in (w.job_fd, w.answers.fd))]
        server = os.getpid()
        pid = os.fork()
        if pid == 0:
            _worker_main(job_read, answer_write, inherited, self.works, server)
        os.close(job_read)
        os.close(answer_write)
        worker = _Worker(pid, job_write, _FrameReader(answer_read))
        self.workers[answer_read] = worker
        return worker

    def _read_worker(self, worker: _Worker) -> None:
        try:
            more = worker.answers.read_available()
        except OSError:
            more = False
        for payload in worker.answers.frames():
            job, worker.job = worker.job, None
            worker.done += 1
            if job is None:
                continue
            seconds = time.monotonic() - worker.started
            result = memoryview(payload)[1:]  # after the worker's flag: whether this was its last image
            if payload[0] or worker.done >= worker.limit:
                worker.limit = worker.done  # no further image for it, and its answer once it is reaped
                worker.held = [_ANSWER.pack(job.job_id, worker.pid, seconds) + result]
            else:
                self._answer(job.job_id, worker.pid, result, seconds)
        if not more:
            status = self._reap(worker)
            for answer in worker.held:
                _write_all(self.answers_fd, _LENGTH.pack(len(answer)), answer)
            if worker.job is not None:  # it ended without answering
                reason = f"compression process died ({_exit_reason(os.waitstatus_to_exitcode(status))})"
                self._answer(worker.job.job_id, worker.pid, pickle.dumps(reason), time.monotonic() - worker.started)

    def _overran(self, worker: _Worker) -> None:
        job = worker.job
        self._kill(worker)
        self._answer(job.job_id, worker.pid, pickle.dumps(f"compression took longer than {job.timeout:.3g} s"),
                     time.monotonic() - worker.started)

    def _kill(self, worker: _Worker) -> None:
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap(worker)

    def _reap(self, worker: _Worker) -> int:
        self.workers.pop(worker.answers.fd, None)
        for fd in (worker.job_fd, worker.answers.fd):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            _, status = os.waitpid(worker.pid, 0)
        except ChildProcessError:
            status = 0
        return status

    def _answer(self, job_id: int, pid: int, payload: bytes, seconds: float = 0.0) -> None:
        head = _ANSWER.pack(job_id, pid, seconds)
        _write_all(self.answers_fd, _LENGTH.pack(len(head) + len(payload)), head, payload)


def _import(work: str) -> Callable:
    module, _, name = work.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_main(job_fd: int, answer_fd: int, inherited: list[int], works: dict[str, Callable],
                 server: int) -> NoReturn:
    # os._exit in every case: the child must never return into the server's loop, nor run exit handlers.
    exit_code = 1
    try:
        for fd in inherited:
            os.close(fd)
        # Nothing a decoder prints may land in the server's answer stream or read its requests.
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        die_with_parent(server)  # no spare or runaway image outlives the server
        _buffers_from_the_heap()
        empty_size = _address_space()
        jobs = _FrameReader(job_fd)
        done, limit = 0, 1
        while done < limit:
            header, data = _next_frame(jobs), _next_frame(jobs)
            if data is None:
                break  # the server went away
            _, work, max_pixels, max_frames, _, memory_bytes, _, recycle, _, renditions = pickle.loads(header)
            if done == 0:
                limit = recycle
                if limit == 1:
                    gc.disable()  # one image: no cycle worth collecting, and no shared page touched by the collector
            # What it may add to its size with its job in hand; for a pool worker, to its size as a spare (with
            # this job), so that memory kept from earlier images counts too and the same cap holds for all.
            _limit_address_space(min(_address_space(), empty_size + 3 * len(data)) + memory_bytes)
            function = works.get(work) or works.setdefault(work, _import(work))
            result, healthy = _compress_or_explain(function, data, max_pixels, max_frames, memory_bytes, renditions)
            del data
            answer = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
            done += 1
            # A worker that met a bug or ran out of memory is replaced; the flag tells the server it is leaving.
            last = done >= limit or not healthy
            _write_all(answer_fd, _LENGTH.pack(1 + len(answer)), b"\x01" if last else b"\x00", answer)
            if last:
                break
        exit_code = 0
    finally:
        os._exit(exit_code)


def _next_frame(reader: _FrameReader) -> bytes | None:
    while True:
        for payload in reader.frames():
            return payload
        if not reader.read_available():
            return None


def _compress_or_explain(function: Callable, data: bytes, max_pixels: int, max_frames: int, memory_bytes: int,
                         renditions: RenditionSpec | None) -> tuple[CompressedImage | str, bool]:
    """The result, and whether the process is fit for another image."""
    try:
        return function(data, max_pixels=max_pixels, max_frames=max_frames, renditions=renditions), True
    except ImageRejected as exc:
        return str(exc), True
    except MemoryError:
        return f"out of memory: the image needs more than {memory_bytes // MIB} MiB", False
    except Exception as exc:  # a bug or an unforeseen decoder error: still this image's failure alone
        return f"compression failed: {type(exc).__name__}: {exc}", False


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _limit_address_space(limit: int) -> None:
    # Relative to the process's own size when it was forked (plus its job), which varies a little.
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _buffers_from_the_heap() -> None:
    if _libc is not None:
        _libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_BUFFERS_UP_TO)
        _libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_KEPT_FREE)


def _exit_reason(code: int | None) -> str:
    return f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def main() -> None:
    # The answers keep their own copy of stdout; a stray print in the server goes to stderr instead.
    answers_fd = os.dup(1)
    os.dup2(2, 1)
    _widen(answers_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the caller, whose exit ends this server
    global _libc
    _libc = libc  # loaded as `imgpipe.lifetime` was imported (a C library that fails to load fails that import)
    # Everything imported so far is shared with every child; frozen, no collection in a child touches (and so
    # copies) those pages, and none here walks them again.
    gc.collect()
    gc.freeze()
    _Server(0, answers_fd).serve()


if __name__ == "__main__":
    main()
