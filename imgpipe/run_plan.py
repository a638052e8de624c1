"""Which queued requests share a run. Each run costs its own setup and events (its record, a process forked from
the warm run server, its steps' and materializations' events); a marketplace sends hundreds of small CSVs at once.
So requests queued together are processed in runs of several, each request still ending on its own; a large
request keeps a run of its own, where its images can be spread over steps.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from imgpipe.status.models import RequestRow

# A request this large is worth a run of its own, its partition of the asset job (its images over batch steps,
# each asset a step in the UI). A smaller one is done faster by the one-step job, which records the same
# materializations: measured on the re-upload of 500 unchanged photographs, the asset job's five more steps and
# their events were half of the run.
OWN_RUN_IMAGES = 2000
MAX_REQUESTS_PER_RUN = 50
MAX_IMAGES_PER_RUN = 5000


@dataclass(frozen=True)
class PlannedRun:
    run_key: str
    request_ids: tuple[str, ...]

    @property
    def shared(self) -> bool:
        return len(self.request_ids) > 1


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
