"""Ending a request: the output CSV, the terminal status, and the webhook queued in the outbox.

Used by the output CSV asset when a run finishes and by the run failure sensor when a run dies. The order is
the contract's: the output CSV and the outbox entry are written first, the terminal status last, so a reader
that sees the status finds everything else in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from imgpipe.intake.csv_schema import UploadRejected, parse_upload
from imgpipe.output.output_csv import OutputRow, render_output_csv, rows_from_manifest
from imgpipe.settings import Settings
from imgpipe.status.store import StatusStore
from imgpipe.storage import Storage, StoredObject
from imgpipe.webhooks.webhook import build_payload, event_type, message_id


@dataclass(frozen=True)
class Completion:
    status: str
    counts: dict[str, int]
    output_csv: StoredObject
    csv_bytes: bytes
    webhook_id: str | None
    error: str | None


def terminal_status(counts: dict[str, int], run_failure: str | None) -> tuple[str, str | None]:
    """`completed` only when every image made it; never `completed` when all failed."""
    if run_failure:
        return "failed", run_failure
    failed, total = counts["failed"] + counts["pending"] + counts["processing"], counts["total"]
    if failed == 0:
        return "completed", None
    if failed == total:
        return "failed", f"all {total} images failed"
    return "completed_with_errors", f"{failed} of {total} images failed"


def output_rows(store: StatusStore, storage: Storage, settings: Settings,
                request_id: str) -> list[OutputRow]:
    products = store.products(request_id)
    if not products:
        # The run died before recording its products: the input file still lines the output up.
        return _rows_from_input(storage, settings, request_id)
    slots: dict[int, list[dict]] = {}
    for image in store.images(request_id):
        slots.setdefault(image["row_number"], []).append(image)
    return [
        OutputRow(
            serial=p["serial"],
            product_name=p["product_name"],
            input_urls=tuple(i["input_url"] for i in slots.get(p["row_number"], [])),
            output_urls=tuple(i["output_url"] if i["status"] == "compressed" else None
                              for i in slots.get(p["row_number"], [])),
        )
        for p in products
    ]


def _rows_from_input(storage: Storage, settings: Settings, request_id: str) -> list[OutputRow]:
    try:
        manifest = parse_upload(storage.read_input(request_id), limits=settings.limits)
    except (OSError, UploadRejected):
        return []
    return rows_from_manifest(manifest, {})


def complete_request(settings: Settings, store: StatusStore, storage: Storage, request_id: str,
                     run_id: str, run_failure: str | None = None) -> Completion:
    csv_bytes = render_output_csv(output_rows(store, storage, settings, request_id))
    csv_object = storage.write_output_csv(request_id, csv_bytes)
    counts = store.counts(request_id)
    status, error = terminal_status(counts, run_failure)
    request = store.get_request(request_id) or {}
    url = request.get("webhook_url") or settings.webhook_url
    webhook_id = None
    if url:
        webhook_id = message_id(request_id, run_id)
        payload = build_payload(request_id, status, counts, csv_object.url, datetime.now(timezone.utc))
        store.enqueue_webhook(webhook_id=webhook_id, request_id=request_id, url=url,
                              event_type=event_type(status), payload=payload)
    store.finish_request(request_id, status, error)
    return Completion(status, counts, csv_object, csv_bytes, webhook_id, error)
