"""A time limit on each call as a whole (`Deadline`), kept by one watchdog thread for the whole process, and
which deadline the call a thread is making is under (`thread_call`)."""
from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time

from imgpipe.net.errors import FetchError


class Deadline:
    """Shuts down every socket of one call when the call's time is up.

    Socket timeouts bound each read, not their sum, so a server trickling a byte at a time never trips them.
    Shutting a socket down from the watchdog's thread ends whatever read is waiting on it, headers or body.

    The clock starts with the first exchange (`start`), so a wait for a free connection to a busy host is not
    counted as download time; `until`, a monotonic instant, bounds the waits and cuts the clock short.
    """

    def __init__(self, seconds: float, what: str, until: float | None = None, cut_short: str | None = None):
        self.seconds = seconds
        self.expired = False
        self.over = False  # the call has ended; the watchdog drops it
        self.until = until
        self._what = what
        self._cut_short_message = cut_short  # the error when `until` came first
        self._cut_short = False
        self._expires_at: float | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "Deadline":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._expires_at is not None:
            _watchdog.forget(self)
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def start(self) -> None:
        if self._expires_at is not None:
            return
        now = time.monotonic()
        self._expires_at = now + self.seconds
        if self.until is not None and self.until < self._expires_at:
            self._expires_at, self._cut_short = self.until, True
        _watchdog.watch(self._expires_at, self)

    def remaining(self) -> float:
        """Time left: on the clock once started, else until `until` (the most a wait may take)."""
        end = self._expires_at if self._expires_at is not None else self.until
        return float("inf") if end is None else end - time.monotonic()

    def error(self) -> FetchError:
        if self._cut_short:  # no time is left for another attempt either
            return FetchError("timeout", self._cut_short_message or f"{self._what} ran out of time")
        return FetchError("timeout", f"{self._what} took longer than {self.seconds:g} s", retryable=True)

    def watch(self, sock: socket.socket) -> None:
        # A duplicate descriptor stays valid when TLS takes `sock` over (and a kept-alive TLS socket cannot be
        # dup()ed itself); shutting it down ends reads on the connection all the same, and we own it, so it can
        # never name somebody else's socket.
        with self._lock:
            duplicate = socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))
            self._sockets.append(duplicate)
            if self.expired:
                _shut_down(duplicate)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut_down(sock)


class _Watchdog:
    """One thread that expires the deadlines of every call in this process.

    A timer thread per call cost more than a whole conditional GET: starting and cancelling it woke threads and
    moved the GIL several times a call. Deadlines are kept in a heap; a call that ends only marks its own, and the
    thread is woken only when a new deadline comes before every other.
    """

    def __init__(self):
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # the thread does not follow a fork; its heap must not

    def _reset(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._over = 0  # ended calls still in the heap
        self._thread: threading.Thread | None = None

    def watch(self, expires_at: float, deadline: Deadline) -> None:
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._expire_due, name="imgpipe-deadlines", daemon=True)
                self._thread.start()
            if self._over > 1024 and self._over * 2 > len(self._heap):  # ended calls would pile up otherwise
                self._heap = [entry for entry in self._heap if not entry[2].over]
                heapq.heapify(self._heap)
                self._over = 0
            heapq.heappush(self._heap, (expires_at, next(self._order), deadline))
            if self._heap[0][2] is deadline:
                self._changed.notify()

    def forget(self, deadline: Deadline) -> None:
        with self._changed:
            if not deadline.over:  # else the watchdog expired it, and dropped it
                deadline.over = True
                self._over += 1

    def _expire_due(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].over or self._heap[0][0] <= now):
                    _, _, deadline = heapq.heappop(self._heap)
                    if deadline.over:
                        self._over -= 1
                    else:
                        deadline.over = True
                        deadline.expire()
                self._changed.wait(self._heap[0][0] - now if self._heap else None)


_watchdog = _Watchdog()


def _shut_down(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer
        sock.shutdown(socket.SHUT_RDWR)


# The deadline of the call this thread is making: a kept-alive connection serves one call after another, each
# under its own deadline.
thread_call = threading.local()
