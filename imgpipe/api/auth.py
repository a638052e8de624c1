"""The bearer token (IMGPIPE_API_TOKEN): every call but `/healthz` and `/images/...` (and `/metrics` with
IMGPIPE_METRICS_PUBLIC=1) needs `Authorization: Bearer <token>`. Images stay open because their URLs are handed
out in output CSVs. A report page and its thumbnails also open with the `expires` and `signature` of a signed
report link (imgpipe.report_links): a valid one stands for the token there, and nowhere else; a wrong or expired
one is refused like a missing token (401), the message saying which.

An ASGI middleware in front of the routing, so that it guards every path, `/openapi.json` and unknown routes
too (without the token nothing tells which routes exist), and refuses before any body is read.
"""
from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs

from imgpipe import report_links
from imgpipe.api.errors import error_response

SCHEME_NAME = "bearerAuth"
SECURITY_SCHEME = {"type": "http", "scheme": "bearer"}
OPEN_PATHS = ("/healthz",)
OPEN_PREFIXES = ("/images/",)
_SPACES = b" \t"


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer_credentials(authorization: bytes) -> bytes | None:
    """The credentials of an `Authorization` value whose scheme is Bearer, in any case (RFC 7235: the
    scheme is case-insensitive); None for another scheme or none."""
    scheme, _, credentials = authorization.strip(_SPACES).partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credentials.strip(_SPACES)


def token_matches(given: bytes, token: str) -> bool:
    """Compared in constant time, over digests so that not even the length shows."""
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(token.encode()).digest())


class BearerAuth:
    def __init__(self, app, token: str, open_paths: tuple[str, ...] = ()):
        self.app = app
        self.token = token
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (scope["type"] != "http" or is_open(path) or path in self.open_paths or self._authorized(scope)):
            await self.app(scope, receive, send)
            return
        refused = self._signed_link(scope, path)
        if refused is None:
            await self.app(scope, receive, send)
            return
        response = error_response(401, refused or "a valid 'Authorization: Bearer <token>' header is required",
                                  headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _signed_link(self, scope, path: str) -> str | None:
        """None when the query signs this report path; "" when it carries no signature (so the token is
        missing); else why the signature is refused."""
        if report_links.signed_scope(path) is None:
            return ""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        expires, signature = query.get("expires"), query.get("signature")
        if expires is None and signature is None:
            return ""
        return report_links.check(self.token, path, (expires or [""])[0], (signature or [""])[0])

    def _authorized(self, scope) -> bool:
        # The first Authorization header counts; a repeated one is not looked at.
        header = next((value for name, value in scope["headers"] if name.lower() == b"authorization"), None)
        credentials = bearer_credentials(header) if header is not None else None
        return bool(credentials) and token_matches(credentials, self.token)
