"""One request to the address a URL's check approved (`exchange`), the check itself with its refusals as
FetchErrors (`check_target`), and the Retry-After of an answer, for downloads and webhook POSTs alike."""
from __future__ import annotations

import contextlib
import email.utils
import http.client
from collections.abc import Iterator
from datetime import datetime, timezone

import urllib3
from requests.utils import requote_uri

from imgpipe.net.deadline import Deadline, thread_call
from imgpipe.net.errors import FetchError
from imgpipe.net.host_slots import HostSlots
from imgpipe.net.pools import pool_for
from imgpipe.net.url_safety import AllowList, CheckedTarget, Resolver, UnresolvableHost, UnsafeUrl, check_url
from imgpipe.text import ascii_int

# Identity encoding: the byte cap then counts what the server sends, not what a decompressor makes of it.
_HEADERS = {"User-Agent": "imgpipe", "Accept": "*/*", "Accept-Encoding": "identity"}


def check_target(url: str, allow: AllowList, resolver: Resolver) -> CheckedTarget:
    try:
        return check_url(url, allow, resolver)
    except UnsafeUrl as exc:
        raise FetchError("blocked", str(exc)) from exc
    except UnresolvableHost as exc:
        raise FetchError("network", str(exc)) from exc


@contextlib.contextmanager
def exchange(
    method: str,
    target: CheckedTarget,
    deadline: Deadline,
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
    pool = hosts.pool(target) if hosts else pool_for(target)
    thread_call.deadline = deadline
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
        thread_call.deadline = None
        if response is not None:
            if not response.isclosed():  # the body was not read to its end: the connection cannot serve again
                response.close()
            response.release_conn()
        if not hosts:
            pool.close()


def _failure(
    exc: Exception, target: CheckedTarget, deadline: Deadline, connect_timeout: float, read_timeout: float
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


def retry_after_seconds(value: str | None) -> float | None:
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
