"""The status document of a request (contract section 6, `GET /requests/{id}`), built from the status store.

One definition of its shape, as pydantic models: the REST API answers with it (and documents it in its OpenAPI
schema), the CLI prints it and waits on it. No HTTP code here.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Optional

from pydantic import BaseModel, Field

from imgpipe.settings import Settings
from imgpipe.status.models import ImageStatus, RequestStatus, image_counts
from imgpipe.status.store import StatusStore
from imgpipe.storage import Storage


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


class ImageModel(BaseModel):
    position: int = Field(ge=1, description="1-based slot within its row.")
    input_url: str
    status: ImageStatus
    output_url: Optional[str]
    error: Optional[str]


class ProductModel(BaseModel):
    serial: str
    product_name: str
    images: list[ImageModel]


class RequestDocument(BaseModel):
    request_id: str
    status: RequestStatus
    created_at: datetime
    updated_at: datetime
    counts: Counts
    output_csv_url: Optional[str] = Field(description="Set once the request has ended with its output CSV.")
    errors: list[RowErrorModel]
    products: list[ProductModel]


def _utc(moment: datetime) -> datetime:
    # The store keeps naive UTC; say so in the answer.
    return moment.replace(tzinfo=timezone.utc)


def request_document(store: StatusStore, storage: Storage, settings: Settings,
                     request_id: str) -> RequestDocument | None:
    """The document of `request_id`; None for an unknown request."""
    document = stored_document(store, request_id)
    return link_output_csv(document, storage, settings) if document is not None else None


def link_output_csv(document: RequestDocument, storage: Storage, settings: Settings) -> RequestDocument:
    """With `output_csv_url` once the request has ended with its CSV in the storage (a file or an object)."""
    if document.status.terminal and storage.has_output_csv(document.request_id):
        return document.model_copy(update={"output_csv_url": settings.output_csv_url(document.request_id)})
    return document


def stored_document(store: StatusStore, request_id: str) -> RequestDocument | None:
    """The document from the status store alone, `output_csv_url` still None."""
    # The request row first: a terminal status is written last, so the images read after it are final.
    request = store.get_request(request_id)
    if request is None:
        return None
    images = store.images(request_id)
    images_by_row: dict[int, list[ImageModel]] = defaultdict(list)
    for image in images:
        images_by_row[image.row_number].append(ImageModel(
            position=image.position, input_url=image.input_url, status=image.status,
            output_url=image.output_url, error=image.error))
    errors = [RowErrorModel(**error) for error in request.errors]
    if request.status is RequestStatus.FAILED and request.error:
        errors.append(RowErrorModel(row=None, column=None, message=request.error))
    return RequestDocument(
        request_id=request_id,
        status=request.status,
        created_at=_utc(request.created_at),
        updated_at=_utc(request.updated_at),
        # Counted from the listed images rather than asked separately, so the two always agree.
        counts=Counts(**image_counts(image.status for image in images)),
        output_csv_url=None,
        errors=errors,
        products=[ProductModel(serial=p.serial, product_name=p.product_name, images=images_by_row[p.row_number])
                  for p in store.products(request_id)],
    )
