"""The key of every stored file, the same in both profiles:

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

Keys are built only from a request ID, a checked image name or a kept file name, never from a path a user wrote,
so no upload can name a place outside the storage.
"""
from __future__ import annotations

import re
from pathlib import Path

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

