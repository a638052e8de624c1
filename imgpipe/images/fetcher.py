"""HTTP for image downloads and webhook POSTs, to checked addresses only (contract sections 10 and 12).

Each hop is checked by `url_safety.check_url` and its socket goes to the address that check approved (no second
DNS lookup, so no DNS rebinding), while the Host header, TLS SNI and certificate check keep the URL's host name.

Downloads are polite (contract section 12): at most `HostSlots.per_host` connections to one host at once,
transient failures retried with backoff (429 and 503 after their Retry-After), and conditional requests
(If-None-Match / If-Modified-Since) for a URL fetched before. A step's downloads are handed to its threads by host
(`HostQueue`), and a host that stops answering is given up, so that a dead host holds up neither the other hosts'
images nor, for long, its own. Webhook POSTs make one attempt: the outbox retries.
"""
# Judged on PyPI: advocate (last release 2020, unmaintained) and requests-hardened (maintained and pins the IP, but
# never follows redirects, judges only ::ffff: IPv4-in-IPv6, and allows only loopback, not hosts/CIDRs/ports): own code.
from __future__ import annotations

import contextlib
import collections
import email.utils
import heapq
import http.client
import itertools
import os
import random
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Generic, TypeVar
from urllib.parse import urljoin
from urllib.request import parse_http_list

import certifi
import urllib3
from requests.utils import requote_uri
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from imgpipe.settings import Limits
from imgpipe.text import ascii_int, declares_over, printable
from imgpipe.images.url_safety import (AllowList, CheckedTarget, Resolver, UnresolvableHost, UnsafeUrl,
                                       check_url, netloc_of)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Contract section 12: these may go through next time; every other status is final at once (500 included).
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({429, 503})
BACKOFF_BASE = 0.5  # seconds before the second attempt at most, doubling each time (full jitter) ...
BACKOFF_CAP = 8.0  # ... up to this
# A host that leaves this many different URLs in a row without an answer is given up for the rest of its
# HostSlots (a step, or a shared run). Different URLs: one URL that hangs, retried, must not condemn its host.
UNANSWERED_IN_A_ROW = 3
# How long a host that was given up stays so; then its next downloads try it again (it may have come back).
GIVEN_UP_SECONDS = 60.0
MAX_VALIDATOR_LENGTH = 1024
MAX_POST_RESPONSE_BYTES = 64 * 1024
_CHUNK_BYTES = 64 * 1024
CA_BUNDLE = certifi.where()
# Identity encoding: the byte cap then counts what the server sends, not what a decompressor makes of it.
_HEADERS = {"User-Agent": "imgpipe", "Accept": "*/*", "Accept-Encoding": "identity"}


class FetchError(Exception):
    """A download or call failed. `kind`: blocked, http_status, timeout, too_large, network, redirects, or
    host_down (its host was given up: see HostSlots).

    After several attempts, `kind`, `status_code` and `retry_after` are the last attempt's and the message lists
    every attempt. `retryable`: whether another attempt might succeed (later, once fetch has given up).
    `retry_after`: seconds, from a 429 or 503's Retry-After. `attempts`: how many were made.
    """

    def __init__(self, kind: str, message: str, status_code: int | None = None, *, retryable: bool = False,
                 retry_after: float | None = None, brief: str | None = None):
        # Messages carry what the other end sent (a status line that did not parse, a redirect's URL, an
        # exception's text): made printable and bounded here, so no caller can store or log it raw.
        super().__init__(printable(message))
        self.kind = kind
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after = retry_after
        self.attempts = 1
        self.brief = printable(brief or message)  # how a list of attempts shows this one, when not the last

    @property
    def unanswered(self) -> bool:
        """The host let the exchange time out or failed the connection: what counts against it in HostSlots.
        (Not retryable timeouts are the caller's own: a wait for a slot, or a deadline of the image's.)"""
        return self.retryable and self.kind in ("timeout", "network")


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    connect_timeout: float
    read_timeout: float
    deadline: float  # seconds for one attempt, redirects included (and for all of them, unless fetch gets one)
    max_redirects: int = 5
    attempts: int = 1  # in all, the first included

    @classmethod
    def from_settings(cls, limits: Limits) -> "FetchLimits":
        return cls(
            max_bytes=limits.max_download_bytes,
            connect_timeout=limits.connect_timeout,
            read_timeout=limits.read_timeout,
            deadline=limits.download_deadline,
            max_redirects=limits.max_redirects,
            attempts=limits.fetch_attempts,
        )


@dataclass(frozen=True)
class Validators:
    """What a previous download of a URL said about its bytes, sent back to ask for them only if they changed."""

    etag: str | None
    last_modified: str | None
    # The URL they came from (that download's FetchResult.url); None: the URL fetched. They are sent only to
    # that URL: an ETag means nothing at another one (RFC 9110 8.8.3), so a redirect elsewhere drops them.
    url: str | None = None


@dataclass
class FetchResult:
    url: str  # the final URL, after redirects
    status_code: int
    content_type: str | None
    content: bytes  # empty when not_modified
    # The response's validators when printable ASCII of at most 1 KiB (else None: one changed on the way would
    # be worse than none); a 304 without them repeats the ones sent, which it has just confirmed.
    etag: str | None = None
    last_modified: str | None = None
    no_store: bool = False  # Cache-Control: no-store; what was fetched must not be kept for reuse
    not_modified: bool = False  # 304 to the validators sent: the bytes they describe are still current
    attempts: int = 1


@dataclass
class PostResult:
    status_code: int
    retry_after: float | None  # seconds
    location: str | None  # printable, for display only: a webhook follows no redirect


class _Deadline:
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

    def __enter__(self) -> "_Deadline":
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
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._over = 0  # ended calls still in the heap
        self._thread: threading.Thread | None = None

    def watch(self, expires_at: float, deadline: _Deadline) -> None:
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

    def forget(self, deadline: _Deadline) -> None:
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
_calls = threading.local()


class _WatchedConnection:
    """Puts each new socket under the deadline of the call that opens it."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _calls.deadline.watch(sock)
        return sock


class _WatchedHTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _WatchedPool:
    """Puts a kept-alive connection under the deadline of the call that takes it up again."""

    def _get_conn(self, timeout: float | None = None):
        connection = super()._get_conn(timeout)
        if connection.sock is not None:
            _calls.deadline.watch(connection.sock)
        return connection


class _HTTPPool(_WatchedPool, HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(_WatchedPool, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _pool_for(target: CheckedTarget, kept: int = 1) -> HTTPConnectionPool:
    """A connection pool aimed at the checked address of one hop, keeping up to `kept` connections open for the
    next call."""
    ip = str(target.ip)
    if target.scheme == "https":
        # SNI and the certificate check use the host name; only the socket uses the checked address. Trusted: the
        # Mozilla roots certifi ships (what requests trusts), the same on every machine.
        return _HTTPSPool(ip, target.port, maxsize=kept, server_hostname=target.host, cert_reqs="CERT_REQUIRED",
                          ca_certs=CA_BUNDLE)
    return _HTTPPool(ip, target.port, maxsize=kept)


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
                pool = self._pools[key] = _pool_for(target, kept=self.per_host)
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


def _check(url: str, allow: AllowList, resolver: Resolver) -> CheckedTarget:
    try:
        return check_url(url, allow, resolver)
    except UnsafeUrl as exc:
        raise FetchError("blocked", str(exc)) from exc
    except UnresolvableHost as exc:
        raise FetchError("network", str(exc)) from exc


@contextlib.contextmanager
def _exchange(
    method: str,
    target: CheckedTarget,
    deadline: _Deadline,
    *,
    connect_timeout: float,
    read_timeout: float,
    body: bytes | None = None,
    headers: dict | None = None,
    hosts: HostSlots | None = None,
) -> Iterator[urllib3.BaseHTTPResponse]:
    """One request to the checked address, on a connection `hosts` keeps (else one for this call alone); any
    failure, reading the body included, becomes a FetchError. A response whose body is read to its end leaves
    its connection open for the next call; any other is closed.

    urllib3 itself, not requests: requests prepared each call again (its URL parsed anew, a cookie jar made for
    every answer), which cost more than the rest of a conditional GET answered 304.
    """
    deadline.start()
    remaining = deadline.remaining()
    if remaining <= 0:
        raise deadline.error()
    pool = hosts.pool(target) if hosts else _pool_for(target)
    _calls.deadline = deadline
    response = None
    try:
        response = pool.urlopen(
            method, requote_uri(target.path_and_query), body=body,
            headers={**_HEADERS, **(headers or {}), "Host": target.netloc,
                     **({} if body is None else {"Content-Length": str(len(body))})},
            retries=False, redirect=False, assert_same_host=False, preload_content=False, decode_content=False,
            timeout=urllib3.Timeout(connect=min(connect_timeout, remaining), read=read_timeout),
        )
        if deadline.expired:  # the headers may have been cut short
            raise deadline.error()
        if hosts:
            hosts.answered(target.netloc)
        yield response
    except urllib3.exceptions.HTTPError as exc:
        failure = _failure(exc, target, deadline, connect_timeout, read_timeout)
        if hosts and failure.unanswered:
            hosts.unanswered(target.netloc, target.url)
        raise failure from exc
    finally:
        _calls.deadline = None
        if response is not None:
            if not response.isclosed():  # the body was not read to its end: the connection cannot serve again
                response.close()
            response.release_conn()
        if not hosts:
            pool.close()


def _failure(
    exc: Exception, target: CheckedTarget, deadline: _Deadline, connect_timeout: float, read_timeout: float
) -> FetchError:
    if deadline.expired:
        return deadline.error()
    root = exc
    while root.__cause__ or root.__context__:
        root = root.__cause__ or root.__context__
    # A refused connection is a NewConnectionError, which urllib3 derives from its connect timeout.
    refused = isinstance(exc, urllib3.exceptions.NewConnectionError)
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError) and not refused:
        return FetchError("timeout", f"connecting to {target.netloc} took longer than {connect_timeout:g} s",
                          retryable=True)
    if (isinstance(exc, urllib3.exceptions.TimeoutError) and not refused) or isinstance(root, TimeoutError):
        return FetchError("timeout", f"{target.netloc} sent nothing for {read_timeout:g} s", retryable=True)
    # A refused, reset or dropped connection, or a body cut short, may go through next time; a status line that
    # does not parse or a certificate for another name will not.
    transient = isinstance(root, (ConnectionError, http.client.IncompleteRead))
    return FetchError("network", f"network error with {target.netloc}: {root}", retryable=transient)


def _too_large(max_bytes: int) -> FetchError:
    return FetchError("too_large", f"download exceeded {max_bytes} bytes")


def _read_capped(response: urllib3.BaseHTTPResponse, max_bytes: int) -> bytes:
    if declares_over(response.headers.get("Content-Length", ""), max_bytes):
        raise _too_large(max_bytes)
    content = bytearray()
    # Decoded, should a server send gzip although asked for identity: the cap then bounds what a decompressor
    # makes of it, chunk by chunk.
    for chunk in response.stream(_CHUNK_BYTES, decode_content=True):
        content += chunk
        if len(content) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(content)


def fetch(
    url: str,
    *,
    allow: AllowList,
    limits: FetchLimits,
    resolver: Resolver = socket.getaddrinfo,
    validators: Validators | None = None,
    hosts: HostSlots | None = None,
    deadline: float | None = None,
) -> FetchResult:
    """GET `url` in up to `limits.attempts` attempts, each following redirects by hand so that every hop is
    checked and pinned; 2xx only, or 304 to the `validators` sent.

    Each attempt gets `limits.deadline` seconds from its first connection; `deadline`, a time.monotonic()
    instant, bounds everything (waits for a free connection in `hosts` and between attempts included) and
    defaults to `limits.deadline` seconds from now.
    """
    until = time.monotonic() + limits.deadline if deadline is None else deadline
    # Without a deadline of its own, the download deadline bounds the whole call, and its error says just that.
    cut_short = f"download took longer than {limits.deadline:g} s" if deadline is None else (
        "download stopped at the image's deadline")
    failures: list[FetchError] = []
    while True:
        try:
            with _Deadline(limits.deadline, "download", until, cut_short) as clock:
                result = _download(url, allow, limits, resolver, validators, hosts, clock)
            result.attempts = len(failures) + 1
            return result
        except FetchError as exc:
            failures.append(exc)
            wait, why_not = _next_wait(exc, len(failures), limits.attempts, until)
            if wait is not None:
                # The host's other downloads may have it given up, before the wait or during it.
                first_host = netloc_of(url) if hosts else ""
                given_up = hosts and hosts.refusal(first_host)
                if not given_up:
                    time.sleep(wait)  # holding no connection slot: the exchange is over
                    given_up = hosts and hosts.refusal(first_host)
                if given_up:
                    wait, why_not = None, f"not retried: {given_up}"
            if wait is None:
                error = _gave_up(failures, why_not)
                if error is exc:
                    raise
                raise error from exc


def _download(
    url: str,
    allow: AllowList,
    limits: FetchLimits,
    resolver: Resolver,
    validators: Validators | None,
    hosts: HostSlots | None,
    clock: _Deadline,
) -> FetchResult:
    """One attempt."""
    conditional_url = validators and (validators.url or url)
    for _hop in range(limits.max_redirects + 1):
        target = _check(url, allow, resolver)
        conditional = _conditional_headers(validators) if url == conditional_url else {}
        refusal = hosts and hosts.refusal(target.netloc)
        if refusal:
            raise FetchError("host_down", f"{refusal}; not tried")
        slot = hosts.slot(target.netloc, clock.remaining()) if hosts else contextlib.nullcontext()
        with slot, _exchange(
            "GET", target, clock, connect_timeout=limits.connect_timeout, read_timeout=limits.read_timeout,
            headers=conditional, hosts=hosts,
        ) as response:
            location = response.headers.get("Location")
            if response.status in REDIRECT_STATUSES and location:
                url = _redirect_target(url, location)
                continue
            if response.status == 304 and conditional:
                response.read()  # empty (a 304 has no body); read to its end, the connection is kept
                result = _result(url, response, b"")
                result.not_modified = True
                result.etag = result.etag or _validator(validators.etag)
                result.last_modified = result.last_modified or _validator(validators.last_modified)
                return result
            if not 200 <= response.status < 300:
                raise _status_error(response, url)
            content = _read_capped(response, limits.max_bytes)
            if clock.expired:  # a body without Content-Length looks complete when cut short
                raise clock.error()
            return _result(url, response, content)
    raise FetchError("redirects", f"more than {limits.max_redirects} redirects")


def _conditional_headers(validators: Validators) -> dict[str, str]:
    headers = {"If-None-Match": _validator(validators.etag),
               "If-Modified-Since": _validator(validators.last_modified)}
    return {name: value for name, value in headers.items() if value}


def _validator(value: str | None) -> str | None:
    """`value` when fit to send back as it came (printable ASCII, at most 1 KiB), else None."""
    value = (value or "").strip()
    fit = 0 < len(value) <= MAX_VALIDATOR_LENGTH and value.isascii() and value.isprintable()
    return value if fit else None


def _result(url: str, response: urllib3.BaseHTTPResponse, content: bytes) -> FetchResult:
    headers = response.headers
    return FetchResult(
        url, response.status, headers.get("Content-Type"), content,
        etag=_validator(headers.get("ETag")), last_modified=_validator(headers.get("Last-Modified")),
        no_store=_no_store(headers.get("Cache-Control")),
    )


def _no_store(cache_control: str | None) -> bool:
    # Directives are comma-separated tokens, some with a value that may be a quoted string holding commas
    # (`private="a, no-store"` does not forbid storing); repeated headers arrive joined by commas.
    directives = parse_http_list(cache_control or "")
    return any(directive.split("=", 1)[0].strip().lower() == "no-store" for directive in directives)


def _status_error(response: urllib3.BaseHTTPResponse, url: str) -> FetchError:
    status = response.status
    retry_after = None
    if status in RETRY_AFTER_STATUSES:
        retry_after = _retry_after(response.headers.get("Retry-After"))
    brief = f"HTTP {status}" + ("" if retry_after is None else f" (Retry-After {_seconds(retry_after)} s)")
    return FetchError("http_status", f"HTTP {status} from {url}", status, retryable=status in RETRY_STATUSES,
                      retry_after=retry_after, brief=brief)


def _next_wait(failure: FetchError, failed: int, attempts: int, until: float) -> tuple[float | None, str | None]:
    """Seconds to wait before the next attempt; or None, and why not when the message should say so."""
    if not failure.retryable or failed >= attempts:  # a blocked URL is never retryable
        return None, None
    wait = _backoff(failed)
    if failure.retry_after is not None and failure.retry_after > wait:
        wait = failure.retry_after
        if time.monotonic() + wait >= until:
            return None, f"not retried: Retry-After {_seconds(wait)} s is past the deadline"
    if time.monotonic() + wait >= until:
        return None, "not retried: no time left before the deadline"
    return wait, None


def _backoff(failed_attempts: int) -> float:
    """Exponential backoff with full jitter: a random wait up to 0.5 s, 1 s, 2 s ... 8 s, so that the downloads
    that failed together do not come back together."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failed_attempts - 1)))


def _gave_up(failures: list[FetchError], why_stopped: str | None = None) -> FetchError:
    """The last attempt's error, its message listing every attempt (one attempt alone keeps its own message)."""
    last = failures[-1]
    if len(failures) == 1 and why_stopped is None:
        return last
    parts = [failure.brief for failure in failures[:-1]] + [str(last)] + ([why_stopped] if why_stopped else [])
    message = "; ".join(parts)
    if len(failures) > 1:
        message = f"after {len(failures)} attempts: {message}"
    error = FetchError(last.kind, message, last.status_code, retryable=last.retryable, retry_after=last.retry_after)
    error.attempts = len(failures)
    return error


def _seconds(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _redirect_target(url: str, location: str) -> str:
    try:
        return urljoin(url, location)
    except ValueError:  # e.g. an unclosed IPv6 bracket: the server's doing, so this download's failure alone
        raise FetchError("blocked", f"blocked: redirect to an invalid URL {location[:200]!r}") from None


def post(
    url: str,
    body: bytes,
    headers: dict,
    *,
    allow: AllowList,
    connect_timeout: float,
    read_timeout: float,
    resolver: Resolver = socket.getaddrinfo,
) -> PostResult:
    """One POST to the checked address of `url`; any status comes back as is, a 3xx is not followed.

    The whole call gets connect_timeout + read_timeout, so a receiver cannot hold it longer than that.
    """
    target = _check(url, allow, resolver)
    with _Deadline(connect_timeout + read_timeout, "POST") as deadline:
        with _exchange(
            "POST", target, deadline, connect_timeout=connect_timeout, read_timeout=read_timeout,
            body=body, headers=headers,
        ) as response:
            _drain(response)
            location = response.headers.get("Location")
            return PostResult(
                response.status,
                _retry_after(response.headers.get("Retry-After")),
                None if location is None else printable(location),  # shown, never followed
            )


def _drain(response: urllib3.BaseHTTPResponse) -> None:
    # The status already tells the outcome; a slow or broken body must not turn a delivered call into a failure.
    with contextlib.suppress(urllib3.exceptions.HTTPError, OSError):
        response.read(MAX_POST_RESPONSE_BYTES, decode_content=False)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait, from delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if (seconds := ascii_int(value)) is not None:  # delta-seconds (RFC 9110 10.2.3)
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (ValueError, OverflowError):  # OverflowError: a year or zone too large for a datetime
        return None
    if when.tzinfo is None:  # "-0000" zone; HTTP dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
