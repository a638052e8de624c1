"""GET with every redirect hop checked and pinned, within a byte cap and a deadline, and politely
(docs/operations.md#re-uploads-politeness-and-retention): transient failures retried with backoff (429 and 503
after their Retry-After), conditional requests (If-None-Match / If-Modified-Since) for a URL fetched before, and,
given `HostSlots`, at most so many connections to one host and no attempt at a host given up."""
from __future__ import annotations

import contextlib
import random
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin
from urllib.request import parse_http_list

import urllib3

from imgpipe.net.deadline import Deadline
from imgpipe.net.errors import FetchError
from imgpipe.net.exchange import check_target, exchange, retry_after_seconds
from imgpipe.net.host_slots import HostSlots
from imgpipe.net.url_safety import AllowList, Resolver, netloc_of
from imgpipe.settings import Limits
from imgpipe.text import declares_over

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# These may go through next time; every other status is final at once, 500 included
# (docs/operations.md#re-uploads-politeness-and-retention).
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({429, 503})
BACKOFF_BASE = 0.5  # seconds before the second attempt at most, doubling each time (full jitter) ...
BACKOFF_CAP = 8.0  # ... up to this
MAX_VALIDATOR_LENGTH = 1024
_CHUNK_BYTES = 64 * 1024


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
            with Deadline(limits.deadline, "download", until, cut_short) as clock:
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
    clock: Deadline,
) -> FetchResult:
    """One attempt."""
    conditional_url = validators and (validators.url or url)
    for _hop in range(limits.max_redirects + 1):
        target = check_target(url, allow, resolver)
        conditional = _conditional_headers(validators) if url == conditional_url else {}
        refusal = hosts and hosts.refusal(target.netloc)
        if refusal:
            raise FetchError("host_down", f"{refusal}; not tried")
        slot = hosts.slot(target.netloc, clock.remaining()) if hosts else contextlib.nullcontext()
        with slot, exchange(
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
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
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
