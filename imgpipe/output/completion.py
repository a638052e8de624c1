"""Ending a request: the output CSV, the terminal status, and the webhook queued in the outbox.

Used by the output CSV asset and the run of several requests when a request's work is done, and by
`end_failed_run_job` when a run dies (`end_dead_run_requests`). The output CSV and the outbox entry are written
first, the terminal status last (docs/getting-started.md#status), so a reader that sees the status finds
everything else in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Sequence

from imgpipe.backends import Backends
from imgpipe.output.output_csv import OutputRow, render_output_csv
from imgpipe.status.models import ImageRow, ImageStatus, RequestStatus, image_counts
from imgpipe.status.store import StatusStore
from imgpipe.storage.interface import StoredObject
from imgpipe.webhooks.message import build_payload, event_type, message_id


@dataclass(frozen=True)
class Completion:
    status: RequestStatus
    counts: dict[str, int]
    output_csv: StoredObject
    csv_bytes: bytes
    images: list[ImageRow]
    webhook_id: str | None
    error: str | None
    renditions: dict[str, tuple[int, int, int]]  # StatusStore.rendition_totals


def terminal_status(counts: dict[str, int], run_failure: str | None) -> tuple[RequestStatus, str | None]:
    """`completed` only when every image made it; never `completed` when all failed."""
    if run_failure:
        return RequestStatus.FAILED, run_failure
    failed, total = counts["failed"] + counts["pending"] + counts["processing"], counts["total"]
    if failed == 0:
        return RequestStatus.COMPLETED, None
    if failed == total:
        return RequestStatus.FAILED, f"all {total} images failed"
    return RequestStatus.COMPLETED_WITH_ERRORS, f"{failed} of {total} images failed"


def output_rows(store: StatusStore, request_id: str, images: list[ImageRow]) -> list[OutputRow]:
    slots: dict[int, list[ImageRow]] = {}
    for image in images:
        slots.setdefault(image.row_number, []).append(image)
    return [
        OutputRow(
            serial=p.serial,
            product_name=p.product_name,
            input_urls=tuple(i.input_url for i in slots.get(p.row_number, [])),
            output_urls=tuple(i.output_url if i.status is ImageStatus.COMPRESSED else None
                              for i in slots.get(p.row_number, [])),
        )
        for p in store.products(request_id)
    ]


def complete_request(backends: Backends, request_id: str, run_id: str, run_failure: str | None = None) -> Completion:
    settings, store, storage = backends.settings, backends.store, backends.storage
    # One store session throughout (the CSV is written while it is held: a local file, or one object).
    with store.held():
        images = store.images(request_id)
        renditions = store.rendition_totals(request_id)
        rows = output_rows(store, request_id, images)
        request = store.get_request(request_id)
        csv_bytes = render_output_csv(rows)
        csv_object = storage.write_output_csv(request_id, csv_bytes)
        counts = image_counts(image.status for image in images)
        status, error = terminal_status(counts, run_failure)
        url = (request.webhook_url if request else None) or settings.webhook_url
        webhook_id = message_id(request_id, run_id) if url else None
        if webhook_id:
            payload = build_payload(request_id, status, counts, csv_object.url, datetime.now(timezone.utc))
            store.enqueue_webhook(webhook_id=webhook_id, request_id=request_id, url=url,
                                  event_type=event_type(status), payload=payload)
        store.finish_request(request_id, status, error)
    return Completion(status, counts, csv_object, csv_bytes, images, webhook_id, error, renditions)


def end_dead_run_requests(backends: Backends, request_ids: Sequence[str], run_id: str, run_key: str | None,
                          reason: str) -> Iterator[tuple[str, Completion | None]]:
    """Ends as failed, for `reason`, each of `request_ids` that the dead run `run_id` (launched under `run_key`)
    still holds; yields each request with its completion, None for one that is no longer the run's to end. Only
    the run that holds a request may end it: a retry may have put it back in the queue meanwhile, and the
    run-status sensors and their backstop may each have asked for this end."""
    for request_id in request_ids:
        request = backends.store.get_request(request_id)
        if request is None or not request.held_by(run_id, run_key):
            yield request_id, None
        else:
            yield request_id, complete_request(backends, request_id, run_id, run_failure=reason)
