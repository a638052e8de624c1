"""The webhook's POST (docs/api.md#webhook): one attempt to the address the URL's check approved, any status
returned as is, a redirect never followed; the outbox retries."""
from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

import urllib3

from imgpipe.net.deadline import Deadline
from imgpipe.net.exchange import check_target, exchange, retry_after_seconds
from imgpipe.net.url_safety import AllowList, Resolver
from imgpipe.text import printable

MAX_POST_RESPONSE_BYTES = 64 * 1024


@dataclass
class PostResult:
    status_code: int
    retry_after: float | None  # seconds
    location: str | None  # printable, for display only: a webhook follows no redirect


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
    target = check_target(url, allow, resolver)
    with Deadline(connect_timeout + read_timeout, "POST") as deadline:
        with exchange(
            "POST", target, deadline, connect_timeout=connect_timeout, read_timeout=read_timeout,
            body=body, headers=headers,
        ) as response:
            _drain(response)
            location = response.headers.get("Location")
            return PostResult(
                response.status,
                retry_after_seconds(response.headers.get("Retry-After")),
                None if location is None else printable(location),  # shown, never followed
            )


def _drain(response: urllib3.BaseHTTPResponse) -> None:
    # The status already tells the outcome; a slow or broken body must not turn a delivered call into a failure.
    with contextlib.suppress(urllib3.exceptions.HTTPError, OSError):
        response.read(MAX_POST_RESPONSE_BYTES, decode_content=False)
