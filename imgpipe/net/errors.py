"""How a download or a POST fails: one exception, `FetchError`, whose message is made printable."""
from __future__ import annotations

from imgpipe.text import printable


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
