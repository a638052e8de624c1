"""Retention (contract section 12): whole requests older than a duration are purged, their files or objects,
their rows in every table and their Dagster partition. A compressed output that a request still kept reuses
stays; one no kept request uses any more goes with the last request that used it.

Used by `imgpipe purge` and, when IMGPIPE_RETENTION_DAYS is set, by a daily Dagster schedule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable

from imgpipe.status.models import TERMINAL_STATUSES, RequestRow, RequestStatus
from imgpipe.status.store import StatusStore, utcnow
from imgpipe.storage import Storage

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `12h` or `30d`."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 12h or 30d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_statuses(text: str | None) -> tuple[RequestStatus, ...]:
    """A comma list of request statuses; none given: every terminal one (a request still queued or processing
    belongs to a run)."""
    if not text:
        return tuple(sorted(TERMINAL_STATUSES))
    try:
        return tuple(RequestStatus(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a comma list of request statuses "
                         f"({', '.join(map(str, RequestStatus))})") from None


@dataclass(frozen=True)
class PurgePlan:
    older_than: timedelta
    statuses: tuple[RequestStatus, ...]


def purge(store: StatusStore, storage: Storage, plan: PurgePlan, *, dry_run: bool = False,
          forget_partition: Callable[[str], None] | None = None) -> Iterable[RequestRow]:
    """Yields each request purged (with `dry_run`, each that would be), oldest first. Per request: its files
    first, then its rows (so that an interrupted purge is simply done again), then the kept outputs nobody uses
    any more, then its Dagster partition."""
    for request in store.requests_created_before(utcnow() - plan.older_than, plan.statuses):
        if not dry_run:
            storage.delete_request(request.request_id)
            for output in store.purge_request(request.request_id):
                storage.delete_content(output.policy_version, output.input_sha256, output.extension)
            if forget_partition is not None:
                forget_partition(request.request_id)
        yield request
