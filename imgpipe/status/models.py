"""What the status store holds (docs/getting-started.md#status), as typed rows and the two status vocabularies, and
the views its reads for people and dashboards answer with."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Iterable


def utcnow() -> datetime:
    """Naive UTC, as both stores' TIMESTAMP columns keep it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class RequestStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RequestStatus.COMPLETED, RequestStatus.COMPLETED_WITH_ERRORS,
                               RequestStatus.FAILED, RequestStatus.REJECTED})


class ImageStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPRESSED = "compressed"
    FAILED = "failed"


class Obtained(StrEnum):
    """How a compressed image was obtained (docs/operations.md#re-uploads-politeness-and-retention)."""

    FETCHED = "fetched"  # downloaded and encoded
    NOT_MODIFIED = "not_modified"  # the source answered 304 and the kept output was reused
    SAME_CONTENT = "same_content"  # downloaded, its bytes matched a kept input: no encode


def image_counts(statuses: Iterable[str]) -> dict[str, int]:
    """How many images are in each status, and `total`: the `counts` of the status document and webhook."""
    counts = dict.fromkeys(map(str, ImageStatus), 0)
    for status in statuses:
        counts[status] += 1
    return {"total": sum(counts.values()), **counts}


def grouped_image_counts(groups: Iterable[dict]) -> dict[str, int]:
    """`image_counts` from rows of (`status`, `images`): how many images are in each status."""
    counts = image_counts(())
    for group in groups:
        counts[group["status"]] += int(group["images"])
        counts["total"] += int(group["images"])
    return counts


class Source(StrEnum):
    FOLDER = "folder"
    API = "api"


class _Row:
    """A row read back from the store: built from a mapping of its columns (extra columns are ignored)."""

    @classmethod
    def from_mapping(cls, row: dict):
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


def row_dicts(cursor: Any) -> list[dict]:
    """The rows a cursor read, each a mapping of its columns (what `from_mapping` takes)."""
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


@dataclass(frozen=True)
class RequestRow(_Row):
    request_id: str
    status: RequestStatus
    source: str
    file_name: str | None
    webhook_url: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    total_images: int | None = None
    error: str | None = None
    errors_json: str | None = None
    idempotency_key: str | None = None
    generation: int = 0
    run_id: str | None = None
    fresh: bool | None = False
    run_key: str | None = None  # the run it is launched under, while queued
    run_key_at: datetime | None = None  # when that key was given
    # What the request asked for beside the main outputs (comma lists of imgpipe.images.renditions); None: the
    # settings' (IMGPIPE_RENDITIONS, IMGPIPE_WIDTHS) of the run that processes it.
    renditions: str | None = None
    widths: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RequestStatus(self.status))

    def held_by(self, run_id: str, run_key: str | None) -> bool:
        """Whether the run `run_id`, launched under `run_key`, holds this request: the run is processing it, or was
        launched for it and never got to it. A request that a retry put back in the queue since is no longer
        held by that run, nor is one another run has taken up."""
        if self.status is RequestStatus.PROCESSING:
            return self.run_id == run_id
        return self.status is RequestStatus.QUEUED and run_key is not None and self.run_key == run_key

    @property
    def errors(self) -> list[dict]:
        """The problems of a rejected upload, each {"row", "column", "message"}."""
        return json.loads(self.errors_json) if self.errors_json else []

    @property
    def shown_errors(self) -> list[dict]:
        """What a person is shown: the upload's problems, and a failed request's reason as one without a row."""
        failure = [{"row": None, "column": None, "message": self.error}] \
            if self.status is RequestStatus.FAILED and self.error else []
        return self.errors + failure


@dataclass(frozen=True)
class ProductRow(_Row):
    request_id: str
    serial: str
    product_name: str
    row_number: int


@dataclass(frozen=True)
class ImageRow(_Row):
    request_id: str
    serial: str
    position: int
    row_number: int
    input_url: str
    status: ImageStatus
    updated_at: datetime
    output_path: str | None = None
    output_url: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    quality_in: int | None = None
    quality_out: int | None = None
    format_out: str | None = None
    error: str | None = None
    attempts: int = 0
    obtained: str | None = None
    note: str | None = None
    input_sha256: str | None = None
    download_seconds: float | None = None
    compress_seconds: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", ImageStatus(self.status))


@dataclass(frozen=True)
class DeliveryRow(_Row):
    """One webhook attempt."""

    request_id: str
    attempt: int
    url: str
    status_code: int | None
    error: str | None
    attempted_at: datetime
    webhook_id: str
    event_type: str


@dataclass(frozen=True)
class ImageSlot:
    row_number: int
    position: int
    input_url: str


@dataclass(frozen=True)
class RenditionRow(_Row):
    """A file the URL of a request's image answers with (table `renditions`): its main output (role `main`), or a
    rendition (`fallback` or `alternative`, imgpipe.images.renditions). Only images with renditions have rows."""

    input_url: str
    name: str  # under images/<request_id>/
    format: str  # as Pillow names it: JPEG, WEBP, AVIF, ...
    width: int
    height: int
    bytes: int
    role: str


@dataclass(frozen=True)
class ImageResult:
    """The outcome of one unique input URL, applied to every slot that names it."""

    input_url: str
    status: ImageStatus  # compressed | failed
    output_path: str | None = None
    output_url: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    quality_in: int | None = None
    quality_out: int | None = None
    format_out: str | None = None
    error: str | None = None
    obtained: Obtained | None = None
    note: str | None = None
    input_sha256: str | None = None
    download_seconds: float | None = None
    compress_seconds: float | None = None
    # For reuse by later requests (None: not to be kept): the source's validators, and the extension under which
    # the compressed image was kept by its input's content.
    etag: str | None = None
    last_modified: str | None = None
    validated_url: str | None = None  # where the validators came from: the URL after redirects
    kept_extension: str | None = None
    renditions: tuple[RenditionRow, ...] = ()  # recorded in their own table


@dataclass(frozen=True)
class ContentOutput(_Row):
    """A compressed image kept by the SHA-256 of its input, for the image policy of `policy_version`."""

    input_sha256: str
    policy_version: int
    extension: str
    format_out: str
    bytes_in: int
    bytes_out: int
    quality_in: int | None = None
    quality_out: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class ReuseCandidate:
    """What is known of a URL from its last successful download: its validators and, when its bytes' output is
    kept for the current policy, that output."""

    input_url: str
    etag: str | None
    last_modified: str | None
    validated_url: str | None  # the URL after redirects, where the validators apply
    input_sha256: str
    output: ContentOutput | None


@dataclass(frozen=True)
class OutboxEntry:
    webhook_id: str
    request_id: str
    url: str
    event_type: str
    payload: bytes
    attempts: int
    first_attempt_at: datetime | None


@dataclass(frozen=True)
class RequestView:
    """A request as `request_view` reads it: `groups` holds one dict per (status, obtained) of its images with
    `images`, `bytes_in` and `bytes_out`; `products` and `images` are the page asked for."""

    request: RequestRow
    groups: list[dict]
    products_total: int
    products: list[ProductRow]
    images: list[ImageRow]

    @property
    def counts(self) -> dict[str, int]:
        return grouped_image_counts(self.groups)

    def compressed_total(self, column: str) -> int:
        return sum(int(g[column] or 0) for g in self.groups if g["status"] == "compressed")

    def obtained(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for group in self.groups:
            if group["obtained"]:
                found[group["obtained"]] = found.get(group["obtained"], 0) + int(group["images"])
        return found


@dataclass(frozen=True)
class StoreMetrics:
    """The status store's aggregates for /metrics; each histogram is (cumulative counts per bucket of
    `buckets`, count, sum)."""

    requests_by_status: dict[str, int]
    images_by_status: dict[str, int]
    images_by_obtained: dict[str, int]
    bytes_in: int
    bytes_out: int
    buckets: tuple[float, ...]
    download_seconds: tuple[tuple[int, ...], int, float]
    compress_seconds: tuple[tuple[int, ...], int, float]
    webhook_attempts: dict[str, int]
    oldest_queued_at: datetime | None
    read_at: datetime
    bytes_out_by_format: dict[tuple[str, str], int]  # by (main or rendition, format)
