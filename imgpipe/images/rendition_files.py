"""A request's renditions into the storage (issue #25), beside its images and, for reuse, beside the kept outputs.

Each image's renditions are written before its main output, then the record its URL negotiates from
(`<stem>.renditions.json`): a reader that finds the main output finds everything it may be answered with. A kept
output (`content/v<policy>/<sha256>...`) keeps the renditions every request made of it, and a record of what
has been made (kept or not) with which encoder settings; a request whose spec that record covers links them, one
asking for more makes the image again (imgpipe.images.batch).
"""
from __future__ import annotations

from imgpipe.images.image_policy import POLICY_VERSION, CompressedImage
from imgpipe.images.renditions import RenditionSet, RenditionSpec, encoder_settings, rendition_suffix
from imgpipe.status.models import RenditionRow
from imgpipe.storage.interface import Storage


class RequestRenditions:
    """The renditions `spec` asks of the images of `request_id`, in `storage`."""

    def __init__(self, storage: Storage, request_id: str, spec: RenditionSpec):
        self.storage = storage
        self.request_id = request_id
        self.spec = spec

    def store(self, image: CompressedImage, stem: str, input_url: str) -> tuple[RenditionRow, ...]:
        """`image`'s renditions as the request's own files (not kept for reuse)."""
        for rendition in image.renditions:
            self.storage.write_image(self.request_id, stem + rendition_suffix(rendition.format, rendition.width),
                                     rendition.data)
        return self._publish(self._record(image), stem, input_url)

    def keep_and_link(self, image: CompressedImage, sha256: str, stem: str, input_url: str) -> tuple[RenditionRow, ...]:
        """`image`'s renditions kept by its input's SHA-256 (beside what earlier requests made of it), then
        linked as the request's own."""
        made = self._record(image)
        kept = self.kept_record(sha256)
        self.storage.keep_content_renditions(
            POLICY_VERSION, sha256, {rendition_suffix(r.format, r.width): r.data for r in image.renditions},
            (kept.merged(made) if kept else made).to_json())
        return self.link(made, sha256, stem, input_url)

    def kept_for_request(self, sha256: str, jpeg_quality: int | None) -> RenditionSet | None:
        """What is kept of the input `sha256` for this request, or None when something it asks for has not been
        made (with today's encoder settings for a main output at `jpeg_quality`)."""
        kept = self.kept_record(sha256)
        if kept is None or jpeg_quality is None or not kept.covers(self.spec, encoder_settings(jpeg_quality)):
            return None
        return kept.for_request(self.spec)

    def link(self, record: RenditionSet, sha256: str, stem: str, input_url: str) -> tuple[RenditionRow, ...]:
        """The kept files of `record` as the request's own; an error when one is gone."""
        self.storage.link_content_renditions(POLICY_VERSION, sha256, [f.suffix for f in record.files],
                                             self.request_id, stem)
        return self._publish(record, stem, input_url)

    def kept_record(self, sha256: str) -> RenditionSet | None:
        found = self.storage.read_content_renditions(POLICY_VERSION, sha256)
        try:
            return RenditionSet.from_json(found) if found is not None else None
        except ValueError:  # unreadable: made again, and written anew
            return None

    def _record(self, image: CompressedImage) -> RenditionSet:
        return RenditionSet.of(image.renditions, width=image.width, height=image.height, main_format=image.format,
                               main_bytes=len(image.data), spec=self.spec,
                               encoder=encoder_settings(image.quality_out))

    def _publish(self, record: RenditionSet, stem: str, input_url: str) -> tuple[RenditionRow, ...]:
        """The record the image's URL negotiates from, and its rows for the status store: none for an image
        without renditions (an animation, one narrower than every width), whose URL answers as it always did."""
        if not record.files:
            return ()
        self.storage.write_renditions(self.request_id, stem, record.to_json())
        return tuple(RenditionRow(input_url, c.name, c.format, c.width, c.height, c.bytes, c.role)
                     for c in record.candidates(record.main_name(stem)))
