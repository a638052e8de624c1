"""Idempotency keys in the status store (docs/api.md#rest-api): one key names one request, however many API
processes receive it at once.

An upload with a key first claims the key for the request ID it is about to record (`claim_idempotency_key`: the
key is the table's primary key, so of several claims at once exactly one inserts it). Only the claimant takes the
upload; the others wait for its request and answer as it did (`imgpipe.intake.intake.take_upload_once`). The
transaction that records a request with a key checks that the key still names that request, so no key ever names
two requests, whatever happens to a claim meanwhile. A claim whose intake failed is given back at once
(`release_idempotency_key`); one whose intake died before recording its request (a killed process) is taken over
by the next upload with the key once it has expired.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from imgpipe.status.models import utcnow

KEYS_TABLE = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idempotency_key VARCHAR PRIMARY KEY,
    request_id VARCHAR NOT NULL,
    claimed_at TIMESTAMP NOT NULL
);
"""
# Before this table, keys were kept only in `requests.idempotency_key`, and API processes sharing a store could give
# one key several requests: each key goes to its first request, the one earlier releases answered with.
KEYS_FROM_REQUESTS = (
    "INSERT INTO idempotency_keys SELECT DISTINCT ON (idempotency_key) idempotency_key, request_id, created_at"
    " FROM requests WHERE idempotency_key IS NOT NULL ORDER BY idempotency_key, created_at")
_UNRECORDED = "NOT EXISTS (SELECT 1 FROM requests r WHERE r.request_id = idempotency_keys.request_id)"


class KeyTaken(RuntimeError):
    """The idempotency key names another request: recording this one with it would give the key two."""

    def __init__(self, key: str, owner: str):
        super().__init__(f"Idempotency-Key {key[:100]!r} names request {owner}")


class IdempotencyKeys:
    """The status store's statements about idempotency keys, mixed into `StatusStore` (whose `_transact` and
    `_execute` they use)."""

    def claim_idempotency_key(self, key: str, request_id: str, expiry: timedelta) -> str:
        """The request ID that `key` names once this transaction commits: `request_id` when the key is new, or when
        the request that claimed it was not recorded within `expiry`; otherwise the first claimant's, whether or not
        its request is recorded yet."""
        now = utcnow()
        return self._transact(lambda con: self._claim(con, key, request_id, now, expired_before=now - expiry))

    def release_idempotency_key(self, key: str, request_id: str) -> None:
        """Give back a claim whose intake failed before recording its request, so that a retry is taken at once."""
        self._transact(lambda con: self._execute(
            con, f"DELETE FROM idempotency_keys WHERE idempotency_key = ? AND request_id = ? AND {_UNRECORDED}",
            [key, request_id]))

    def _hold_idempotency_key(self, con: Any, key: str, request_id: str, now: datetime) -> None:
        """Inside the transaction that records `request_id` with `key`: the key must name this request (it is claimed
        here for a caller that did not claim it first); KeyTaken, and nothing recorded, when it names another."""
        owner = self._claim(con, key, request_id, now)
        if owner != request_id:
            raise KeyTaken(key, owner)

    def _claim(self, con: Any, key: str, request_id: str, now: datetime,
               expired_before: datetime | None = None) -> str:
        self._execute(con, "INSERT INTO idempotency_keys VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                      [key, request_id, now])
        if expired_before is not None:
            self._execute(con, "UPDATE idempotency_keys SET request_id = ?, claimed_at = ?"
                               f" WHERE idempotency_key = ? AND claimed_at < ? AND {_UNRECORDED}",
                          [request_id, now, key, expired_before])
        (owner,) = self._execute(con, "SELECT request_id FROM idempotency_keys WHERE idempotency_key = ?",
                                 [key]).fetchone()
        return owner
