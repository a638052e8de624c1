"""A request's images processed, and the request ended: what the steps of a run do, without Dagster.

`compress_images` runs a batch of a request's images (the `compress_batch` step); `process_requests` takes a
shared run's requests from start to end (each read and run through `ImagesToDo`), a few at a time, each ending on
its own (its output CSV, terminal status and webhook as soon as its own images are done) and a failure of one
touching no other.

IMGPIPE_REQUEST_DEADLINE counts from the start of the request's processing: the start of its own run (every
`compress_batch` step of that run, wherever it runs, gets the same instant), or in a shared run the moment the run
takes the request up. A retry or a re-execution is a run of its own, with a whole deadline for what it redoes.
"""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from imgpipe.backends import Backends
from imgpipe.images.batch import BatchRunner, Reuse, WorkItem, work_items
from imgpipe.images.image_policy import POLICY_VERSION
from imgpipe.images.renditions import RenditionSpec
from imgpipe.net.host_slots import HostSlots
from imgpipe.output.completion import Completion, complete_request
from imgpipe.settings import Settings
from imgpipe.status.models import ImageResult, RequestRow, RequestStatus
from imgpipe.status.store import StatusStore
from imgpipe.text import printable
from imgpipe.webhooks.delivery import deliver

# Requests of a shared run processed at once: enough to keep the cores busy between small requests' downloads.
REQUESTS_AT_ONCE = 4


def reuse_for(backends: Backends, request: RequestRow | None, items: Sequence[WorkItem]) -> Reuse | None:
    """What earlier requests left for these images, unless reuse is off (IMGPIPE_REUSE) or the request asked
    for a fresh fetch."""
    if not backends.settings.reuse_enabled or (request and request.fresh):
        return None
    store = backends.store
    kept: set[str] | None = None
    listing = threading.Lock()  # a batch's download threads find new images at once; one of them lists

    def find_output(sha256: str):
        # One session lists what is kept, once for the batch; only a hash among them costs a session of its own.
        # A session per new image cost more than its encode (docs/performance.md#where-the-time-goes-per-image).
        nonlocal kept
        with listing:
            if kept is None:
                kept = store.kept_content(POLICY_VERSION)
        return store.content_output(sha256, POLICY_VERSION) if sha256 in kept else None

    return Reuse(candidates=store.reuse_candidates([item.input_url for item in items], POLICY_VERSION),
                 find_output=find_output,
                 forget_output=lambda sha256: store.forget_content(sha256, POLICY_VERSION))


def renditions_for(settings: Settings, request: RequestRow | None) -> RenditionSpec:
    """What the request asked for beside its main outputs; for each of formats and widths it did not name, the
    settings' (IMGPIPE_RENDITIONS, IMGPIPE_WIDTHS)."""
    formats = request.renditions if request and request.renditions is not None else settings.renditions
    widths = request.widths if request and request.widths is not None else settings.widths
    return RenditionSpec.parse(formats, widths)


def compress_images(backends: Backends, request_id: str, items: Sequence[WorkItem] | None = None,
                    started_at: float | None = None) -> list[ImageResult]:
    """Download and compress `items` of the request (None: all it has left), recording results as they come;
    those whose every slot is already compressed (by a step that ran before, on a worker that died) are
    skipped. `started_at`: when the request's processing started (time.time(), so that it means the same on
    every machine; None: now), from which IMGPIPE_REQUEST_DEADLINE counts."""
    with backends.store.held():
        images = ImagesToDo.read(backends, request_id, items, started_at=started_at)
    return images.run()


@dataclass(frozen=True)
class ImagesToDo:
    """A request's images left to do and how (reuse, renditions, deadline), read from the status store; `read`
    inside `store.held()`, so that it takes one session with whatever else the caller reads (a session costs
    DuckDB a connection: docs/performance.md#the-run-lifecycle-one-image-and-a-re-upload, "Status sessions")."""

    store: StatusStore
    items: list[WorkItem]
    runner: BatchRunner

    @property
    def request_id(self) -> str:
        return self.runner.request_id

    @classmethod
    def read(cls, backends: Backends, request_id: str, items: Sequence[WorkItem] | None = None,
             hosts: HostSlots | None = None, request: RequestRow | None = None,
             started_at: float | None = None) -> "ImagesToDo":
        settings, store = backends.settings, backends.store
        elapsed = 0.0 if started_at is None else time.time() - started_at
        deadline = time.monotonic() + settings.request_deadline - elapsed
        items = _unfinished(store, request_id, items)
        store.mark_processing(request_id, [item.input_url for item in items])
        request = request or store.get_request(request_id)
        reuse = reuse_for(backends, request, items)
        return cls(store, items, BatchRunner(settings, backends.storage, request_id, reuse, hosts, deadline,
                                             renditions_for(settings, request)))

    def run(self, then: Callable[[], None] | None = None) -> list[ImageResult]:
        """The images done and their results recorded; `then` in the session that records the last of them (or
        in one of its own where there were none)."""
        def record(done: list[ImageResult]) -> None:
            self.store.record_results(self.request_id, done, POLICY_VERSION)

        def record_last(done: list[ImageResult]) -> None:
            with self.store.held():
                record(done)
                then()

        results = self.runner.run(self.items, report=record, report_last=record_last if then else None)
        if then and not self.items:
            then()
        return results


def _unfinished(store: StatusStore, request_id: str, items: Sequence[WorkItem] | None) -> list[WorkItem]:
    unfinished = work_items(store.unfinished_slots(request_id))
    if items is None:
        return unfinished
    wanted = {item.input_url for item in unfinished}
    return [item for item in items if item.input_url in wanted]


@dataclass(frozen=True)
class Ended:
    """A request of a shared run that has ended (`completion`), or that was not this run's to do (None)."""

    request_id: str
    completion: Completion | None


def process_requests(backends: Backends, request_ids: Sequence[str], run_id: str, *,
                     again: bool = False) -> Iterator[Ended]:
    """Each request from start to end, REQUESTS_AT_ONCE at a time, yielded as it ends. `again` (a re-execution):
    requests that ended with images to redo are done again; otherwise only requests not yet ended are. The first
    webhook attempts are made beside the work, so that a slow receiver holds up nothing."""
    store = backends.store
    hosts = HostSlots(backends.settings.per_host_connections)

    def one(request_id: str) -> Ended:
        ended: Completion | None = None

        def end(run_failure: str | None = None) -> None:
            nonlocal ended
            ended = complete_request(backends, request_id, run_id, run_failure=run_failure)

        try:
            with store.held():  # its row read, its processing started and its work listed in one session
                request = store.get_request(request_id)
                redo = again and request is not None and request.status in (RequestStatus.FAILED,
                                                                              RequestStatus.COMPLETED_WITH_ERRORS)
                if request is None or (request.status.terminal and not redo):
                    return Ended(request_id, None)
                store.start_processing(request_id, run_id)
                images = ImagesToDo.read(backends, request_id, hosts=hosts, request=request)
            images.run(then=end)
        except Exception as exc:  # noqa: BLE001 - one request's failure must not end the others
            if ended is None:
                end(printable(f"processing failed: {type(exc).__name__}: {exc}"))
        return Ended(request_id, ended)

    with ThreadPoolExecutor(REQUESTS_AT_ONCE, thread_name_prefix="imgpipe-request") as requests, \
            ThreadPoolExecutor(REQUESTS_AT_ONCE, thread_name_prefix="imgpipe-webhook") as webhooks, \
            contextlib.closing(hosts):
        pending: set[Future] = {requests.submit(one, request_id) for request_id in request_ids}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                ended = future.result()
                if ended.completion and ended.completion.webhook_id:
                    webhooks.submit(deliver, backends, ended.completion.webhook_id, inline=True)
                yield ended

