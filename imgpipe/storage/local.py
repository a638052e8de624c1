"""`LocalStorage`, the embedded default: the folders under IMGPIPE_HOME (see `docs/configuration.md`), images and
outputs under `public/`, served by the REST API."""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

from imgpipe.files import write_atomically
from imgpipe.storage.interface import Storage
from imgpipe.storage.keys import PRIVATE_ROOTS, PUBLIC_ROOTS, RECOMPUTABLE_ROOTS, checked_key, checked_request_id


class LocalStorage(Storage):
    """Folders under IMGPIPE_HOME: `requests/`, `rejected/`, `public/images/`, `public/outputs/`."""

    def __init__(self, home: Path | str, public_base_url: str):
        super().__init__(public_base_url)
        self.home = Path(home)
        # Joined as strings: a re-upload links three files an image, and pathlib's joins cost more CPU than the
        # links themselves (docs/performance.md#re-uploads).
        self._private_base, self._public_base = str(self.home), str(self.home / "public")

    def path(self, key: str) -> Path:
        return Path(self._file(key))

    def _file(self, key: str) -> str:
        key = checked_key(key)
        base = self._public_base if key.split("/", 1)[0] in PUBLIC_ROOTS else self._private_base
        return os.path.join(base, key)

    def location(self, key: str) -> str:
        return self._file(key)

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
        source_path, target_path = self._file(source), self._file(target)
        try:
            os.link(source_path, target_path)  # a new name, the usual case: no reader can have seen another file
            return
        except FileNotFoundError:  # the request's folder is made by its first image (a missing source fails below)
            os.makedirs(os.path.dirname(target_path), exist_ok=True)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # another file system: copied below
                raise
        folder, name = os.path.split(target_path)
        temporary = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
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


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # another file system: a copy is the only way
            raise
        shutil.copyfile(source, target)
