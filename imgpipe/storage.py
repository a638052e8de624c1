"""Where inputs, compressed images and output CSVs live.

`LocalStorage` is the embedded default (folders under IMGPIPE_HOME, served by the REST API). Object keys are
built only from the request ID and slot positions, never from user text, so no upload can name a path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from imgpipe.files import write_atomically
from imgpipe.intake import INPUT_NAME

_REQUEST_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_IMAGE_NAME = re.compile(r"^[0-9A-Za-z_-]{1,64}\.(jpg|webp)$")


@dataclass(frozen=True)
class StoredObject:
    path: str  # absolute path (or object URL) of the stored bytes
    url: str  # where the public can fetch it


def checked_request_id(request_id: str) -> str:
    if not _REQUEST_ID.match(request_id):
        raise ValueError(f"not a request ID: {request_id!r}")
    return request_id


class LocalStorage:
    def __init__(self, home: Path | str, public_base_url: str):
        self.home = Path(home)
        self.public_base_url = public_base_url.rstrip("/")

    def read_input(self, request_id: str) -> bytes:
        return (self.home / "requests" / checked_request_id(request_id) / INPUT_NAME).read_bytes()

    def write_image(self, request_id: str, name: str, data: bytes) -> StoredObject:
        if not _IMAGE_NAME.match(name):
            raise ValueError(f"not an image name: {name!r}")
        folder = self.home / "public" / "images" / checked_request_id(request_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / name, data, durable=False)
        return StoredObject(str(folder / name), f"{self.public_base_url}/images/{request_id}/{name}")

    def write_output_csv(self, request_id: str, data: bytes) -> StoredObject:
        folder = self.home / "public" / "outputs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{checked_request_id(request_id)}.csv"
        write_atomically(path, data)
        return StoredObject(str(path), f"{self.public_base_url}/requests/{request_id}/output.csv")
