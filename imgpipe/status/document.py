"""The status document of a request (docs/api.md#rest-api, `GET /requests/{id}`), built from the status store.

One definition of its shape, as pydantic models: the REST API answers with it (and documents it in its OpenAPI
schema), the CLI prints it and waits on it. No HTTP code here.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Optional

from pydantic import BaseModel, Field

from imgpipe.backends import Backends
from imgpipe.images.renditions import MAIN, served_links
from imgpipe.report_links import report_url
from imgpipe.status.models import ImageStatus, Obtained, RenditionRow, RequestStatus, RequestView
from imgpipe.status.store import StatusStore


class RowErrorModel(BaseModel):
    row: Optional[int] = Field(description="The row a spreadsheet shows (header = 1); null for the whole file.")
    column: Optional[str]
    message: str


class Counts(BaseModel):
    total: int
    pending: int
    processing: int
    compressed: int
    failed: int


class RenditionModel(BaseModel):
    format: str = Field(description="jpeg, webp or avif; a narrower width's fallback has the main output's format "
                                    "(jpeg, or webp for an image with transparency).")
    width: int = Field(ge=1, description="In pixels; the main output's own, or one of the request's narrower ones.")
    bytes: int = Field(ge=0)
    url: str = Field(json_schema_extra={"format": "uri"}, description="This file itself, whatever `Accept` says.")


class ImageModel(BaseModel):
    position: int = Field(ge=1, description="1-based slot within its row.")
    input_url: str
    status: ImageStatus
    output_url: Optional[str]
    error: Optional[str]
    obtained: Optional[Obtained] = Field(
        None, description="How a compressed image was obtained: fetched, not_modified (the source answered 304 and a "
                          "kept output was reused) or same_content (its bytes matched a kept input); null otherwise.")
    note: Optional[str] = Field(None, description="Why the output is not the half-quality encode, when it is not.")
    renditions: list[RenditionModel] = Field(default_factory=list, description=(
        "The image's renditions, when its request asked for some: each format at the main output's width and at "
        "each narrower width of the request, and the fallback at those widths. `output_url` serves the one that "
        "suits the client's `Accept` (and `?w=`)."))
    srcset: str = Field("", description=(
        "For an <img> element: `output_url?w=<width> <width>w` for each narrower width, then `output_url` at the "
        "main output's width; each negotiated by `Accept`. Empty for an image without renditions."))


class ProductModel(BaseModel):
    serial: str
    product_name: str
    images: list[ImageModel]


class RequestHead(BaseModel):
    """What every view of a request starts with: the request and its counts."""

    request_id: str
    status: RequestStatus
    created_at: datetime
    updated_at: datetime
    counts: Counts
    output_csv_url: Optional[str] = Field(description="Set once the request has ended with its output CSV.")
    report_url: str = Field(json_schema_extra={"format": "uri"}, description=(
        "The request's HTML report. With IMGPIPE_API_TOKEN set it is a signed link (`expires`, `signature`) "
        "that opens in a browser without the token, for that report only, for 7 to 8 days."))
    errors: list[RowErrorModel]


class RequestSummary(RequestHead):
    """`GET /requests/{id}?view=summary`: the status document without its products."""

    products_total: int = Field(ge=0, description="How many products (input rows) the request has.")


class RequestDocument(RequestHead):
    """`GET /requests/{id}`: the request, its counts, and every product with its images in input order."""

    products: list[ProductModel]


class RequestPage(RequestDocument):
    """`GET /requests/{id}?limit=N&offset=M`: the document with that page of products (in input order) and how
    many there are in all."""

    products_total: int = RequestSummary.model_fields["products_total"]


VIEWS = ("full", "summary")


def _utc(moment: datetime) -> datetime:
    # The store keeps naive UTC; say so in the answer.
    return moment.replace(tzinfo=timezone.utc)


def request_document(backends: Backends, request_id: str, *, view: str = "full", offset: int | None = None,
                     limit: int | None = None) -> RequestDocument | RequestPage | RequestSummary | None:
    """The document of `request_id` (None for an unknown request): whole, a page of its products when `offset`
    or `limit` is given, or its summary (`view="summary"`, no products)."""
    document = stored_document(backends.store, request_id, view=view, offset=offset, limit=limit)
    return link_output_csv(document, backends) if document is not None else None


def link_output_csv(document: RequestDocument | RequestPage | RequestSummary,
                    backends: Backends) -> RequestDocument | RequestPage | RequestSummary:
    """With its links: `report_url`, and `output_csv_url` once the request has ended with its CSV in the storage
    (a file or an object)."""
    return document.model_copy(update=request_links(backends, document.request_id, document.status.terminal))


def request_links(backends: Backends, request_id: str, terminal: bool) -> dict[str, str]:
    """`report_url`, and `output_csv_url` once the request has ended with its CSV in the storage."""
    links = {"report_url": report_url(backends.settings, request_id)}
    if terminal and backends.storage.has_output_csv(request_id):
        links["output_csv_url"] = backends.settings.output_csv_url(request_id)
    return links


def stored_document(store: StatusStore, request_id: str, *, view: str = "full", offset: int | None = None,
                    limit: int | None = None) -> RequestDocument | RequestPage | RequestSummary | None:
    """The document from the status store alone (products paged in SQL, their renditions read after them: a
    compressed image is recorded with its renditions, so never shown without them), its links not yet set."""
    summary = view == "summary"
    paged = offset is not None or limit is not None
    with store.held():  # one session for both reads
        found = store.request_view(request_id, offset=offset or 0, limit=limit, with_products=not summary)
        renditions = store.renditions_of_view(found)
    if found is None:
        return None
    if summary:
        return _summary(found)
    fields = _head(found)
    images_by_row: dict[int, list[ImageModel]] = defaultdict(list)
    for image in found.images:
        images_by_row[image.row_number].append(ImageModel(
            position=image.position, input_url=image.input_url, status=image.status,
            output_url=image.output_url, error=image.error, obtained=image.obtained, note=image.note,
            **_rendition_fields(image.output_url, renditions.get(image.input_url, []))))
    products = [ProductModel(serial=p.serial, product_name=p.product_name, images=images_by_row[p.row_number])
                for p in found.products]
    if paged:
        return RequestPage(**fields, products=products, products_total=found.products_total)
    return RequestDocument(**fields, products=products)


def _rendition_fields(output_url: str | None, rows: list[RenditionRow]) -> dict:
    """`renditions` and `srcset` of an image whose URL answers with the files `rows`."""
    if not rows or not output_url:
        return {}
    urls, image_srcset = served_links(output_url, ((row.name, row.width) for row in rows))
    return {"renditions": [RenditionModel(format=row.format.lower(), width=row.width, bytes=row.bytes,
                                          url=urls[row.name]) for row in rows if row.role != MAIN],
            "srcset": image_srcset}


def stored_summaries(store: StatusStore, *, statuses: list[RequestStatus] | None = None, limit: int,
                     offset: int = 0) -> tuple[list[RequestSummary], int]:
    """A page of the requests in `statuses` (all when None), newest first, each as its summary view, and how many
    there are in all: from the status store alone (one transaction, the page's counts grouped in SQL at once),
    their links not yet set."""
    views, total = store.request_views(statuses=statuses, limit=limit, offset=offset)
    return [_summary(view) for view in views], total


def _summary(found: RequestView) -> RequestSummary:
    return RequestSummary(**_head(found), products_total=found.products_total)


def _head(found: RequestView) -> dict:
    """The fields of RequestHead, the links not yet set."""
    request = found.request
    return dict(
        request_id=request.request_id,
        status=request.status,
        created_at=_utc(request.created_at),
        updated_at=_utc(request.updated_at),
        counts=Counts(**found.counts),
        output_csv_url=None,
        report_url="",
        errors=[RowErrorModel(**error) for error in request.shown_errors],
    )
