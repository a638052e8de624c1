"""Where inputs, compressed images and output CSVs live: one interface, two implementations.

Every stored file has a key, the same in both profiles:

    requests/<request_id>/input.csv          an accepted upload
    rejected/<request_id>/<file name>        a rejected upload, byte for byte, beside
    rejected/<request_id>/errors.json        its problems
    images/<request_id>/<name>               a compressed image, and its renditions (`<stem>.w<width>.<ext>`)
    images/<request_id>/<stem>.renditions.json  the record of an image's renditions, which its URL negotiates from
    thumbs/<request_id>/<stem>.before.jpg    the report's thumbnails of an image, before and after
    outputs/<request_id>.csv                 an output CSV
    content/v<policy>/<sha256>.<ext>         a compressed image by its input's SHA-256 (and thumbnails, renditions
                                             and their record beside it), from which a request's images are linked
                                             when the input comes again

`LocalStorage` is the embedded default: the folders of contract section 1 under IMGPIPE_HOME (images and
outputs under `public/`), served by the REST API. `S3Storage` is the distributed profile: the same keys under
`s3://bucket/prefix/` (IMGPIPE_STORAGE_URL) in any S3-compatible store, so that steps on other machines read
and write the same files. Public URLs do not depend on the implementation: the REST API serves both.

`Storage` holds everything the two share (name checks, keys, URLs, content types); an implementation only
puts, gets and locates bytes. Keys are built only from a request ID, a checked image name or a kept file
name, never from a path a user wrote, so no upload can name a place outside the storage.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from imgpipe.files import write_atomically

INPUT_NAME = "input.csv"
ERRORS_NAME = "errors.json"
REQUESTS, REJECTED, IMAGES, THUMBS, OUTPUTS, CONTENT = "requests", "rejected", "images", "thumbs", "outputs", "content"
# The number of parts of a key under each root.
_KEY_SHAPES = {REQUESTS: 3, REJECTED: 3, IMAGES: 3, THUMBS: 3, OUTPUTS: 2, CONTENT: 3}
# Served to the public by the REST API (and so readable by everyone on the machine).
PUBLIC_ROOTS = (IMAGES, THUMBS, OUTPUTS)
# Kept for every request's images: what is served, or can be made again, needs no fsync.
RECOMPUTABLE_ROOTS = (IMAGES, THUMBS, CONTENT)
# What users sent, which may hold anything: readable by imgpipe's own user only. Everything else is made by
# imgpipe to be served, kept outputs included (a request's images are hard links to them, sharing their mode).
PRIVATE_ROOTS = (REQUESTS, REJECTED)
IMAGE_EXTENSIONS = ("jpg", "webp", "png", "gif", "bmp", "avif")
CONTENT_TYPES = {".jpg": "image/jpeg", ".webp": "image/webp", ".png": "image/png", ".gif": "image/gif",
                 ".bmp": "image/bmp", ".avif": "image/avif", ".csv": "text/csv", ".json": "application/json"}
THUMBNAIL_SIDES = ("before", "after")

_REQUEST_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
# What a rendition's name has between its image's stem and its extension (`.w480`), as a pattern.
WIDTH_PATTERN = r"\.w[0-9]{1,5}"
# An image: a main output (`r1-p2.jpg`) or a rendition of one (`r1-p2.w480.avif`).
_IMAGE_NAME = re.compile(rf"[0-9A-Za-z_-]{{1,64}}({WIDTH_PATTERN})?\.({'|'.join(IMAGE_EXTENSIONS)})")
_THUMBNAIL_NAME = re.compile(r"[0-9A-Za-z_-]{1,64}\.(before|after)\.jpg")
_RENDITIONS_NAME = re.compile(r"[0-9A-Za-z_-]{1,64}\.renditions\.json")
_CONTENT_NAME = re.compile(
    rf"[0-9a-f]{{64}}(({WIDTH_PATTERN})?\.({'|'.join(IMAGE_EXTENSIONS)})|\.(before|after)\.jpg|\.renditions\.json)")
RENDITIONS_SUFFIX = ".renditions.json"
MAX_NAME_BYTES = 255


@dataclass(frozen=True)
class StoredObject:
    path: str  # where the bytes are: an absolute file path, or an s3:// URI
    url: str  # where the public can fetch them


def checked_request_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise ValueError(f"not a request ID: {request_id!r}")
    return request_id


def checked_image_name(name: str) -> str:
    if not isinstance(name, str) or not _IMAGE_NAME.fullmatch(name):
        raise ValueError(f"not an image name: {name!r}")
    return name


def checked_file_name(name: str) -> str:
    """A kept file's name: one printable path component that is not the errors document."""
    if (not isinstance(name, str) or name in ("", ".", "..", ERRORS_NAME) or "/" in name or "\\" in name
            or not name.isprintable() or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES):
        raise ValueError(f"not a file name to keep: {name!r}")
    return name


def input_key(request_id: str) -> str:
    return f"{REQUESTS}/{checked_request_id(request_id)}/{INPUT_NAME}"


def rejected_key(request_id: str, file_name: str) -> str:
    return f"{REJECTED}/{checked_request_id(request_id)}/{checked_file_name(file_name)}"


def errors_key(request_id: str) -> str:
    return f"{REJECTED}/{checked_request_id(request_id)}/{ERRORS_NAME}"


def image_key(request_id: str, name: str) -> str:
    return f"{IMAGES}/{checked_request_id(request_id)}/{checked_image_name(name)}"


def thumbnail_key(request_id: str, name: str) -> str:
    if not isinstance(name, str) or not _THUMBNAIL_NAME.fullmatch(name):
        raise ValueError(f"not a thumbnail name: {name!r}")
    return f"{THUMBS}/{checked_request_id(request_id)}/{name}"


def renditions_key(request_id: str, stem: str) -> str:
    name = f"{stem}{RENDITIONS_SUFFIX}"
    if not _RENDITIONS_NAME.fullmatch(name):
        raise ValueError(f"not an image stem: {stem!r}")
    return f"{IMAGES}/{checked_request_id(request_id)}/{name}"


def content_key(policy_version: int, name: str) -> str:
    if not isinstance(name, str) or not _CONTENT_NAME.fullmatch(name):
        raise ValueError(f"not a content name: {name!r}")
    return f"{CONTENT}/v{int(policy_version)}/{name}"


def output_key(request_id: str) -> str:
    return f"{OUTPUTS}/{checked_request_id(request_id)}.csv"


def checked_key(key: str) -> str:
    """Only keys of the shapes above: a known root, no empty, `.` or `..` part, nothing that leaves it."""
    parts = key.split("/") if isinstance(key, str) else []
    if (not parts or _KEY_SHAPES.get(parts[0]) != len(parts)
            or any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts)):
        raise ValueError(f"not a storage key: {key!r}")
    return key


def content_type_of(key: str) -> str:
    return CONTENT_TYPES.get(Path(key).suffix.lower(), "application/octet-stream")


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` as ("bucket", "some/prefix"); the prefix may be empty."""
    parts = urlsplit(url or "")
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    return parts.netloc, parts.path.strip("/")


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

    def has_content(self, policy_version: int, sha256: str, extension: str) -> bool:
        return self._exists(content_key(policy_version, sha256 + extension))

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


class LocalStorage(Storage):
    """Folders under IMGPIPE_HOME: `requests/`, `rejected/`, `public/images/`, `public/outputs/`."""

    def __init__(self, home: Path | str, public_base_url: str):
        super().__init__(public_base_url)
        self.home = Path(home)

    def path(self, key: str) -> Path:
        key = checked_key(key)
        base = self.home / "public" if key.split("/", 1)[0] in PUBLIC_ROOTS else self.home
        return base / key

    def location(self, key: str) -> str:
        return str(self.path(key))

    def _put(self, key: str, data: bytes | Path, content_type: str) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        root = key.split("/", 1)[0]
        # An fsync for what cannot be recomputed; an image can.
        write_atomically(path, data, durable=root not in RECOMPUTABLE_ROOTS, private=root in PRIVATE_ROOTS)

    def _get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def _exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def _link(self, source: str, target: str) -> None:
        source_path, target_path = self.path(source), self.path(target)
        try:
            os.link(source_path, target_path)  # a new name, the usual case: no reader can have seen another file
            return
        except FileNotFoundError:  # the request's folder is made by its first image (a missing source fails below)
            target_path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # another file system: copied below
                raise
        temporary = target_path.with_name(f".{target_path.name}.{secrets.token_hex(4)}.tmp")
        _link_or_copy(source_path, temporary)
        os.replace(temporary, target_path)  # a reader sees the old file or the new one

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)

    def _delete_folder(self, root: str, request_id: str) -> None:
        # The folder itself (its name checked like a key's), with leftovers no key names (an interrupted
        # write's temporary files).
        shutil.rmtree(self.path(f"{root}/{checked_request_id(request_id)}/x").parent, ignore_errors=True)

    def _delete_prefixed(self, prefix: str) -> None:
        path = self.path(prefix)
        # With the temporary files of interrupted writes (`.<name>.<random>.tmp`); one listing of the folder.
        start, temporary = path.name, f".{path.name}"
        try:
            with os.scandir(path.parent) as entries:
                names = [entry.name for entry in entries]
        except (FileNotFoundError, NotADirectoryError, PermissionError):  # nothing there, as glob() finds nothing
            return
        for name in names:
            if name.startswith(start) or (name.startswith(temporary) and name.endswith(".tmp")
                                          and len(name) >= len(temporary) + len(".tmp")):
                (path.parent / name).unlink(missing_ok=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # another file system: a copy is the only way
            raise
        shutil.copyfile(source, target)


class S3Storage(Storage):
    """An S3-compatible bucket: `s3://bucket/prefix/<key>`. The client comes from boto3's default chain (the
    standard AWS_* variables, AWS_ENDPOINT_URL for a server other than AWS), is made on first use, and is
    shared by the threads of a step (boto3 clients are thread-safe; making one is not)."""

    def __init__(self, storage_url: str, public_base_url: str):
        super().__init__(public_base_url)
        self.bucket, self.prefix = split_s3_url(storage_url)
        self._client = None
        self._client_lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import boto3  # only the distributed profile needs it

                    self._client = boto3.session.Session().client("s3")
        return self._client

    def object_key(self, key: str) -> str:
        key = checked_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def _put(self, key: str, data: bytes | Path, content_type: str) -> None:
        if isinstance(data, Path):
            self.client.upload_file(str(data), self.bucket, self.object_key(key),
                                    ExtraArgs={"ContentType": content_type})
        else:
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data,
                                   ContentType=content_type)

    def _get(self, key: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        with answer["Body"] as body:
            return body.read()

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def _link(self, source: str, target: str) -> None:
        self.client.copy_object(Bucket=self.bucket, Key=self.object_key(target),
                                CopySource={"Bucket": self.bucket, "Key": self.object_key(source)})

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # the most one DeleteObjects call takes
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self.object_key(key)} for key in keys[start:start + 1000]], "Quiet": True})

    def _delete_folder(self, root: str, request_id: str) -> None:
        self._delete_listed(self.object_key(f"{root}/{checked_request_id(request_id)}/x")[:-1])

    def _delete_prefixed(self, prefix: str) -> None:
        self._delete_listed(self.object_key(prefix))

    def _delete_listed(self, object_prefix: str) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=object_prefix):
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})


def _is_missing(exc: Exception) -> bool:
    """A botocore ClientError for a key that is not there (GET says NoSuchKey, HEAD only 404)."""
    error = getattr(exc, "response", None)
    code = error.get("Error", {}).get("Code") if isinstance(error, dict) else None
    return code in ("NoSuchKey", "404", "NotFound")
