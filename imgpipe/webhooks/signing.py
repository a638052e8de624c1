"""Standard Webhooks signatures (docs/api.md#webhook): the secret, the signed headers, and verification.

A secret is `whsec_` + base64 of the key bytes. The signature of a message is
`v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")), so a receiver can check the
body, its ID and its age with any Standard Webhooks library.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from imgpipe.text import ascii_int

SECRET_PREFIX = "whsec_"
SECRET_FILE = "webhook_secret"
USER_AGENT = "imgpipe-webhook/1"


def _key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX):]
    try:
        # Padding is optional, as in the reference libraries.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"webhook secret after {SECRET_PREFIX!r} is not base64: {exc}") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def load_or_create_secret(home: Path, configured: str | None) -> str:
    """The configured secret, else the one kept in `home/webhook_secret`, generated on first use."""
    if configured is not None:
        configured = configured.strip()
        _key(configured)
        return configured
    path = Path(home) / SECRET_FILE
    if not path.exists():
        _create_secret_file(path)
    secret = path.read_text(encoding="ascii").strip()
    try:
        _key(secret)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return secret


def _create_secret_file(path: Path) -> None:
    """Write a new secret so that the file, once it exists, is complete and private, and so that processes
    racing to create it all end up reading one winner's secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secret + "\n")
            out.flush()
            os.fsync(out.fileno())
        # link, unlike rename, fails when the name exists: the first writer wins and nobody overwrites it.
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    return _signature(secret, msg_id, str(timestamp), body)


def _signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    signed_content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed_content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify(secret: str, headers: dict, body: bytes, tolerance: float = 300) -> bool:
    """True when one of the `v1` signatures matches and the timestamp is within `tolerance` seconds of now
    (either way, so a captured message cannot be replayed later)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        return False
    sent_at = ascii_int(timestamp, max_digits=12)  # Unix seconds
    if sent_at is None:
        return False
    if abs(time.time() - sent_at) > tolerance:
        return False
    # The header as sent, not its parsed value, is what the sender signed.
    expected = _signature(secret, msg_id, timestamp, body).encode()
    # Several signatures appear while a sender rotates secrets; any one of them may match.
    return any(hmac.compare_digest(expected, candidate.encode()) for candidate in signatures.split(" "))
