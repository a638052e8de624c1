"""The bearer token (IMGPIPE_API_TOKEN): every call but `/healthz` and `/images/...` (and `/metrics` with
IMGPIPE_METRICS_PUBLIC=1) needs `Authorization: Bearer <token>`. Images stay open because their URLs are handed
out in output CSVs. A report page and its thumbnails also open with the `expires` and `signature` of a signed
report link (imgpipe.report_links): a valid one stands for the token there, and nowhere else; a wrong or expired
one is refused like a missing token (401), the message saying which.

An ASGI middleware in front of the routing, so that it guards every path, `/openapi.json` and unknown routes
too (without the token nothing tells which routes exist), and refuses before any body is read.

What it checks is what the route then uses: a request that gives `Authorization`, or a signed link's `expires`
or `signature`, more than once is refused (400), whichever copy would be valid. Otherwise the check could read
one copy and the route (or a proxy on the way) another: the report page would link a signature never checked.
"""
from __future__ import annotations

import hashlib
import hmac

from starlette.datastructures import QueryParams

from imgpipe import report_links
from imgpipe.api.errors import error_response

SCHEME_NAME = "bearerAuth"
SECURITY_SCHEME = {"type": "http", "scheme": "bearer"}
OPEN_PATHS = ("/healthz",)
OPEN_PREFIXES = ("/images/",)
# The query parameters that stand for the token; each may come once at most.
SIGNED_LINK_PARAMETERS = ("expires", "signature")
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
        if scope["type"] != "http" or is_open(path) or path in self.open_paths:
            await self.app(scope, receive, send)
            return
        # Parsed as the route parses it (Starlette's QueryParams), so both see the same parameters.
        query = QueryParams(scope.get("query_string", b""))
        authorization = [value for name, value in scope["headers"] if name.lower() == b"authorization"]
        ambiguous = ambiguity(query, len(authorization))
        if ambiguous:
            await error_response(400, ambiguous)(scope, receive, send)
            return
        if authorization and self._authorized(authorization[0]):
            await self.app(scope, receive, send)
            return
        refused = self._signed_link(query, path)
        if refused is None:
            await self.app(scope, receive, send)
            return
        response = error_response(401, refused or "a valid 'Authorization: Bearer <token>' header is required",
                                  headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _signed_link(self, query: QueryParams, path: str) -> str | None:
        """None when the query signs this report path; "" when it carries no signature (so the token is
        missing); else why the signature is refused."""
        if report_links.signed_scope(path) is None:
            return ""
        expires, signature = query.get("expires"), query.get("signature")
        if expires is None and signature is None:
            return ""
        return report_links.check(self.token, path, expires or "", signature or "")

    def _authorized(self, header: bytes) -> bool:
        credentials = bearer_credentials(header)
        return bool(credentials) and token_matches(credentials, self.token)


def ambiguity(query: QueryParams, authorizations: int) -> str | None:
    """Why a request is ambiguous about its credentials (one of them given more than once), or None."""
    if authorizations > 1:
        return "the Authorization header is given more than once; send it once"
    repeated = [name for name in SIGNED_LINK_PARAMETERS if len(query.getlist(name)) > 1]
    if repeated:
        return f"the query gives {', '.join(repeated)} more than once; send each once"
    return None
