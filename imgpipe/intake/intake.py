"""One intake path for every upload: the inbox folder (contract section 2).

A folder drop, a REST upload and a UI launch all end as a file in `inbox/`; the inbox sensor calls
`take_inbox`, which gives each file a request ID, validates it and moves it either to
`requests/<id>/input.csv` or to `rejected/<id>/<name>` beside `errors.json`. The inbox and these folders are
local; in the distributed profile the storage (`imgpipe.storage`) also gets the file, before the rename, so
that workers on other machines can read it (the local storage has nothing to add).

Exactly once, also across crashes: the rename out of the inbox is the commit point. `request.json` (who sent
the file, under which name, with which webhook) is written into the destination folder before that rename,
and the database row after it; `recover` records any folder whose row a crash prevented, and removes a
folder whose rename never happened (its file is still in the inbox and will be taken again). A file whose
rename happened is therefore always in the storage too; `recover` puts it there again all the same.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from imgpipe.intake.csv_schema import RowError, UploadRejected, parse_upload
from imgpipe.images.fetcher import FetchLimits, fetch
from imgpipe.files import write_atomically
from imgpipe.settings import Settings
from imgpipe.status.store import StatusStore
from imgpipe.storage import ERRORS_NAME, INPUT_NAME, Storage, open_storage
from imgpipe.images.url_safety import AllowList

TEMPORARY_SUFFIXES = (".tmp", ".part")
REQUEST_META = "request.json"
MAX_SIDECAR_BYTES = 64 * 1024
# Below the 255 bytes most file systems allow in a name.
MAX_KEPT_NAME_BYTES = 200
_SIDECAR_TEXT_FIELDS = ("webhook_url", "request_id", "file_name", "source")


def new_request_id() -> str:
    """Sortable by arrival, unguessable, and safe as a folder name and a Dagster partition key."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def is_candidate(path: Path) -> bool:
    name = path.name
    return (
        path.is_file()
        and not path.is_symlink()  # it would have intake read, keep and report on any file on this machine
        and not name.startswith(".")
        and not name.endswith(TEMPORARY_SUFFIXES)
        and path.suffix.lower() != ".json"
    )


@dataclass(frozen=True)
class IntakeResult:
    request_id: str
    file_name: str
    accepted: bool
    errors: tuple[RowError, ...] = ()


@dataclass(frozen=True)
class Sidecar:
    webhook_url: str | None = None
    request_id: str | None = None  # set by the REST API, which has already recorded the request
    file_name: str | None = None
    source: str = "folder"
    problem: str | None = None


def read_sidecar(csv_path: Path) -> Sidecar:
    path = csv_path.with_suffix(".json")
    if not path.is_file():
        return Sidecar()
    name = _as_text(path.name)
    if path.stat().st_size > MAX_SIDECAR_BYTES:
        return Sidecar(problem=f"sidecar {name} is larger than {MAX_SIDECAR_BYTES} bytes")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        # An escape such as "\udce9" decodes to a lone surrogate, which the database cannot store.
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except ValueError as exc:  # UnicodeError is one
        return Sidecar(problem=f"sidecar {name} is not valid JSON: {exc}")
    for field in _SIDECAR_TEXT_FIELDS:
        if doc.get(field) is not None and not isinstance(doc[field], str):
            return Sidecar(problem=f"sidecar {name}: {field} must be a string")
    return Sidecar(
        webhook_url=doc.get("webhook_url") or None,
        request_id=doc.get("request_id"),
        file_name=doc.get("file_name"),
        source="api" if doc.get("source") == "api" else "folder",
    )


def load_csv_source(settings: Settings, source: str) -> tuple[bytes, str]:
    """A CSV named by a path under IMGPIPE_HOME (nothing outside it) or by an http(s) URL fetched with the
    safe fetcher; returns its bytes and file name."""
    limit = settings.limits.max_csv_bytes
    if source.lower().startswith(("http://", "https://")):
        limits = FetchLimits.from_settings(settings.limits)
        result = fetch(source, allow=AllowList.parse(settings.allow_private_hosts),
                       limits=dataclasses.replace(limits, max_bytes=limit))
        return result.content, Path(urllib.parse.urlsplit(result.url).path).name or "download.csv"
    path = (settings.home / source).resolve()
    if settings.home.resolve() not in path.parents:
        raise ValueError(f"{source!r} is outside IMGPIPE_HOME ({settings.home})")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    if path.stat().st_size > limit:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, the limit is {limit} bytes")
    return path.read_bytes(), path.name


def submit_to_inbox(settings: Settings, data: bytes, sidecar: dict, stem: str) -> Path:
    """Place an upload in the inbox as the contract asks a user to: sidecar first, then the CSV renamed in."""
    settings.ensure_folders()
    write_atomically(settings.inbox / f"{stem}.json", json.dumps(sidecar).encode())
    target = settings.inbox / f"{stem}.csv"
    write_atomically(target, data)
    return target


def enqueue_upload(settings: Settings, store: StatusStore, data: bytes, *, file_name: str, source: str,
                   webhook_url: str | None, idempotency_key: str | None = None) -> str:
    """Record a `queued` request, then hand its file to the inbox under that ID (the REST API and the UI
    launch): the request exists before the sensor ever sees the file, so a status read never misses it."""
    request_id = new_request_id()
    store.create_request(request_id, source=source, file_name=file_name, webhook_url=webhook_url,
                         idempotency_key=idempotency_key)
    sidecar = {"request_id": request_id, "file_name": file_name, "source": source, "webhook_url": webhook_url}
    try:
        submit_to_inbox(settings, data, sidecar, stem=request_id)
    except OSError as exc:
        # Without its file the request would wait forever as `queued`.
        store.finish_request(request_id, "failed", f"the upload could not be stored: {exc}")
        raise
    return request_id


class Intake:
    def __init__(self, settings: Settings, store: StatusStore, storage: Storage | None = None):
        self.settings = settings
        self.store = store
        self.storage = storage or open_storage(settings)

    def take_inbox(self) -> list[IntakeResult]:
        self.settings.ensure_folders()
        self.recover()
        files = sorted((p for p in self.settings.inbox.iterdir() if is_candidate(p)),
                       key=lambda p: (p.stat().st_mtime, p.name))
        return [self.take(path) for path in files]

    def take(self, path: Path) -> IntakeResult:
        sidecar = read_sidecar(path)
        request_id = self._claimed_request_id(sidecar) or new_request_id()
        file_name = Path(sidecar.file_name).name if sidecar.file_name else _as_text(path.name)
        errors = self._validate(path)
        if sidecar.problem:
            errors.insert(0, RowError(row=None, column=None, message=sidecar.problem))
        meta = {"request_id": request_id, "file_name": file_name, "source": sidecar.source,
                "webhook_url": sidecar.webhook_url}
        if errors:
            folder = self.settings.rejected_dir / request_id
            destination = folder / _safe_file_name(file_name)
            error_doc = json.dumps({"request_id": request_id, "file_name": file_name,
                                    "errors": [e.to_dict() for e in errors]}, indent=2).encode()
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(folder / ERRORS_NAME, error_doc)
            keep = partial(self.storage.keep_rejected, request_id, destination.name, path, error_doc)
        else:
            folder = self.settings.requests_dir / request_id
            destination = folder / INPUT_NAME
            folder.mkdir(parents=True, exist_ok=True)
            keep = partial(self.storage.keep_input, request_id, path)
        write_atomically(folder / REQUEST_META, json.dumps(meta).encode())
        # In the storage before the commit point: a crash here leaves the file in the inbox, taken again.
        keep()
        os.replace(path, destination)
        path.with_suffix(".json").unlink(missing_ok=True)
        self._record(meta, errors)
        return IntakeResult(request_id, file_name, accepted=not errors, errors=tuple(errors))

    def _claimed_request_id(self, sidecar: Sidecar) -> str | None:
        """The REST API and the UI launch record their request before the file reaches the inbox; honour
        that ID only when it names such a request that has no file yet, so a sidecar cannot hijack another."""
        rid = sidecar.request_id
        if not rid:
            return None
        row = self.store.get_request(rid)
        if row is None or row["source"] != sidecar.source or row["status"] != "queued":
            return None
        if (self.settings.requests_dir / rid).exists() or (self.settings.rejected_dir / rid).exists():
            return None
        return rid

    def _validate(self, path: Path) -> list[RowError]:
        limit = self.settings.limits.max_csv_bytes
        size = path.stat().st_size
        if size > limit:
            return [RowError(row=None, column=None,
                             message=f"file is {size:,} bytes, more than the limit of {limit:,}")]
        try:
            parse_upload(path.read_bytes(), limits=self.settings.limits)
        except UploadRejected as exc:
            return list(exc.errors)
        return []

    def _record(self, meta: dict, errors: list[RowError]) -> None:
        if errors:
            self.store.record_rejected(meta["request_id"], source=meta["source"], file_name=meta["file_name"],
                                       webhook_url=meta["webhook_url"], errors=[e.to_dict() for e in errors])
        else:
            self.store.create_request(meta["request_id"], source=meta["source"], file_name=meta["file_name"],
                                      webhook_url=meta["webhook_url"])

    def recover(self) -> None:
        """Finish what a crash interrupted between the rename and the database row."""
        folders = [p for base in (self.settings.requests_dir, self.settings.rejected_dir)
                   if base.is_dir() for p in base.iterdir() if p.is_dir()]
        if not folders:
            return
        known = self.store.known_request_ids(p.name for p in folders)
        for folder in folders:
            if folder.name in known:
                continue
            meta_path = folder / REQUEST_META
            if not meta_path.is_file():
                continue
            meta = json.loads(meta_path.read_text())
            if folder.parent == self.settings.requests_dir:
                if (folder / INPUT_NAME).is_file():
                    self.storage.keep_input(folder.name, folder / INPUT_NAME)
                    self._record(meta, [])
                else:
                    shutil.rmtree(folder, ignore_errors=True)
            else:
                kept = folder / _safe_file_name(meta["file_name"])
                if kept.is_file():
                    error_doc = (folder / ERRORS_NAME).read_bytes()
                    self.storage.keep_rejected(folder.name, kept.name, kept, error_doc)
                    doc = json.loads(error_doc)
                    self._record(meta, [RowError(**e) for e in doc["errors"]])
                else:
                    shutil.rmtree(folder, ignore_errors=True)


def _as_text(name: str) -> str:
    """A file name as text the database can store: bytes that were not UTF-8, which Python keeps as lone
    surrogates, become U+FFFD."""
    return re.sub("[\ud800-\udfff]", "\ufffd", name)


def _safe_file_name(name: str) -> str:
    """The dropped file's own name (already without folders), made harmless as a single path component."""
    cleaned = "".join(ch if ch.isprintable() and ch not in "/\\" else "_" for ch in name).strip()
    cleaned = cleaned.encode()[:MAX_KEPT_NAME_BYTES].decode("utf-8", "ignore")
    if cleaned in ("", ".", "..", REQUEST_META, ERRORS_NAME):
        cleaned = f"upload-{cleaned.strip('.') or 'file'}.csv"
    return cleaned
