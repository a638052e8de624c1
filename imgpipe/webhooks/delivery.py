"""Delivering queued webhooks from the outbox, one signed attempt at a time (docs/api.md#webhook).

The `webhook` asset, the step after the output CSV, makes the inline attempts (the first three, within 60 s)
and waits between them; the `deliver_webhook_job`, launched by a sensor when attempts fall due, makes every
later one and picks up anything a crashed process left behind. An attempt claims its entry for a lease first,
so two processes never send the same attempt.
"""
from __future__ import annotations

import time
from datetime import timedelta
from typing import Callable

from imgpipe.backends import Backends
from imgpipe.net.url_safety import AllowList
from imgpipe.status.models import utcnow
from imgpipe.webhooks.attempt import attempt_delivery
from imgpipe.webhooks.retry import RetryPolicy
from imgpipe.webhooks.signing import load_or_create_secret, signed_headers

CLAIM_LEASE_SECONDS = 120.0


def deliver(backends: Backends, webhook_id: str, *, inline: bool, policy: RetryPolicy | None = None,
            sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Attempt the entry if it is due; with `inline`, keep attempting through the inline window.
    Returns the entry's state after the last attempt made here, or None when none was due."""
    settings, store = backends.settings, backends.store
    policy = policy or RetryPolicy.from_delays(settings.webhook_delays)
    secret = load_or_create_secret(settings.home_dir, settings.webhook_secret)
    allow = AllowList.parse(settings.allow_private_hosts)
    state = None
    while True:
        entry = store.claim_webhook(webhook_id, CLAIM_LEASE_SECONDS)
        if entry is None:
            return state
        attempted_at = utcnow()
        body = entry.payload
        headers = signed_headers(secret, entry.webhook_id, int(time.time()), body)
        result = attempt_delivery(entry.url, body, headers, allow=allow,
                                  connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout)
        attempts_made = entry.attempts + 1
        finished_at = utcnow()
        # Measured after the attempt, so a slow receiver cannot push an "inline" attempt past the window.
        elapsed = (finished_at - (entry.first_attempt_at or attempted_at)).total_seconds()
        delay = None
        if result.outcome == "retry":
            delay = policy.next_delay(attempts_made, result.retry_after, elapsed)
            state = "pending" if delay is not None else "abandoned"
        else:
            state = result.outcome
        store.record_webhook_attempt(
            entry, status_code=result.status_code, error=result.error, attempted_at=attempted_at, state=state,
            next_attempt_at=finished_at + timedelta(seconds=delay) if delay is not None else None,
        )
        if state != "pending" or not inline or not policy.is_inline(attempts_made, result.retry_after, elapsed):
            return state
        sleep(delay)

