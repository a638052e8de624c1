"""The fork server: `python -m imgpipe.images.fork_server`, started once per calling process by
`imgpipe.images.compressor`, which imports only the image policy and then freezes its heap (`gc.freeze`), so that a
child's garbage collector never touches, and so copies, the pages it shares with the server. The server does the
scheduling itself, so that nothing on the caller's side (threads waiting for the GIL) stands between one image and
the next:

- it queues the images it is sent and runs at most `slots` at once (the cores), starting the next one the moment
  an image's answer is in, before that process has even exited;
- it keeps processes forked ahead of need ("spares", blocked reading their job), so that a fork is never on the
  way from an answer to the next image; a spare is given its job (the request's own frames, forwarded unread)
  through a pipe of its own;
- an answer is the child's own pickle, forwarded to the caller behind a small header, never unpickled and
  pickled again on the way (`imgpipe.images.fork_server_protocol`).

Isolation `process` (the default, IMGPIPE_ISOLATION): every process does one image, then exits; its answer is
forwarded once it has been reaped. Isolation `pool`: a process (a worker) does up to `recycle` images
(IMGPIPE_POOL_RECYCLE) one after another, each under the same memory cap and timeout; a worker that overruns is
killed, and only its image fails; one that failed in any way but a rejected image (a bug, out of memory) is
replaced. What a child does is `imgpipe.images.compression_worker`.
"""
from __future__ import annotations

import collections
import gc
import os
import pickle
import select
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from imgpipe.images.compression_worker import worker_main
from imgpipe.images.fork_server_protocol import (
    ANSWER_HEADER,
    FRAME_LENGTH,
    FrameReader,
    exit_reason,
    import_work,
    widen_pipe,
    write_all,
)



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
    answers: FrameReader  # read end of the pipe it answers on
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
        self.requests = FrameReader(requests_fd)
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
                self.works[work] = import_work(work)
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
                write_all(worker.job_fd, FRAME_LENGTH.pack(len(job.header)), job.header,
                          FRAME_LENGTH.pack(len(job.data)), job.data)
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
        widen_pipe(job_write)
        widen_pipe(answer_write)
        # Everything of the server's that the child must not keep open: the caller's pipes, the other workers'.
        inherited = [self.requests_fd, self.answers_fd, job_write, answer_read,
                     *(fd for w in self.workers.values() for fd in (w.job_fd, w.answers.fd))]
        server = os.getpid()
        pid = os.fork()
        if pid == 0:
            worker_main(job_read, answer_write, inherited, self.works, server)
        os.close(job_read)
        os.close(answer_write)
        worker = _Worker(pid, job_write, FrameReader(answer_read))
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
                worker.held = [ANSWER_HEADER.pack(job.job_id, worker.pid, seconds) + result]
            else:
                self._answer(job.job_id, worker.pid, result, seconds)
        if not more:
            status = self._reap(worker)
            for answer in worker.held:
                write_all(self.answers_fd, FRAME_LENGTH.pack(len(answer)), answer)
            if worker.job is not None:  # it ended without answering
                reason = f"compression process died ({exit_reason(os.waitstatus_to_exitcode(status))})"
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
        head = ANSWER_HEADER.pack(job_id, pid, seconds)
        write_all(self.answers_fd, FRAME_LENGTH.pack(len(head) + len(payload)), head, payload)


def main() -> None:
    # The answers keep their own copy of stdout; a stray print in the server goes to stderr instead.
    answers_fd = os.dup(1)
    os.dup2(2, 1)
    widen_pipe(answers_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the caller, whose exit ends this server
    # An ignored SIGCHLD survives exec, and the warm run server, which starts the fork servers its run workers adopt,
    # ignores it: the kernel would then reap each image process, and waitpid could tell neither how it died (a
    # crash was reported as "exit code 0") nor its CPU time.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Everything imported so far is shared with every child; frozen, no collection in a child touches (and so
    # copies) those pages, and none here walks them again.
    gc.collect()
    gc.freeze()
    _Server(0, answers_fd).serve()


if __name__ == "__main__":
    main()
