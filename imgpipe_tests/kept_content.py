"""Whether the storage keeps a compressed image by its input's content: what tests check after a reuse or a purge.
The pipeline never asks; it links a kept image, or makes it again when linking fails."""
from __future__ import annotations

from imgpipe.storage.interface import Storage
from imgpipe.storage.keys import content_key


def has_content(storage: Storage, policy_version: int, sha256: str, extension: str) -> bool:
    return storage.exists(content_key(policy_version, sha256 + extension))
