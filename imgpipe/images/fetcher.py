"""HTTP for image downloads and webhook POSTs, to checked addresses only (contract section 10).

Each hop is checked by `url_safety.check_url` and its socket goes to the address that check approved (no second
DNS lookup, so no DNS rebinding), while the Host header, TLS SNI and certificate check keep the URL's host name.
"""
# Judged on PyPI: advocate (last release 2020, unmaintained) and requests-hardened (maintained and pins the IP, but
# never follows redirects, judges only ::ffff: IPv4-in-IPv6, and allows only loopback, not hosts/CIDRs/ports): own code.
from __future__ import annotations

import contextlib
import email.utils
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from imgpipe.settings import Limits
from imgpipe.text import printable
from imgpipe.images.url_safety import AllowList, CheckedTarget, Resolver, UnresolvableHost, UnsafeUrl, check_url

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_POST_RESPONSE_BYTES = 64 * 1024
_CHUNK_BYTES = 64 * 1024
# Identity encoding: the byte cap then counts what the server sends, not what a decompressor makes of it.
_HEADERS = {"User-Agent": "imgpipe", "Accept-Encoding": "identity"}


class FetchError(Exception):
    """A download or call failed. `kind`: blocked, http_status, timeout, too_large, network or redirects."""

    def __init__(self, kind: str, message: str, status_code: int | None = None):
        # Messages carry what the other end sent (a status line that did not parse, a redirect's URL, an
        # exception's text): made printable and bounded here, so no caller can store or log it raw.
        super().__init__(printable(message))
        self.kind = kind
        self.status_code = status_code


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    connect_timeout: float
    read_timeout: float
    deadline: float  # seconds for the whole download, redirects included
    max_redirects: int = 5

    @classmethod
    def from_settings(cls, limits: Limits) -> "FetchLimits":
        return cls(
            max_bytes=limits.max_download_bytes,
            connect_timeout=limits.connect_timeout,
            read_timeout=limits.read_timeout,
            deadline=limits.download_deadline,
            max_redirects=limits.max_redirects,
        )


@dataclass
class FetchResult:
    url: str  # the final URL, after redirects
    status_code: int
    content_type: str | None
    content: bytes


@dataclass
class PostResult:
    status_code: int
    retry_after: float | None  # seconds
    location: str | None  # printable, for display only: a webhook follows no redirect


class _Deadline:
    """Shuts down every socket of one call when the call's time is up.

    Socket timeouts bound each read, not their sum, so a server trickling a byte at a time never trips them.
    Shutting a socket down from this timer's thread ends whatever read is waiting on it, headers or body.
    """

    def __init__(self, seconds: float, what: str):
        self.seconds = seconds
        self.expired = False
        self._what = what
        self._expires_at = time.monotonic() + seconds
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def remaining(self) -> float:
        return self._expires_at - time.monotonic()

    def error(self) -> FetchError:
        return FetchError("timeout", f"{self._what} took longer than {self.seconds:g} s")

    def watch(self, sock: socket.socket) -> None:
        # A duplicate descriptor stays valid when TLS takes `sock` over, and shutting it down ends reads on the
        # connection all the same; we own it, so it can never name somebody else's socket.
        with self._lock:
            duplicate = sock.dup()
            self._sockets.append(duplicate)
            if self.expired:
                _shut_down(duplicate)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer
        sock.shutdown(socket.SHUT_RDWR)


class _WatchedConnection:
    """Puts each new socket under the call's deadline (given to the pool, which hands it on to us)."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._deadline.watch(sock)
        return sock


class _WatchedHTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _PinnedAdapter(HTTPAdapter):
    """Gives requests one connection pool, aimed at the checked address of one hop."""

    def __init__(self, target: CheckedTarget, deadline: _Deadline):
        super().__init__()
        ip = str(target.ip)
        if target.scheme == "https":
            # SNI and the certificate check use the host name; only the socket uses the checked address.
            self._pool = _HTTPSPool(ip, target.port, server_hostname=target.host, deadline=deadline)
        else:
            self._pool = _HTTPPool(ip, target.port, deadline=deadline)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


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
) -> Iterator[requests.Response]:
    """One request to the checked address; any failure, reading the body included, becomes a FetchError."""
    remaining = deadline.remaining()
    if remaining <= 0:
        raise deadline.error()
    adapter = _PinnedAdapter(target, deadline)
    try:
        request = requests.Request(
            method, target.url, data=body, headers={**_HEADERS, **(headers or {}), "Host": target.netloc}
        ).prepare()
        timeout = (min(connect_timeout, remaining), read_timeout)
        with adapter.send(request, stream=True, timeout=timeout) as response:
            if deadline.expired:  # the headers may have been cut short
                raise deadline.error()
            yield response
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise _failure(exc, target, deadline, connect_timeout, read_timeout) from exc
    finally:
        adapter.close()


def _failure(
    exc: Exception, target: CheckedTarget, deadline: _Deadline, connect_timeout: float, read_timeout: float
) -> FetchError:
    if deadline.expired:
        return deadline.error()
    root = exc
    while root.__cause__ or root.__context__:
        root = root.__cause__ or root.__context__
    if isinstance(exc, requests.ConnectTimeout):
        return FetchError("timeout", f"connecting to {target.netloc} took longer than {connect_timeout:g} s")
    if isinstance(exc, requests.Timeout) or isinstance(root, TimeoutError):
        return FetchError("timeout", f"{target.netloc} sent nothing for {read_timeout:g} s")
    return FetchError("network", f"network error with {target.netloc}: {root}")


def _too_large(max_bytes: int) -> FetchError:
    return FetchError("too_large", f"download exceeded {max_bytes} bytes")


def _read_capped(response: requests.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("Content-Length", "")
    # Past 18 digits it is far over any cap, and past 4300 int() refuses to read it.
    if declared.isdecimal() and (len(declared) > 18 or int(declared) > max_bytes):
        raise _too_large(max_bytes)
    content = bytearray()
    for chunk in response.iter_content(_CHUNK_BYTES):
        content += chunk
        if len(content) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(content)


def fetch(
    url: str, *, allow: AllowList, limits: FetchLimits, resolver: Resolver = socket.getaddrinfo
) -> FetchResult:
    """GET `url`, following redirects by hand so that every hop is checked and pinned; 2xx only."""
    with _Deadline(limits.deadline, "download") as deadline:
        for _hop in range(limits.max_redirects + 1):
            target = _check(url, allow, resolver)
            with _exchange(
                "GET", target, deadline, connect_timeout=limits.connect_timeout, read_timeout=limits.read_timeout
            ) as response:
                location = response.headers.get("Location")
                if response.status_code in REDIRECT_STATUSES and location:
                    url = _redirect_target(url, location)
                    continue
                if not 200 <= response.status_code < 300:
                    raise FetchError("http_status", f"HTTP {response.status_code} from {url}", response.status_code)
                content = _read_capped(response, limits.max_bytes)
                if deadline.expired:  # a body without Content-Length looks complete when cut short
                    raise deadline.error()
                return FetchResult(url, response.status_code, response.headers.get("Content-Type"), content)
    raise FetchError("redirects", f"more than {limits.max_redirects} redirects")


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
                response.status_code,
                _retry_after(response.headers.get("Retry-After")),
                None if location is None else printable(location),  # shown, never followed
            )


def _drain(response: requests.Response) -> None:
    # The status already tells the outcome; a slow or broken body must not turn a delivered call into a failure.
    with contextlib.suppress(urllib3.exceptions.HTTPError, OSError):
        response.raw.read(MAX_POST_RESPONSE_BYTES)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait, from delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdecimal():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (ValueError, OverflowError):  # OverflowError: a year or zone too large for a datetime
        return None
    if when.tzinfo is None:  # "-0000" zone; HTTP dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
