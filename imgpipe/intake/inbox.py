"""The folder drop (docs/getting-started.md#handing-over-a-csv): files in `inbox/` handed to the one intake,
`take_upload`.

A file is first claimed: its sidecar, then the file itself, are renamed into `inbox/.claimed/<request_id>/`
(a name the inbox never offers), so the bytes validated are the bytes kept, whatever is dropped under the
same name meanwhile, and the sidecar goes with the file it was written for. The rename of the file is the
commit point. Then the claimed bytes go through `take_upload`, and the claim is removed.

Exactly once across crashes: `recover` looks at what claims are left. One without its file was interrupted
before the commit point: its sidecar goes back beside the file, which is still in the inbox. One whose
request is recorded only needs removing. Any other is taken again under its request ID, which `take_upload`
makes harmless.

Each file is fault-isolated: whatever one file or sidecar raises is logged and leaves the others alone.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from imgpipe.backends import Backends
from imgpipe.files import write_atomically
from imgpipe.intake.csv_schema import RowError
from imgpipe.intake.intake import IntakeResult, Upload, as_text, new_request_id, take_upload
from imgpipe.status.models import Source

log = logging.getLogger(__name__)

TEMPORARY_SUFFIXES = (".tmp", ".part")
CLAIMS = ".claimed"
CLAIM_META = "claim.json"
CLAIMED_FILE = "upload"
CLAIMED_SIDECAR = "sidecar.json"
MAX_SIDECAR_BYTES = 64 * 1024


def is_candidate(path: Path) -> bool:
    name = path.name
    return (
        not path.is_symlink()  # it would have intake read, keep and report on any file on this machine
        and path.is_file()
        and not name.startswith(".")
        and not name.endswith(TEMPORARY_SUFFIXES)
        and path.suffix.lower() != ".json"
    )


@dataclass(frozen=True)
class Sidecar:
    webhook_url: str | None = None
    fresh: bool = False
    renditions: str | None = None
    widths: str | None = None
    problem: str | None = None


def read_sidecar(path: Path, shown_name: str) -> Sidecar:
    """`{"webhook_url": ..., "fresh": ..., "renditions": ..., "widths": ...}` from a claimed sidecar; whatever is
    wrong with it becomes its upload's problem. `renditions` and `widths` are comma lists, or JSON lists."""
    if not path.is_file():
        return Sidecar()
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
        if len(raw) > MAX_SIDECAR_BYTES:
            return Sidecar(problem=f"sidecar {shown_name} is larger than {MAX_SIDECAR_BYTES} bytes")
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        # An escape such as "\udce9" decodes to a lone surrogate, which the database cannot store.
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except RecursionError:  # JSON nested thousands deep
        return Sidecar(problem=f"sidecar {shown_name} is not valid JSON: nested too deeply")
    except ValueError as exc:  # UnicodeError and JSONDecodeError are ValueErrors
        return Sidecar(problem=f"sidecar {shown_name} is not valid JSON: {str(exc)[:200]}")
    webhook_url, fresh = doc.get("webhook_url"), doc.get("fresh", False)
    if webhook_url is not None and not isinstance(webhook_url, str):
        return Sidecar(problem=f"sidecar {shown_name}: webhook_url must be a string")
    if not isinstance(fresh, bool):
        return Sidecar(problem=f"sidecar {shown_name}: fresh must be true or false")
    try:
        asked = {key: _comma_list(key, doc.get(key)) for key in ("renditions", "widths")}
    except ValueError as exc:
        return Sidecar(problem=f"sidecar {shown_name}: {exc}")
    return Sidecar(webhook_url=webhook_url or None, fresh=fresh, **asked)


def _comma_list(key: str, value) -> str | None:
    """A sidecar's comma list, given as one or as a JSON list of strings or numbers (checked by the intake)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return ",".join(map(str, value))
    raise ValueError(f"{key} must be a comma list or a JSON list")


class Inbox:
    """Takes the files of the settings' inbox folder, at most `max_files` or `max_seconds` per call (a sensor
    tick must end well within Dagster's 60 s); what is left waits for the next call."""

    def __init__(self, backends: Backends, *, max_files: int = 100, max_seconds: float = 20.0):
        self.backends = backends
        self.max_files = max_files
        self.max_seconds = max_seconds
        self.claims = backends.settings.inbox / CLAIMS

    def take(self) -> list[IntakeResult]:
        started = time.monotonic()
        self.backends.settings.ensure_folders()
        results = self.recover()
        for path in self._candidates():
            if len(results) >= self.max_files or time.monotonic() - started > self.max_seconds:
                break
            try:
                claim = self._claim(path)
                if claim is not None:
                    results.append(self._take_claim(claim))
            except Exception:  # noqa: BLE001 - one file's failure must not stop the others
                log.exception("could not take %s from the inbox; it is tried again on the next pass", path.name)
        return results

    def recover(self) -> list[IntakeResult]:
        """Finish or undo the claims an interruption left behind."""
        if not self.claims.is_dir():
            return []
        folders = [p for p in self.claims.iterdir() if p.is_dir()]
        known = self.backends.store.known_request_ids(p.name for p in folders)
        results = []
        for folder in folders:
            try:
                if folder.name in known:
                    shutil.rmtree(folder)
                elif (folder / CLAIMED_FILE).is_file():
                    results.append(self._take_claim(folder))
                else:
                    self._unclaim(folder)
            except Exception:  # noqa: BLE001
                log.exception("could not recover the inbox claim %s; it is tried again on the next pass", folder.name)
        return results

    def _candidates(self) -> list[Path]:
        entries = []
        for path in self.backends.settings.inbox.iterdir():
            try:
                if is_candidate(path):
                    entries.append((path.stat().st_mtime, path.name, path))
            except OSError:  # gone since it was listed
                continue
        return [path for _, _, path in sorted(entries)]

    def _claim(self, path: Path) -> Path | None:
        folder = self.claims / new_request_id()
        folder.mkdir(parents=True)
        write_atomically(folder / CLAIM_META, json.dumps({"file_name": as_text(path.name)}).encode())
        sidecar = path.with_suffix(".json")
        if sidecar.is_file() and not sidecar.is_symlink():
            os.replace(sidecar, folder / CLAIMED_SIDECAR)
        try:
            os.replace(path, folder / CLAIMED_FILE)  # the commit point
        except FileNotFoundError:  # taken or removed since it was listed
            self._unclaim(folder)
            return None
        return folder

    def _take_claim(self, folder: Path) -> IntakeResult:
        file_name = json.loads((folder / CLAIM_META).read_text())["file_name"]
        sidecar = read_sidecar(folder / CLAIMED_SIDECAR, f"{Path(file_name).stem}.json")
        upload = Upload(folder / CLAIMED_FILE, file_name, Source.FOLDER, webhook_url=sidecar.webhook_url,
                        fresh=sidecar.fresh, renditions=sidecar.renditions, widths=sidecar.widths,
                        problems=(RowError(None, None, sidecar.problem),) if sidecar.problem else ())
        result = take_upload(self.backends, upload, request_id=folder.name)
        shutil.rmtree(folder)
        return result

    def _unclaim(self, folder: Path) -> None:
        """Undo a claim that never reached its commit point: its sidecar goes back beside its file."""
        sidecar = folder / CLAIMED_SIDECAR
        if sidecar.is_file() and (folder / CLAIM_META).is_file():
            stem = Path(json.loads((folder / CLAIM_META).read_text())["file_name"]).stem
            target = self.backends.settings.inbox / f"{stem}.json"
            if not target.exists():
                os.replace(sidecar, target)
        shutil.rmtree(folder)
