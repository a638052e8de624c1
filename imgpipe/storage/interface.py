"""`Storage`, the interface the pipeline, the intake and the REST API use (`imgpipe.storage.keys` names its files).

It holds everything the implementations share (name checks, keys, URLs, content types); an implementation
(`imgpipe.storage.local`, `imgpipe.storage.s3`) only puts, gets and locates bytes. Public URLs do not depend on the
implementation: the REST API serves both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgpipe.storage.keys import (
    ERRORS_NAME,
    IMAGES,
    REJECTED,
    RENDITIONS_SUFFIX,
    REQUESTS,
    THUMBNAIL_SIDES,
    THUMBS,
    checked_image_name,
    checked_key,
    checked_request_id,
    content_key,
    content_type_of,
    errors_key,
    image_key,
    input_key,
    output_key,
    rejected_key,
    renditions_key,
    thumbnail_key,
)


@dataclass(frozen=True)
class StoredObject:
    path: str  # where the bytes are: an absolute file path, or an s3:// URI
    url: str  # where the public can fetch them


class Storage:
    """The interface the pipeline, the intake and the REST API use. Subclasses implement `_put`, `_get`,
    `_exists` and `location`."""

    def __init__(self, public_base_url: str):
        self.public_base_url = public_base_url.rstrip("/")

    # ------------------------------------------------------------------ what an implementation provides

    def location(self, key: str) -> str:
        """Where the key's bytes are: a file path or an s3:// URI."""
        raise NotImplementedError

    def _put(self, key: str, data: bytes | Path, content_type: str) -> None:
        """Store `data`, bytes or the contents of a local file (an upload too large to read into memory)."""
        raise NotImplementedError

    def _get(self, key: str) -> bytes | None:
        """The bytes, or None when there are none (a missing key, a folder)."""
        raise NotImplementedError

    def _exists(self, key: str) -> bool:
        raise NotImplementedError

    def _link(self, source: str, target: str) -> None:
        """Make `target` hold what `source` holds, without a second copy of the bytes where the storage allows."""
        raise NotImplementedError

    def _delete(self, keys: list[str]) -> None:
        """Remove the keys (missing ones are no error)."""
        raise NotImplementedError

    def _delete_folder(self, root: str, request_id: str) -> None:
        """Remove everything under `root/<request_id>/`."""
        raise NotImplementedError

    def _delete_prefixed(self, prefix: str) -> None:
        """Remove every key that starts with `prefix` (a key's folder and the start of its last part)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ URLs

    def image_url(self, request_id: str, name: str) -> str:
        return f"{self.public_base_url}/images/{checked_request_id(request_id)}/{checked_image_name(name)}"

    def output_csv_url(self, request_id: str) -> str:
        return f"{self.public_base_url}/requests/{checked_request_id(request_id)}/output.csv"

    # ------------------------------------------------------------------ by key

    def read(self, key: str) -> bytes | None:
        return self._get(checked_key(key))

    def exists(self, key: str) -> bool:
        return self._exists(checked_key(key))

    # ------------------------------------------------------------------ typed

    def read_input(self, request_id: str) -> bytes:
        """The accepted upload; FileNotFoundError (an OSError) when it is not there."""
        key = input_key(request_id)
        data = self._get(key)
        if data is None:
            raise FileNotFoundError(f"no input at {self.location(key)}")
        return data

    def keep_input(self, request_id: str, data: bytes) -> None:
        """An accepted upload, the very bytes the intake validated."""
        key = input_key(request_id)
        self._put(key, data, content_type_of(key))

    def keep_rejected(self, request_id: str, file_name: str, data: bytes | Path, errors: bytes) -> None:
        """A rejected upload byte for byte under its own name, beside the `errors` document."""
        self._put(errors_key(request_id), errors, content_type_of(ERRORS_NAME))
        key = rejected_key(request_id, file_name)
        self._put(key, data, content_type_of(key))

    def write_image(self, request_id: str, name: str, data: bytes) -> StoredObject:
        key = image_key(request_id, name)
        self._put(key, data, content_type_of(key))
        return StoredObject(self.location(key), self.image_url(request_id, name))

    def read_image(self, request_id: str, name: str) -> bytes | None:
        return self._get(image_key(request_id, name))

    def write_thumbnails(self, request_id: str, stem: str, before: bytes, after: bytes) -> None:
        for side, data in zip(THUMBNAIL_SIDES, (before, after)):
            key = thumbnail_key(request_id, f"{stem}.{side}.jpg")
            self._put(key, data, content_type_of(key))

    def read_thumbnail(self, request_id: str, name: str) -> bytes | None:
        return self._get(thumbnail_key(request_id, name))

    def write_renditions(self, request_id: str, stem: str, record: bytes) -> None:
        """The record of the renditions of the image `stem` (imgpipe.images.renditions.RenditionSet), written after
        the renditions themselves and before the main output: an image's URL negotiates from it."""
        self._put(renditions_key(request_id, stem), record, "application/json")

    def read_renditions(self, request_id: str, stem: str) -> bytes | None:
        return self._get(renditions_key(request_id, stem))

    # ------------------------------------------------------------------ outputs kept by their input's content

    def keep_content(self, policy_version: int, sha256: str, extension: str, data: bytes, before: bytes,
                     after: bytes) -> None:
        """A compressed image and its thumbnails, by the SHA-256 of the input they were made of. The image is
        written last: its presence says the set is whole."""
        for side, thumbnail in zip(THUMBNAIL_SIDES, (before, after)):
            self._put(content_key(policy_version, f"{sha256}.{side}.jpg"), thumbnail, "image/jpeg")
        key = content_key(policy_version, sha256 + extension)
        self._put(key, data, content_type_of(key))

    def link_content(self, policy_version: int, sha256: str, extension: str, request_id: str,
                     stem: str) -> StoredObject:
        """The kept image (and its thumbnails) as this request's own `images/<request_id>/<stem><extension>`:
        a hard link in folders, a server-side copy in a bucket."""
        for side in THUMBNAIL_SIDES:
            self._link(content_key(policy_version, f"{sha256}.{side}.jpg"),
                       thumbnail_key(request_id, f"{stem}.{side}.jpg"))
        name = stem + extension
        self._link(content_key(policy_version, sha256 + extension), image_key(request_id, name))
        return StoredObject(self.location(image_key(request_id, name)), self.image_url(request_id, name))

    def keep_content_renditions(self, policy_version: int, sha256: str, files: dict[str, bytes],
                                record: bytes) -> None:
        """Renditions of a kept image, by their suffix (`.w480.avif`), and the record of all it has (written last,
        so that it names only files that are there)."""
        for suffix, data in files.items():
            key = content_key(policy_version, sha256 + suffix)
            self._put(key, data, content_type_of(key))
        self._put(content_key(policy_version, sha256 + RENDITIONS_SUFFIX), record, "application/json")

    def read_content_renditions(self, policy_version: int, sha256: str) -> bytes | None:
        return self._get(content_key(policy_version, sha256 + RENDITIONS_SUFFIX))

    def link_content_renditions(self, policy_version: int, sha256: str, suffixes: list[str], request_id: str,
                                stem: str) -> None:
        """Kept renditions as this request's own `images/<request_id>/<stem><suffix>`, as `link_content` does."""
        for suffix in suffixes:
            self._link(content_key(policy_version, sha256 + suffix), image_key(request_id, stem + suffix))

    def delete_content(self, policy_version: int, sha256: str) -> None:
        """A kept image with everything named after it: thumbnails, renditions (of whichever requests), record."""
        record = content_key(policy_version, sha256 + RENDITIONS_SUFFIX)  # checks the hash
        self._delete_prefixed(record.removesuffix(RENDITIONS_SUFFIX) + ".")

    # ------------------------------------------------------------------ retention

    def delete_request(self, request_id: str) -> None:
        """Every file of the request: its input or rejected file, images, thumbnails and output CSV."""
        checked_request_id(request_id)
        for root in (REQUESTS, REJECTED, IMAGES, THUMBS):
            self._delete_folder(root, request_id)
        self._delete([output_key(request_id)])

    def write_output_csv(self, request_id: str, data: bytes) -> StoredObject:
        key = output_key(request_id)
        self._put(key, data, content_type_of(key))
        return StoredObject(self.location(key), self.output_csv_url(request_id))

    def read_output_csv(self, request_id: str) -> bytes | None:
        return self._get(output_key(request_id))

    def has_output_csv(self, request_id: str) -> bool:
        return self._exists(output_key(request_id))
