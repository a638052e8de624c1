"""Retention (docs/operations.md#re-uploads-politeness-and-retention): whole requests older than a duration are
purged, their files or objects, their rows in every table and their Dagster partition. A compressed output that a
request still kept reuses stays; one no kept request uses any more goes with the last request that used it. A
request that has not ended is refused: its run would write files after the purge, files no later purge could
find.

Used by `imgpipe purge` and, when IMGPIPE_RETENTION_DAYS is set, by a daily Dagster schedule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable

from imgpipe.backends import Backends
from imgpipe.status.models import TERMINAL_STATUSES, RequestRow, RequestStatus, utcnow
from imgpipe.status.retention_rows import NotPurgeable

_DURATION = re.compile(r"([0-9]+)([smhd])")  # \d would take any Unicode digit
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
MAX_AGE = timedelta(days=1000 * 365)


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `12h` or `30d`."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 12h or 30d")
    try:
        duration = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        duration = MAX_AGE + MAX_AGE
    if duration > MAX_AGE:  # "older than" it would reach back before the calendar's first year
        raise ValueError(f"{text!r} is longer than {MAX_AGE.days:,} days")
    return duration


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


@dataclass(frozen=True)
class PurgeOutcome:
    request: RequestRow
    refused: str | None = None  # why the request was not purged


def purge(backends: Backends, plan: PurgePlan, *, dry_run: bool = False,
          forget_partition: Callable[[str], None] | None = None) -> Iterable[PurgeOutcome]:
    """Yields each request of the plan, oldest first, purged (with `dry_run`, that would be) or refused with the
    reason. Per request: its ID marked purged, where the store refuses a request that has not ended and from then
    on any retry of it; its files; its rows (so that an interrupted purge is simply done again); the kept outputs
    nobody uses any more; its Dagster partition."""
    for request in backends.store.requests_created_before(utcnow() - plan.older_than, plan.statuses):
        if dry_run:
            refused = None if request.status.terminal else str(NotPurgeable(request.request_id, request.status))
        else:
            refused = _purge_one(backends, request.request_id, forget_partition)
        yield PurgeOutcome(request, refused)


def _purge_one(backends: Backends, request_id: str, forget_partition: Callable[[str], None] | None) -> str | None:
    """Purges the request; returns why not when the store refused it (its status is read in the transaction that
    marks it, so it may have changed since it was listed)."""
    store, storage = backends.store, backends.storage
    try:
        store.mark_purged(request_id)
    except NotPurgeable as exc:
        return str(exc)
    storage.delete_request(request_id)
    for output in store.purge_request(request_id):
        storage.delete_content(output.policy_version, output.input_sha256)
    if forget_partition is not None:
        forget_partition(request_id)
    return None
