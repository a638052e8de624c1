"""The one intake of an upload, whichever way it came (REST API, CLI through the API, Launchpad, folder drop).

`take_upload` validates the bytes once, puts them in the storage (the input, or the rejected file beside its
`errors.json`), then records the request: `queued` with every product and image slot, or `rejected` with its
problems. In that order, so that a request a reader can see always has its file, and so that doing it again
with the same request ID after a crash changes nothing (each write replaces or skips what is there). The
manifest recorded here is what the run processes: the CSV is parsed once per request.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

from imgpipe.backends import Backends
from imgpipe.images.renditions import RenditionSpecError, canonical, parse_formats, parse_widths
from imgpipe.intake.csv_schema import RowError, UploadRejected, parse_upload
from imgpipe.settings import Limits
from imgpipe.status.idempotency import KeyTaken
from imgpipe.status.models import RequestRow, Source
from imgpipe.status.store import StatusStore
from imgpipe.storage.keys import ERRORS_NAME
from imgpipe.text import printable

# Below the 255 bytes most file systems allow in a name.
MAX_KEPT_NAME_BYTES = 200
DEFAULT_FILE_NAME = "upload.csv"
# How long an upload whose Idempotency-Key another upload has claimed waits for that one's request to be recorded:
# validating, keeping and recording a CSV of the largest size allowed takes a few seconds.
KEY_WAIT_SECONDS = 10.0
# A claimed key whose request is still not recorded this long after was left by an intake that died (a killed
# process): the next upload with the key takes it over.
KEY_CLAIM_EXPIRY = timedelta(minutes=2)


# The webhook URL rule, one pattern for the API's document and for the check of every entry (which adds, with
# `urlsplit`: a host and a valid port): http(s)://, then only characters RFC 3986 allows in a URI (no spaces,
# controls or non-ASCII: those must be percent-encoded). Empty means none.
_URI_CHARS = r"A-Za-z0-9\-._~%!$&'()*+,;=:@\[\]"
WEBHOOK_URL_PATTERN = rf"^(?:https?://[{_URI_CHARS}]+(?:[/?#][{_URI_CHARS}/?#]*)?)?$"
_WEBHOOK_URL_RULE = re.compile(WEBHOOK_URL_PATTERN)


def new_request_id() -> str:
    """Sortable by arrival, unguessable, and safe as a folder name and a Dagster partition key."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Upload:
    """A CSV handed over, with what came with it. `content` is its bytes, or the path of a file too large to
    read whole (the intake then only keeps it). `problems` were found before the CSV was read (a bad
    sidecar) and reject the upload with the CSV's own."""

    content: bytes | Path
    file_name: str
    source: Source
    webhook_url: str | None = None
    idempotency_key: str | None = None
    fresh: bool = False  # fetch and encode every image again, whatever earlier requests left
    # Asked for beside the main outputs, as comma lists (imgpipe.images.renditions); None: the settings' default.
    renditions: str | None = None
    widths: str | None = None
    problems: tuple[RowError, ...] = ()


@dataclass(frozen=True)
class IntakeResult:
    request_id: str
    file_name: str
    accepted: bool
    errors: tuple[RowError, ...] = ()


def take_upload(backends: Backends, upload: Upload, request_id: str | None = None) -> IntakeResult:
    """Validate, keep and record one upload (within the limits of the settings); `request_id` is given when an
    earlier attempt was interrupted."""
    store, storage, limits = backends.store, backends.storage, backends.settings
    request_id = request_id or new_request_id()
    file_name = as_text(upload.file_name)
    # What the status store and errors.json show: control characters escaped (PostgreSQL refuses a NUL).
    shown_name = printable(file_name, MAX_KEPT_NAME_BYTES)
    errors = [*upload.problems, *webhook_url_problems(upload.webhook_url or "", limits.max_url_length),
              *rendition_problems(upload.renditions, upload.widths)]
    data = _readable(upload.content, limits)
    manifest = None
    if data is None:
        size = upload.content.stat().st_size
        errors.append(RowError(None, None, f"file is {size:,} bytes, more than the limit of {limits.max_csv_bytes:,}"))
    else:
        try:
            manifest = parse_upload(data, limits=limits)
        except UploadRejected as exc:
            errors += exc.errors
    if errors:
        error_doc = json.dumps({"request_id": request_id, "file_name": shown_name,
                                "errors": [e.to_dict() for e in errors]}, indent=2).encode()
        storage.keep_rejected(request_id, kept_name(file_name), upload.content, error_doc)
        store.record_rejected(request_id, source=upload.source, file_name=shown_name, webhook_url=upload.webhook_url,
                              errors=[e.to_dict() for e in errors], idempotency_key=upload.idempotency_key)
    else:
        storage.keep_input(request_id, data)
        store.record_accepted(request_id, source=upload.source, file_name=shown_name, webhook_url=upload.webhook_url,
                              manifest=manifest, idempotency_key=upload.idempotency_key, fresh=upload.fresh,
                              renditions=_canonical(upload.renditions, parse_formats),
                              widths=_canonical(upload.widths, parse_widths))
    return IntakeResult(request_id, shown_name, accepted=not errors, errors=tuple(errors))


class KeyPending(RuntimeError):
    """The upload that claimed this Idempotency-Key first has not recorded its request within the wait."""


def take_upload_once(backends: Backends, upload: Upload, *, wait: float = KEY_WAIT_SECONDS,
                     expiry: timedelta = KEY_CLAIM_EXPIRY) -> IntakeResult | RequestRow:
    """`take_upload` of an upload with an idempotency key, once per key however many processes receive it: the key
    is claimed in the status store first, and only the upload that claims it is taken (its IntakeResult). Any other
    gets the key's request (its RequestRow) once it is recorded, waiting up to `wait` seconds for it; KeyPending when
    it is not recorded by then."""
    store, key = backends.store, upload.idempotency_key
    request_id = new_request_id()
    deadline = time.monotonic() + wait
    while True:
        owner = store.claim_idempotency_key(key, request_id, expiry)
        if owner != request_id:
            return _recorded_request(store, owner, deadline)
        try:
            return take_upload(backends, upload, request_id=request_id)
        except KeyTaken:
            # This intake outlived its claim's expiry and another upload took the key over: nothing was
            # recorded, and what was kept goes; the key's request is the other upload's.
            backends.storage.delete_request(request_id)
        except BaseException:
            store.release_idempotency_key(key, request_id)
            raise


def _recorded_request(store: StatusStore, request_id: str, deadline: float) -> RequestRow:
    """The request of the upload that claimed the key, once recorded (one read a poll: the claim cannot expire
    within the wait); KeyPending at `deadline`."""
    pause = 0.02
    while (recorded := store.get_request(request_id)) is None:
        if time.monotonic() >= deadline:
            raise KeyPending(f"request {request_id}, the first with this Idempotency-Key, is still being recorded")
        time.sleep(pause)
        pause = min(pause * 2, 0.25)
    return recorded


def webhook_url_problems(url: str, max_length: int) -> list[RowError]:
    """No problem for an empty URL (none given) or an absolute http(s) URL: WEBHOOK_URL_PATTERN (the document's
    rule), a host and a valid port."""
    if url == "":
        return []
    try:
        parts = urlsplit(url)
        # `.port` raises ValueError on a port that is not a number in range.
        valid = (len(url) <= max_length and _WEBHOOK_URL_RULE.fullmatch(url) is not None and bool(parts.hostname)
                 and parts.port != 0)
    except ValueError:
        valid = False
    if valid:
        return []
    return [RowError(None, "webhook_url",
                     f"webhook_url {url[:100]!r} is not an absolute http(s) URL of at most {max_length} characters "
                     "(spaces and characters outside ASCII percent-encoded)")]


def rendition_problems(renditions: str | None, widths: str | None) -> list[RowError]:
    """Whatever is wrong with the renditions and widths an upload asks for (None: it asks for none, and the
    settings' default applies)."""
    problems = []
    for key, value, parse in (("renditions", renditions, parse_formats), ("widths", widths, parse_widths)):
        try:
            _canonical(value, parse)
        except RenditionSpecError as exc:
            problems.append(RowError(None, key, printable(str(exc))))  # it quotes what was sent
    return problems


def _canonical(value: str | None, parse) -> str | None:
    """`canonical`, of a comma list an upload may leave out (None)."""
    return None if value is None else canonical(value, parse)


def _readable(content: bytes | Path, limits: Limits) -> bytes | None:
    """The upload's bytes; None when a file is over the size limit, so that it is never read into memory."""
    if isinstance(content, bytes):
        return content
    if content.stat().st_size > limits.max_csv_bytes:
        return None
    return content.read_bytes()


def as_text(name: str) -> str:
    """A file name as text: bytes that were not UTF-8, which Python keeps as lone surrogates, become U+FFFD;
    folders a browser or a path sent along are dropped."""
    base = re.sub("[\ud800-\udfff]", "\ufffd", name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return base if base not in ("", ".", "..") else DEFAULT_FILE_NAME


def kept_name(name: str) -> str:
    """The upload's own name (already without folders), made harmless as a single path component."""
    cleaned = "".join(ch if ch.isprintable() and ch not in "/\\" else "_" for ch in name).strip()
    cleaned = cleaned.encode()[:MAX_KEPT_NAME_BYTES].decode("utf-8", "ignore")
    if cleaned in ("", ".", "..", ERRORS_NAME):
        cleaned = f"upload-{cleaned.strip('.') or 'file'}.csv"
    return cleaned
