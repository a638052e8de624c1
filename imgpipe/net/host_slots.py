"""Politeness per host (docs/operations.md#re-uploads-politeness-and-retention): at most `HostSlots.per_host`
connections to one host at once, kept open from one download to the next; a step's downloads handed to its
threads by host (`HostQueue`); and a host that stops answering given up for a while, so that a dead host holds up
neither the other hosts' images nor, for long, its own."""
from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from urllib3.connectionpool import HTTPConnectionPool

from imgpipe.net.errors import FetchError
from imgpipe.net.pools import pool_for
from imgpipe.net.url_safety import CheckedTarget

# A host that leaves this many different URLs in a row without an answer is given up for the rest of its
# HostSlots (a step, or a shared run). Different URLs: one URL that hangs, retried, must not condemn its host.
UNANSWERED_IN_A_ROW = 3
# How long a host that was given up stays so; then its next downloads try it again (it may have come back).
GIVEN_UP_SECONDS = 60.0


T = TypeVar("T")


class HostSlots:
    """At most `per_host` connections at once to each host (a hop's host:port), shared by one step's threads, and
    those connections kept open from one download to the next (a new TCP connection, and the pool around it, cost
    more than a conditional GET answered 304). `close` ends the kept ones.

    A slot is held from connecting until the exchange is over, body included, and never while waiting to try
    again; a host that is busy holds up only the downloads waiting for it. Connections are kept per checked
    address (a host name that resolves elsewhere next time gets a connection of its own), at most `per_host`.

    The step's threads take their downloads from `queue`s, which hand one out only when its host has room for it
    (see HostQueue), so a thread never waits here for a busy or dead host while another host's download waits
    (but on a redirect to a host other than its URL's, for that host's slots, within its deadline).
    A host that leaves UNANSWERED_IN_A_ROW different URLs in a row without an answer (a connect or read timeout, a
    refused or reset connection) is given up for GIVEN_UP_SECONDS: its downloads that wait fail at once, without a
    connection, and those under way are not tried again; after that, its next downloads try it again.
    """

    def __init__(self, per_host: int):
        if per_host < 1:
            raise ValueError(f"per_host must be at least 1, not {per_host}")
        self.per_host = per_host
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._pools: dict[tuple, HTTPConnectionPool] = {}
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # notified when a download may start that could not
        self._under_way: collections.Counter[str] = collections.Counter()  # downloads handed out, by host
        self._unanswered: dict[str, set[str]] = {}  # by host: the URLs left unanswered since its last answer
        self._given_up: dict[str, tuple[str, float]] = {}  # by host: why, and until when (time.monotonic)

    def queue(self, work: Iterable[tuple[str, T]]) -> "HostQueue[T]":
        """`work`, each item with the `netloc_of` its URL, waiting to be handed out by host."""
        return HostQueue(self, work)

    def refusal(self, host: str) -> str | None:
        """Why `host` is given up; None while it is not."""
        with self._lock:
            return self._given_up_now(host)

    def _given_up_now(self, host: str) -> str | None:
        """`refusal`, with the lock held; a give-up whose time is over is forgotten, with the failures behind it."""
        given_up = self._given_up.get(host)
        if given_up is None:
            return None
        why, until = given_up
        if time.monotonic() < until:
            return why
        del self._given_up[host]
        self._unanswered.pop(host, None)
        return None

    def answered(self, host: str) -> None:
        """An exchange with `host` got an answer: the URLs it left unanswered before are forgiven."""
        with self._lock:
            self._unanswered.pop(host, None)

    def unanswered(self, host: str, url: str) -> None:
        """`url` of `host` got no answer (FetchError.unanswered); the UNANSWERED_IN_A_ROW-th different URL since
        the host's last answer gives it up."""
        with self._lock:
            urls = self._unanswered.setdefault(host, set())
            urls.add(url)
            if len(urls) >= UNANSWERED_IN_A_ROW and self._given_up_now(host) is None:
                self._given_up[host] = (f"host {host} did not answer {UNANSWERED_IN_A_ROW} downloads in a row "
                                        "(timeouts or connection failures)", time.monotonic() + GIVEN_UP_SECONDS)
                self._room.notify_all()

    def _may_start(self, host: str) -> bool:
        return self._under_way[host] < self.per_host or self._given_up_now(host) is not None

    def _start(self, host: str) -> "DownloadTurn":
        counted = self._given_up_now(host) is None  # a given-up host's downloads fail without a connection
        if counted:
            self._under_way[host] += 1
        return DownloadTurn(self, host, counted)

    def _end(self, host: str) -> None:
        with self._room:
            self._under_way[host] -= 1
            if not self._under_way[host]:
                del self._under_way[host]
            self._room.notify_all()

    @contextlib.contextmanager
    def slot(self, netloc: str, timeout: float) -> Iterator[None]:
        """Hold one of `netloc`'s slots; a FetchError (timeout) when none comes free within `timeout` seconds."""
        with self._lock:
            semaphore = self._slots.setdefault(netloc, threading.BoundedSemaphore(self.per_host))
        if not semaphore.acquire(timeout=max(0.0, timeout)):
            raise FetchError("timeout", f"no connection to {netloc} came free before the deadline "
                                        f"(at most {self.per_host} at once)")
        try:
            yield
        finally:
            semaphore.release()

    def pool(self, target: CheckedTarget) -> HTTPConnectionPool:
        key = (target.scheme, target.ip, target.port, target.host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = pool_for(target, kept=self.per_host)
            return pool

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


class DownloadTurn:
    """A download handed out by a HostQueue, counted against its host until `end` (the first call; later calls do
    nothing). End it once the download is over, before whatever the caller does with the bytes."""

    def __init__(self, hosts: HostSlots, host: str, counted: bool):
        self._hosts, self._host, self._counted = hosts, host, counted

    def end(self) -> None:
        if self._counted:
            self._counted = False
            self._hosts._end(self._host)


class HostQueue(Generic[T]):
    """One caller's downloads, waiting by host for their turn in its HostSlots.

    `take` waits until one may start, its host having fewer than `per_host` downloads of the HostSlots under way
    (whoever's queue they came from) or having been given up, and returns it with its DownloadTurn; the hosts take
    turns, so that a thousand downloads from one host do not hold up the next host's. It returns None once every
    download has been taken. `close` takes all that are left at once, for the caller to end them itself.
    """

    def __init__(self, hosts: HostSlots, work: Iterable[tuple[str, T]]):
        self._hosts = hosts
        self._waiting: dict[str, collections.deque[T]] = {}
        for host, item in work:
            self._waiting.setdefault(host, collections.deque()).append(item)

    def take(self) -> tuple[T, DownloadTurn] | None:
        hosts = self._hosts
        with hosts._room:
            while self._waiting:
                host = next((host for host in self._waiting if hosts._may_start(host)), None)
                if host is None:
                    hosts._room.wait()
                    continue
                items = self._waiting.pop(host)
                item = items.popleft()
                if items:
                    self._waiting[host] = items  # last in line: the next take looks at the other hosts first
                elif not self._waiting:
                    hosts._room.notify_all()  # this queue's threads waiting for room have nothing left to take
                return item, hosts._start(host)
            return None

    def close(self) -> list[T]:
        with self._hosts._room:
            left = [item for items in self._waiting.values() for item in items]
            self._waiting.clear()
            self._hosts._room.notify_all()
        return left
