"""Atomic file writes: a reader sees the old file or the whole new one, never a half-written one."""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

PRIVATE_MODE = 0o600
SHARED_MODE = 0o644


def write_atomically(path: Path, data: bytes | Path, durable: bool = True, private: bool = False) -> None:
    """Write `data` (bytes, or the contents of a file) beside the target under a hidden temporary name, then
    rename over it. `durable` adds an fsync, worth it for intake bookkeeping, not for images that can be
    recomputed; `private` leaves the file readable by its owner only (an upload may hold anything)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE if private else SHARED_MODE)
    try:
        with open(fd, "wb") as f:
            if isinstance(data, Path):
                with open(data, "rb") as source:
                    shutil.copyfileobj(source, f)
            else:
                f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
