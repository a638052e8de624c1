"""Links to a request's report (`GET /requests/{id}/report`) that open in a browser without the API token.

Without IMGPIPE_API_TOKEN the report is open like the rest of the API, and its link is the plain path. With a
token, `report_url` is signed as presigned S3 URLs are: `?expires=<unix seconds>&signature=<HMAC>`, the HMAC
(SHA-256, base64url) of the report's path and the expiry, keyed with a key derived from the token. It grants
that path and the thumbnails under it (`<path>/thumbs/<name>`), until it expires, and nothing else: not
another request's report (the path is signed), not the JSON API or the output CSV (only report paths accept a
signature). The unsigned path still needs the token; changing the token revokes every link.

The expiry is rounded up to the next whole day, so the link in a status document stays the same all day long
(a client comparing documents sees no change that is not one) and lives between 7 and 8 days.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time

from imgpipe.settings import Settings
from imgpipe.text import ascii_int

LINK_DAYS = 7
DAY = 86_400
# The derived key: a signature never reveals anything about the token itself, nor can it stand for it.
KEY_PURPOSE = b"imgpipe report links v1"
# A report page and the thumbnails under it; group 1 is the report's own path.
_SIGNABLE = re.compile(r"(/requests/[0-9A-Za-z_-]{1,64}/report)(/thumbs/[^/]+)?")


def report_path(request_id: str) -> str:
    return f"/requests/{request_id}/report"


def report_url(settings: Settings, request_id: str, now: float | None = None) -> str:
    """The report's URL under IMGPIPE_PUBLIC_BASE_URL: signed when a token guards the API."""
    path = report_path(request_id)
    return settings.public_base_url + path + link_query(settings, path, now)


def link_query(settings: Settings, path: str, now: float | None = None) -> str:
    """`?expires=...&signature=...` for `path`, or "" when no token is set."""
    if not settings.api_token:
        return ""
    expires = expiry(time.time() if now is None else now)
    return f"?expires={expires}&signature={signature(settings.api_token, path, expires)}"


def expiry(now: float) -> int:
    return int(math.ceil((now + LINK_DAYS * DAY) / DAY) * DAY)


def signature(token: str, path: str, expires: int) -> str:
    key = hmac.new(token.encode(), KEY_PURPOSE, hashlib.sha256).digest()
    digest = hmac.new(key, f"{path}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signed_scope(path: str) -> str | None:
    """The report path a signature for `path` must be made for; None when `path` takes no signature."""
    match = _SIGNABLE.fullmatch(path)
    return match.group(1) if match else None


def check(token: str, path: str, expires: str | None, given: str | None, now: float | None = None) -> str | None:
    """None when `given` signs `path`'s report until `expires` and that is still ahead; else why not."""
    scope = signed_scope(path)
    if scope is None:
        return "this path takes no signed link"
    if not expires or not given:
        return "the link needs both expires and signature"
    expires_at = ascii_int(expires, max_digits=12)  # Unix seconds
    if expires_at is None:
        return "the link's expires is not a time in Unix seconds"
    if not hmac.compare_digest(signature(token, scope, expires_at).encode(), given.encode("utf-8", "replace")):
        return "the link's signature does not match; ask for the request's report_url again"
    if expires_at <= (time.time() if now is None else now):
        return ("the link expired at " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires_at))
                + "; ask for the request's report_url again")
    return None


def lasting_report_url(output_csv_url: str) -> str:
    """The unsigned report URL beside an output CSV's (`<base>/requests/<id>/output.csv` -> `<base>/requests/<id>
    /report`): for what is kept for good, the `output_csv` asset's metadata in Dagster's event log, where a link
    that expires would go stale. With a token set it wants the token; `report_url` of the status document (the
    CLI, `imgpipe up`) is the link that opens in a browser."""
    base, _, _ = output_csv_url.rpartition("/")
    return f"{base}/report"
