"""When to try a webhook again after a failed attempt (docs/api.md#webhook)."""
from __future__ import annotations

from dataclasses import dataclass


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
    def from_delays(cls, delays: tuple[float, ...]) -> "RetryPolicy":
        """The schedule of IMGPIPE_WEBHOOK_RETRY_DELAYS: seconds between attempts, the first two inline."""
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
