"""One webhook delivery attempt (docs/api.md#webhook): a signed POST to a checked address, never a redirect."""
from __future__ import annotations

from dataclasses import dataclass

from imgpipe.net.errors import FetchError
from imgpipe.net.post import post
from imgpipe.net.url_safety import AllowList


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
        response = post(url, body, headers, allow=allow, connect_timeout=connect_timeout,
                        read_timeout=read_timeout)
    except FetchError as exc:
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
