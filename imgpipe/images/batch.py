"""Planning and running batches of images: the work inside one mapped Dagster step.

A Dagster step costs 0.4-1.4 s of orchestration in a process of its own (about 40 ms in the run's process), so a
step takes a batch of images and the number of steps stays bounded whatever the image count. Inside a step,
downloads run in threads and overlap with compression, and each image is still decoded and encoded in a fresh
OS process of its own. A thread takes an image only when its host has room for another download (so a dead or
busy host holds up no other host's images), and the request's deadline (IMGPIPE_REQUEST_DEADLINE) ends whatever
is not done by then.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from imgpipe.images.compressor import compress_isolated
from imgpipe.images.image_policy import POLICY_VERSION
from imgpipe.images.rendition_files import RequestRenditions
from imgpipe.images.renditions import RenditionSpec
from imgpipe.net.download import FetchLimits, FetchResult, Validators, fetch
from imgpipe.net.errors import FetchError
from imgpipe.net.host_slots import HostQueue, HostSlots
from imgpipe.net.url_safety import AllowList, netloc_of
from imgpipe.settings import Settings, env_name
from imgpipe.status.models import ContentOutput, ImageResult, ImageSlot, ImageStatus, Obtained, ReuseCandidate
from imgpipe.storage.interface import Storage
from imgpipe.text import printable


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


@dataclass(frozen=True)
class Reuse:
    """What earlier requests left for this batch's URLs (`candidates`, by URL), and how to look up a kept output
    by the SHA-256 of an input (`find_output`) or forget one whose files are gone (`forget_output`)."""

    candidates: dict[str, ReuseCandidate]
    find_output: Callable[[str], ContentOutput | None]
    forget_output: Callable[[str], None]


class BatchRunner:
    """Downloads and compresses a batch, reporting results in groups so status writes stay few.

    With `reuse`, a URL seen before is fetched conditionally (a 304 reuses its kept output: `not_modified`), bytes
    seen before are not encoded again (`same_content`), and a new output is kept by its input's SHA-256 for
    later requests; each request still gets its own files, linked from the kept ones. A source that answers
    `Cache-Control: no-store` is never reused nor kept. With `renditions`, each image gets those too: made with
    it, or linked from a kept output that has them all (one that lacks some is made again).

    `deadline`, a time.monotonic() instant, is the request's: an image not done by then fails, whether under way
    or still waiting (None: IMGPIPE_REQUEST_DEADLINE seconds from now)."""

    def __init__(self, settings: Settings, storage: Storage, request_id: str, reuse: Reuse | None = None,
                 hosts: HostSlots | None = None, deadline: float | None = None,
                 renditions: RenditionSpec | None = None):
        self.settings = settings
        self.storage = storage
        self.request_id = request_id
        self.reuse = reuse
        self.renditions = RequestRenditions(storage, request_id, renditions) if renditions else None
        self.allow = AllowList.parse(settings.allow_private_hosts)
        self.fetch_limits = FetchLimits.from_settings(settings)
        # Shared by the batches of one step, however many run at once. (The compressions of the whole process
        # are queued and capped at the cores by the compressor itself.) Slots of its own are closed by `run`.
        self.hosts = hosts or HostSlots(settings.per_host_connections)
        self._own_hosts = hosts is None
        self.deadline = time.monotonic() + settings.request_deadline if deadline is None else deadline
        self.deadline_reason = f"not done within {env_name('request_deadline')} ({settings.request_deadline:g} s)"

    def run(self, items: Sequence[WorkItem], report: Callable[[list[ImageResult]], None],
            report_interval: float = 1.0,
            report_last: Callable[[list[ImageResult]], None] | None = None) -> list[ImageResult]:
        """`report` is called with the results come in since its last call, at most every `report_interval` s;
        `report_last`, where given, instead of it with the last of them."""
        results: list[ImageResult] = []
        unreported: list[ImageResult] = []
        last_report = time.monotonic()
        # Each image hands its result in as it ends. (`concurrent.futures.wait` over pending futures costs time in
        # their number at every wake-up: 36 ms a call with 20,000 of them, the main thread then busy with the GIL
        # held, a cost per image that grew with the request.)
        finished: queue.SimpleQueue[ImageResult] = queue.SimpleQueue()
        downloads = self.hosts.queue((netloc_of(item.input_url), item) for item in items)
        threads = min(self.settings.download_threads, max(1, len(items)))
        with ThreadPoolExecutor(max_workers=threads) as pool, \
                contextlib.closing(self.hosts) if self._own_hosts else contextlib.nullcontext():
            for _ in range(threads):
                pool.submit(self._work, downloads, finished)
            pending = len(items)
            before_deadline = True
            while pending:
                if before_deadline and time.monotonic() >= self.deadline:
                    before_deadline = False
                    for item in downloads.close():
                        finished.put(_failed(item, self.deadline_reason))
                # Wake at least every interval, so a finished image is reported while slow ones still run, and
                # at the deadline.
                wait = report_interval - (time.monotonic() - last_report) if unreported else report_interval
                if before_deadline:
                    wait = min(wait, self.deadline - time.monotonic())
                try:
                    results.append(finished.get(timeout=max(0.001, wait)))
                except queue.Empty:
                    pass
                else:
                    unreported.append(results[-1])
                    pending -= 1
                if unreported and (not pending or time.monotonic() - last_report >= report_interval):
                    (report_last if report_last and not pending else report)(unreported)
                    unreported, last_report = [], time.monotonic()
        return results

    def _work(self, downloads: HostQueue[WorkItem], finished: queue.SimpleQueue[ImageResult]) -> None:
        """One download thread: images as their hosts have room for them, until none is left."""
        while (taken := downloads.take()) is not None:
            item, turn = taken
            try:
                finished.put(self.process(item, turn.end))
            except Exception as exc:  # noqa: BLE001 - one image's failure, even a bug's, must not lose the others'
                finished.put(_failed(item, f"processing failed: {_reason(exc)}"))
            finally:
                turn.end()

    def process(self, item: WorkItem, download_over: Callable[[], None] | None = None) -> ImageResult:
        """One image, from its download to its stored output. `download_over`, when the image was handed out by
        a HostQueue, is called once the download is over, so that the host's next download may start while this
        one is compressed."""
        started = time.monotonic()
        if started >= self.deadline:
            return _failed(item, self.deadline_reason)
        deadline = min(started + self.settings.image_timeout, self.deadline)
        candidate = self.reuse.candidates.get(item.input_url) if self.reuse else None
        kept = candidate.output if candidate else None
        refused = None  # a kept output `_reuse` has already turned down for this image
        try:
            if kept and (candidate.etag or candidate.last_modified):
                download = self._fetch(item, deadline, Validators(candidate.etag, candidate.last_modified,
                                                                  url=candidate.validated_url))
                if download.not_modified:
                    reused = self._reuse(item, kept, Obtained.NOT_MODIFIED, download, started)
                    if reused:
                        return reused
                    # The kept output is gone, or lacks renditions asked for: the whole image again.
                    refused = kept
                    download = self._fetch(item, deadline)
            else:
                download = self._fetch(item, deadline)
        except FetchError as exc:
            return self._failed_or_late(item, f"download failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug met by one URL must fail that image, not its batch
            return _failed(item, f"download failed: {type(exc).__name__}: {exc}")
        if download_over:
            download_over()
        sha256 = hashlib.sha256(download.content).hexdigest()
        keep = self.reuse is not None and not download.no_store
        if keep:
            known = kept if candidate and candidate.input_sha256 == sha256 else self.reuse.find_output(sha256)
            # Not the output refused above once more: its files and record were just read, and found wanting.
            if known and not _same_output(known, refused):
                reused = self._reuse(item, known, Obtained.SAME_CONTENT, download, started, sha256)
                if reused:
                    return reused
        return self._compress(item, download, sha256, keep, started)

    def _failed_or_late(self, item: WorkItem, error: str, bytes_in: int | None = None) -> ImageResult:
        """`item` failed with `error`, unless the request's deadline had come: then that cut it short."""
        return _failed(item, self.deadline_reason if time.monotonic() >= self.deadline else error, bytes_in)

    def _fetch(self, item: WorkItem, deadline: float, validators: Validators | None = None) -> FetchResult:
        return fetch(item.input_url, allow=self.allow, limits=self.fetch_limits, validators=validators,
                     hosts=self.hosts, deadline=deadline)

    def _compress(self, item: WorkItem, download: FetchResult, sha256: str, keep: bool,
                  started: float) -> ImageResult:
        bytes_in = len(download.content)
        downloaded = time.monotonic()
        if downloaded >= self.deadline:
            return _failed(item, self.deadline_reason, bytes_in)
        # The per-image budget covers download and compression, not the wait for a free core: the compressor
        # counts it from when the image's process starts on it. The request's deadline is an instant: an image
        # still waiting for a core then is never started, and one under way is cut short.
        remaining = max(1.0, self.settings.image_timeout - (downloaded - started))
        # The compressor queues the images of this whole process and runs `compress_slots` at once itself,
        # starting the next the moment one answers, so that no thread of this process (waiting for the GIL
        # behind the downloads) stands between one image and the next.
        outcome = compress_isolated(download.content, max_pixels=self.settings.max_pixels,
                                    max_frames=self.settings.max_frames, timeout=remaining,
                                    memory_bytes=self.settings.process_memory_bytes,
                                    slots=self.settings.compress_slots, isolation=self.settings.isolation,
                                    recycle=self.settings.pool_recycle, not_after=self.deadline,
                                    renditions=self.renditions.spec if self.renditions else None)
        compress_seconds = outcome.seconds
        if not outcome.ok:  # the reason may quote the file's own bytes, or a decoder's
            return self._failed_or_late(item, outcome.error, bytes_in)
        image = outcome.image
        renditions = ()
        try:
            # Renditions first: a main output's presence says its renditions are there.
            if keep:
                self.storage.keep_content(POLICY_VERSION, sha256, image.extension, image.data,
                                          image.thumbnail_before, image.thumbnail_after)
                if self.renditions:
                    renditions = self.renditions.keep_and_link(image, sha256, item.output_stem, item.input_url)
                stored = self.storage.link_content(POLICY_VERSION, sha256, image.extension, self.request_id,
                                                   item.output_stem)
            else:
                if self.renditions:
                    renditions = self.renditions.store(image, item.output_stem, item.input_url)
                stored = self.storage.write_image(self.request_id, item.output_stem + image.extension, image.data)
                self.storage.write_thumbnails(self.request_id, item.output_stem, image.thumbnail_before,
                                              image.thumbnail_after)
        except Exception as exc:  # noqa: BLE001 - a full disk or a storage service's refusal fails this image alone
            return _failed(item, f"could not store the compressed image: {_reason(exc)}", bytes_in)
        return ImageResult(
            item.input_url, ImageStatus.COMPRESSED, output_path=stored.path, output_url=stored.url,
            bytes_in=bytes_in, bytes_out=len(image.data), quality_in=image.quality_in, quality_out=image.quality_out,
            format_out=image.format, obtained=Obtained.FETCHED, note=image.note, input_sha256=sha256,
            download_seconds=downloaded - started, compress_seconds=compress_seconds, renditions=renditions,
            **_validators_to_keep(download, image.extension if keep else None),
        )

    def _reuse(self, item: WorkItem, output: ContentOutput, obtained: Obtained, download: FetchResult,
               started: float, sha256: str | None = None) -> ImageResult | None:
        """The kept `output` as this request's image; None when its files are gone (it is forgotten), or when it
        lacks renditions this request asks for (it is made again, with them)."""
        kept_renditions = None
        if self.renditions:
            kept_renditions = self.renditions.kept_for_request(output.input_sha256, output.quality_out)
            if kept_renditions is None:
                return None
        try:
            renditions = () if kept_renditions is None else self.renditions.link(
                kept_renditions, output.input_sha256, item.output_stem, item.input_url)
            stored = self.storage.link_content(POLICY_VERSION, output.input_sha256, output.extension,
                                               self.request_id, item.output_stem)
        except Exception:  # noqa: BLE001 - a missing file or object: make it again
            self.reuse.forget_output(output.input_sha256)
            return None
        # After a 304 the fetcher has filled in the validators it sent, which the answer may leave out.
        validators = _validators_to_keep(download, output.extension)
        return ImageResult(
            item.input_url, ImageStatus.COMPRESSED, output_path=stored.path, output_url=stored.url,
            bytes_in=output.bytes_in, bytes_out=output.bytes_out, quality_in=output.quality_in,
            quality_out=output.quality_out, format_out=output.format_out, obtained=obtained, note=output.note,
            input_sha256=sha256 or output.input_sha256, download_seconds=time.monotonic() - started,
            compress_seconds=0.0, renditions=renditions, **validators,
        )


def _validators_to_keep(download: FetchResult, kept_extension: str | None) -> dict:
    """What a later request needs to reuse this image: none when it is not kept."""
    if kept_extension is None:
        return {"etag": None, "last_modified": None, "validated_url": None, "kept_extension": None}
    return {"etag": download.etag, "last_modified": download.last_modified, "validated_url": download.url,
            "kept_extension": kept_extension}


def _same_output(output: ContentOutput, other: ContentOutput | None) -> bool:
    return other is not None and (output is other or (output.input_sha256, output.extension)
                                  == (other.input_sha256, other.extension))


def _failed(item: WorkItem, error: str, bytes_in: int | None = None) -> ImageResult:
    # Reasons quote servers, files and libraries: printable and bounded, as the status store and logs need them.
    return ImageResult(item.input_url, ImageStatus.FAILED, bytes_in=bytes_in, error=printable(error))


def _reason(exc: Exception) -> str:
    # An OSError says what happened ("[Errno 28] No space left on device"); anything else is also named by its type.
    return str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
