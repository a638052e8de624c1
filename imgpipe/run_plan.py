"""Which queued requests share a run, and which runs to ask for now. Each run costs its own setup and events (its
record, a process forked from the warm run server, its steps' and materializations' events); a marketplace sends
hundreds of small CSVs at once. So requests queued together are processed in runs of several, each request still
ending on its own; a large request keeps a run of its own, where its images can be spread over steps.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Sequence

from imgpipe.status.models import RequestRow, utcnow

if TYPE_CHECKING:  # planning itself needs no store
    from imgpipe.status.store import StatusStore

# A request this large is worth a run of its own, its partition of the asset job (its images over batch steps,
# each asset a step in the UI). A smaller one is done faster by the one-step job, which records the same
# materializations (docs/performance.md#the-run-lifecycle-one-image-and-a-re-upload, "Fewer steps").
OWN_RUN_IMAGES = 2000
MAX_REQUESTS_PER_RUN = 50
MAX_IMAGES_PER_RUN = 5000
# How long a run key given by a launch at once is left to its launcher (`imgpipe.runs.launch`) before the inbox
# sensor asks for that run too.
DIRECT_LAUNCH_GRACE = timedelta(seconds=60)


@dataclass(frozen=True)
class PlannedRun:
    run_key: str
    request_ids: tuple[str, ...]


def single_run_key(request: RequestRow) -> str:
    """The run key of a request in a run of its own: a retry (a new generation) gets a new run."""
    return f"{request.request_id}:{request.generation}"


def plan_runs(queued: Sequence[RequestRow]) -> list[PlannedRun]:
    """Runs for `queued` (in arrival order): each large request alone, the others together in arrival order, at
    most MAX_REQUESTS_PER_RUN requests and MAX_IMAGES_PER_RUN images a run. A group of one is a run of its own.
    A shared run's key is derived from its requests and their generations, so planning the same requests again
    gives the same key."""
    runs: list[PlannedRun] = []
    group: list[RequestRow] = []
    images = 0

    def close() -> None:
        nonlocal group, images
        if group:
            runs.append(_run_of(group))
        group, images = [], 0

    for request in queued:
        size = request.total_images or 0
        if size >= OWN_RUN_IMAGES:
            runs.append(_run_of([request]))
            continue
        if len(group) == MAX_REQUESTS_PER_RUN or images + size > MAX_IMAGES_PER_RUN:
            close()
        group.append(request)
        images += size
    close()
    return runs


def _run_of(requests: list[RequestRow]) -> PlannedRun:
    ids = tuple(r.request_id for r in requests)
    if len(requests) == 1:
        return PlannedRun(single_run_key(requests[0]), ids)
    digest = hashlib.sha256("|".join(single_run_key(r) for r in requests).encode()).hexdigest()[:12]
    return PlannedRun(f"requests:{ids[0]}:{len(ids)}:{digest}", ids)


def runs_to_ask_for(store: StatusStore, going_run_keys: Sequence[str | None],
                    run_limit: int) -> dict[str, list[RequestRow]]:
    """The queued requests whose runs to ask for now, by run key, after giving run keys to as many planned runs as
    there is room for. `going_run_keys`: those of the processing runs going, one per run (None for a run without
    one); `run_limit`: how many may go at once.

    Each request is given its run key once (kept in the status store until it is queued again), so every later
    ask is for the same run, which Dagster launches once. New runs are keyed only while fewer than `run_limit`
    are going or asked for: the requests that wait meanwhile are grouped into fewer, fuller runs when room comes.
    A key given by a launch at once is left to its launcher for DIRECT_LAUNCH_GRACE."""
    queued = store.queued_requests()
    if not queued:
        return {}
    # Asked for earlier, not created yet.
    asked = {r.run_key for r in queued if r.run_key} - set(going_run_keys)
    room = max(0, run_limit - len(going_run_keys) - len(asked))
    keyed_now = store.assign_run_keys({request_id: run.run_key
                                       for run in plan_runs([r for r in queued if not r.run_key])[:room]
                                       for request_id in run.request_ids})
    settled = utcnow() - DIRECT_LAUNCH_GRACE
    runs: dict[str, list[RequestRow]] = {}
    for request in store.queued_requests():
        if request.run_key and (request.request_id in keyed_now or request.run_key_at is None
                                or request.run_key_at <= settled):
            runs.setdefault(request.run_key, []).append(request)
    return runs
