"""`GET /images/{request_id}/{name}` (contract section 13): a file from the storage, and for the URL of an image
with renditions, the one that suits the client (imgpipe.images.renditions `negotiate`).

The choice is made from the record the pipeline keeps beside the image's files (`<stem>.renditions.json`), never
from the status store: images are answered at the storage's pace, also while a run holds the store.
"""
from __future__ import annotations

from dataclasses import dataclass

from imgpipe.images.renditions import RenditionSet, main_stem, negotiate
from imgpipe.storage.interface import Storage
from imgpipe.storage.keys import checked_image_name, content_type_of


@dataclass(frozen=True)
class ServedImage:
    data: bytes
    media_type: str
    negotiated: bool  # the URL answers by `Accept`: caches must keep an answer per Accept (`Vary`)


def serve_image(storage: Storage, request_id: str, name: str, accept: str | None,
                width: int | None) -> ServedImage | None:
    """The file `name` of the request, or for an image with renditions the one `negotiate` chooses for `accept`
    and `width`; None when there is none. ValueError for a request ID or name the pipeline never writes."""
    stem = main_stem(checked_image_name(name))  # a name the pipeline never writes costs no read
    record = storage.read_renditions(request_id, stem) if stem else None
    if record is not None:
        renditions = RenditionSet.from_json(record)
        if name == renditions.main_name(stem):
            chosen = negotiate(renditions.candidates(name), accept, width)
            data = storage.read_image(request_id, chosen.name)
            return ServedImage(data, chosen.media_type, negotiated=True) if data is not None else None
    data = storage.read_image(request_id, name)
    return ServedImage(data, content_type_of(name), negotiated=False) if data is not None else None
