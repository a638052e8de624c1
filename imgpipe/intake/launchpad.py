"""Where the Launchpad's `submit_csv_job` may take a CSV from: a file under `$IMGPIPE_HOME/uploads/`, or an
http(s) URL fetched with the same safe fetcher as images. Nothing else: the home also holds the webhook
secret and every other request's files."""
from __future__ import annotations

import dataclasses
import urllib.parse
from pathlib import Path

from imgpipe.net.download import FetchLimits, fetch
from imgpipe.net.url_safety import AllowList
from imgpipe.settings import Settings


class SourceRefused(ValueError):
    """The CSV cannot be taken from there; the message says why."""


def read_csv_source(settings: Settings, source: str) -> tuple[bytes, str]:
    """The CSV's bytes and file name."""
    limit = settings.max_csv_bytes
    if source.lower().startswith(("http://", "https://")):
        limits = dataclasses.replace(FetchLimits.from_settings(settings), max_bytes=limit)
        result = fetch(source, allow=AllowList.parse(settings.allow_private_hosts), limits=limits)
        return result.content, Path(urllib.parse.urlsplit(result.url).path).name or "download.csv"
    uploads = settings.uploads_dir.resolve()
    path = (uploads / source).resolve()
    if uploads not in path.parents:
        raise SourceRefused(f"{source!r} is not a file under {uploads} (the uploads folder) nor an http(s) URL")
    if not path.is_file():
        raise SourceRefused(f"{path} is not a file")
    size = path.stat().st_size
    if size > limit:
        raise SourceRefused(f"{path} is {size:,} bytes, more than the limit of {limit:,}")
    return path.read_bytes(), path.name
