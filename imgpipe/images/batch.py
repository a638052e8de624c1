"""Planning and running batches of images: the work inside one mapped Dagster step.

A Dagster step costs 0.4-1.4 s of orchestration in a process of its own (about 40 ms in the run's process), so a
step takes a batch of images and the number of steps stays bounded whatever the image count. Inside a step, downloads run in threads and overlap
with compression, and each image is still decoded and encoded in a fresh OS process of its own.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from imgpipe.images.compressor import compress_isolated
from imgpipe.images.fetcher import FetchError, FetchLimits, fetch
from imgpipe.settings import Settings
from imgpipe.status.models import ImageResult, ImageSlot
from imgpipe.storage import Storage
from imgpipe.text import printable
from imgpipe.images.url_safety import AllowList


@dataclass(frozen=True)
class WorkItem:
    """One unique input URL of a request; its output name comes from the first slot that names it."""

    input_url: str
    output_stem: str

    def to_dict(self) -> dict:
        return asdict(self)


def work_items(slots: Sequence[ImageSlot]) -> list[WorkItem]:
    """A URL named by several slots is fetched and compressed once."""
    items: dict[str, WorkItem] = {}
    for slot in slots:
        if slot.input_url not in items:
            items[slot.input_url] = WorkItem(slot.input_url, f"r{slot.row_number}-p{slot.position}")
    return list(items.values())


def split_into_batches(items: Sequence[WorkItem], max_batches: int, min_batch_size: int) -> list[list[WorkItem]]:
    """Near-equal contiguous batches: as many as parallelism can use, none smaller than is worth a step."""
    if not items:
        return []
    count = max(1, min(max_batches, math.ceil(len(items) / min_batch_size)))
    size = math.ceil(len(items) / count)
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


class BatchRunner:
    """Downloads and compresses a batch, reporting results in groups so status writes stay few."""

    def __init__(self, settings: Settings, storage: Storage, request_id: str):
        self.settings = settings
        self.storage = storage
        self.request_id = request_id
        self.allow = AllowList.parse(settings.allow_private_hosts)
        self.fetch_limits = FetchLimits.from_settings(settings)
        # More downloads than compressions may wait on the network; compressions are capped at the cores.
        self.compress_slots = threading.Semaphore(settings.compress_slots)

    def run(self, items: Sequence[WorkItem], report: Callable[[list[ImageResult]], None],
            report_interval: float = 1.0) -> list[ImageResult]:
        results: list[ImageResult] = []
        unreported: list[ImageResult] = []
        last_report = time.monotonic()
        with ThreadPoolExecutor(max_workers=min(self.settings.download_threads, max(1, len(items)))) as pool:
            items_of = {pool.submit(self.process, item): item for item in items}
            pending = set(items_of)
            while pending:
                # Wake at least every interval, so a finished image is reported while slow ones still run.
                done, pending = wait(pending, timeout=report_interval, return_when=FIRST_COMPLETED)
                for future in done:
                    results.append(_outcome(future, items_of[future]))
                    unreported.append(results[-1])
                if unreported and (not pending or time.monotonic() - last_report >= report_interval):
                    report(unreported)
                    unreported, last_report = [], time.monotonic()
        return results

    def process(self, item: WorkItem) -> ImageResult:
        limits = self.settings
        started = time.monotonic()
        try:
            download = fetch(item.input_url, allow=self.allow, limits=self.fetch_limits)
        except FetchError as exc:
            return _failed(item, f"download failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug met by one URL must fail that image, not its batch
            return _failed(item, f"download failed: {type(exc).__name__}: {exc}")
        bytes_in = len(download.content)
        # The per-image budget covers download and compression, not the wait for a free core.
        remaining = max(1.0, limits.image_timeout - (time.monotonic() - started))
        with self.compress_slots:
            outcome = compress_isolated(download.content, max_pixels=limits.max_pixels,
                                        max_frames=limits.max_frames, timeout=remaining,
                                        memory_bytes=limits.process_memory_bytes)
        if not outcome.ok:  # the reason may quote the file's own bytes, or a decoder's
            return _failed(item, outcome.error, bytes_in)
        image = outcome.image
        try:
            stored = self.storage.write_image(self.request_id, item.output_stem + image.extension, image.data)
        except Exception as exc:  # noqa: BLE001 - a full disk or a storage service's refusal fails this image alone
            return _failed(item, f"could not store the compressed image: {_reason(exc)}", bytes_in)
        return ImageResult(
            item.input_url, "compressed", output_path=stored.path, output_url=stored.url, bytes_in=bytes_in,
            bytes_out=len(image.data), quality_in=image.quality_in, quality_out=image.quality_out,
            format_out=image.format,
        )


def _outcome(future: Future, item: WorkItem) -> ImageResult:
    """The item's result, also when `process` raised: every item of a batch gets one, and the batch returns."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - one image's failure, even a bug's, must not lose the others' results
        return _failed(item, f"processing failed: {_reason(exc)}")


def _failed(item: WorkItem, error: str, bytes_in: int | None = None) -> ImageResult:
    # Reasons quote servers, files and libraries: printable and bounded, as the status store and logs need them.
    return ImageResult(item.input_url, "failed", bytes_in=bytes_in, error=printable(error))


def _reason(exc: Exception) -> str:
    # An OSError says what happened ("[Errno 28] No space left on device"); anything else is also named by its type.
    return str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
