"""The webhook that ends each request (contract section 7): its payload, one delivery attempt, and when to
try again. Keeping attempts and their schedule in the DuckDB outbox is `imgpipe.webhooks.delivery`'s job.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

from imgpipe.images import fetcher
from imgpipe.images.url_safety import AllowList

EVENT_TYPES = {
    "completed": "request.completed",
    "completed_with_errors": "request.completed",
    "failed": "request.failed",
}


def event_type(status: str) -> str:
    try:
        return EVENT_TYPES[status]
    except KeyError:
        raise ValueError(f"no webhook for request status {status!r}") from None


def build_payload(request_id: str, status: str, counts: dict, output_csv_url: str, timestamp: datetime) -> bytes:
    """The JSON body; a naive `timestamp` is taken as UTC, as the status store keeps its times."""
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=timezone.utc)
    payload = {
        "type": event_type(status),
        "request_id": request_id,
        "status": status,
        "counts": counts,
        "output_csv_url": output_csv_url,
        "timestamp": timestamp.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def message_id(request_id: str, run_id: str) -> str:
    """Derived, not random, so that a process resuming a delivery sends the ID receivers already saw and they
    can drop the duplicate; each run of a request (a retry, a re-execution) ends with a webhook of its own."""
    return f"msg_{request_id}_{run_id[:8]}"


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    retry_after: float | None
    outcome: str  # delivered | retry | gone | rejected | blocked


def _outcome_for_status(status_code: int) -> str:
    if 200 <= status_code < 300:
        return "delivered"
    if status_code == 410:
        return "gone"
    if status_code == 429 or 500 <= status_code < 600:
        return "retry"
    return "rejected"


def attempt_delivery(url: str, body: bytes, headers: dict, *, allow: AllowList, connect_timeout: float = 5,
                     read_timeout: float = 10) -> AttemptResult:
    """POST once. Never raises for anything the receiver or the network does: every attempt becomes a row."""
    try:
        response = fetcher.post(url, body, headers, allow=allow, connect_timeout=connect_timeout,
                                read_timeout=read_timeout)
    except fetcher.FetchError as exc:
        # Only a refused URL is final; any other failure to talk to the receiver may pass.
        outcome = "blocked" if exc.kind == "blocked" else "retry"
        return AttemptResult(None, str(exc), None, outcome)
    outcome = _outcome_for_status(response.status_code)
    error = None
    if outcome != "delivered":
        error = f"HTTP {response.status_code}"
        if response.location:
            error += f" (redirect to {response.location} not followed)"
    return AttemptResult(response.status_code, error, response.retry_after, outcome)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again after a failed attempt.

    The inline delays are waited for by the run that ends the request, so that the first three attempts fall
    within `inline_window` seconds of the first; the later delays are kept by the outbox and the webhook
    sensor makes those attempts. Every attempt stops at `horizon` seconds after the first.
    """

    inline_delays: tuple[float, ...] = (5.0, 20.0)
    later_delays: tuple[float, ...] = (300, 1800, 7200, 18000, 36000, 36000)
    horizon: float = 86400.0
    inline_window: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "RetryPolicy":
        """`IMGPIPE_WEBHOOK_RETRY_DELAYS`, a comma list of seconds (the first two inline), replaces the
        schedule; tests use it to run through every attempt quickly."""
        raw = env.get("IMGPIPE_WEBHOOK_RETRY_DELAYS", "").strip()
        if not raw:
            return cls()
        try:
            delays = tuple(float(part) for part in raw.split(","))
        except ValueError:
            raise ValueError(f"IMGPIPE_WEBHOOK_RETRY_DELAYS={raw!r} is not a comma list of seconds") from None
        if not all(delay > 0 for delay in delays):
            raise ValueError(f"IMGPIPE_WEBHOOK_RETRY_DELAYS={raw!r}: every delay must be positive")
        return cls(inline_delays=delays[:2], later_delays=delays[2:])

    def is_inline(self, attempts_made: int, retry_after: float | None, elapsed: float) -> bool:
        """Whether the run waits for the next attempt itself: it fills an inline slot and lands inside the
        inline window. Takes `next_delay`'s arguments and describes the delay it returns."""
        if not 1 <= attempts_made <= len(self.inline_delays):
            return False
        return elapsed + _honouring(self.inline_delays[attempts_made - 1], retry_after) <= self.inline_window

    def next_delay(self, attempts_made: int, retry_after: float | None, elapsed: float) -> float | None:
        """Seconds to wait before the next attempt, given the failed attempts so far, the last one's
        Retry-After, and the seconds from the start of the first attempt to now; None to give up, when the
        schedule or the horizon is used up."""
        if attempts_made < 1:
            raise ValueError("attempts_made counts the failed attempts, so it is at least 1")
        if self.is_inline(attempts_made, retry_after, elapsed):
            delay = self.inline_delays[attempts_made - 1]
        else:
            # The sensor makes this attempt. Past the inline slots the later delays follow in order; an attempt
            # that had an inline slot but cannot land inside the window (a Retry-After longer than the window,
            # or slow attempts) takes the first later delay instead, so it moves into the later schedule.
            later_step = max(0, attempts_made - len(self.inline_delays) - 1)
            if later_step >= len(self.later_delays):
                return None
            delay = self.later_delays[later_step]
        remaining = self.horizon - elapsed
        if remaining <= 0:
            return None
        # The last attempt is made at the horizon rather than skipped, even if Retry-After asked for later.
        return min(_honouring(delay, retry_after), remaining)


def _honouring(delay: float, retry_after: float | None) -> float:
    return max(delay, retry_after) if retry_after is not None and retry_after > 0 else delay
