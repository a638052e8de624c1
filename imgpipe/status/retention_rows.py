"""Purging old requests from the status store (docs/operations.md#re-uploads-politeness-and-retention): a request
is remembered as purged before its files are deleted, then its rows go, and with them the kept outputs no other
request uses.
"""
from __future__ import annotations

from datetime import datetime
from typing import Sequence

from imgpipe.status.models import ContentOutput, RequestRow, RequestStatus, row_dicts, utcnow

# Idempotent: a purge interrupted after its first step is done again whole.
_REMEMBER_PURGED = "INSERT INTO purged_requests VALUES (?, ?) ON CONFLICT DO NOTHING"


class NotPurgeable(ValueError):
    """A purge was asked for a request that has not ended: its run would write files after the purge deleted the
    request's, files that no purge would find any more."""

    def __init__(self, request_id: str, status: str):
        super().__init__(f"request {request_id} is {status}: cancel its run first")


class RetentionRows:
    """The status store's statements about purging requests, mixed into `StatusStore` (whose `_transact`,
    `_execute`, `_rows` and `_typed` they use)."""

    def requests_created_before(self, moment: datetime, statuses: Sequence[str]) -> list[RequestRow]:
        return self._typed(RequestRow, "SELECT * FROM requests WHERE created_at < ? AND status IN (SELECT unnest(?))"
                                       " ORDER BY created_at", [moment, [str(s) for s in statuses]])

    def mark_purged(self, request_id: str) -> None:
        """A purge's first step, before the request's files are deleted: its ID remembered as purged, which refuses
        any retry of it from then on (`requeue_for_retry`). NotPurgeable, and nothing marked, when it has not ended;
        read in the same transaction, so no run can start it in between."""
        now = utcnow()

        def work(con) -> None:
            row = self._execute(con, "SELECT status FROM requests WHERE request_id = ?", [request_id]).fetchone()
            if row is None:  # purged meanwhile, or never recorded
                return
            if not RequestStatus(row[0]).terminal:
                raise NotPurgeable(request_id, row[0])
            self._execute(con, _REMEMBER_PURGED, [request_id, now])

        self._transact(work)

    def purge_request(self, request_id: str) -> list[ContentOutput]:
        """Every row of the request gone, its ID remembered as purged; returns the kept outputs that no request
        left uses any more (their rows gone too: their files are the caller's to delete)."""
        now = utcnow()

        def work(con) -> list[ContentOutput]:
            used = [row[0] for row in self._execute(
                con, "SELECT DISTINCT input_sha256 FROM images WHERE request_id = ? AND input_sha256 IS NOT NULL",
                [request_id]).fetchall()]
            for table in ("images", "renditions", "products", "webhook_deliveries", "webhook_outbox",
                          "idempotency_keys", "requests"):
                self._execute(con, f"DELETE FROM {table} WHERE request_id = ?", [request_id])
            self._execute(con, _REMEMBER_PURGED, [request_id, now])
            if not used:  # PostgreSQL cannot type an empty array (`unnest('{}')` is ambiguous)
                return []
            orphans = [ContentOutput.from_mapping(row) for row in row_dicts(self._execute(
                con,
                "SELECT * FROM content_outputs WHERE input_sha256 IN (SELECT unnest(?)) AND input_sha256 NOT IN"
                " (SELECT input_sha256 FROM images WHERE input_sha256 IS NOT NULL)",
                [used]))]
            if orphans:
                self._execute(con, "DELETE FROM content_outputs WHERE input_sha256 IN (SELECT unnest(?))",
                              [[o.input_sha256 for o in orphans]])
            return orphans

        return self._transact(work)

    def purged_at(self, request_id: str) -> datetime | None:
        rows = self._rows("SELECT purged_at FROM purged_requests WHERE request_id = ?", [request_id])
        return rows[0]["purged_at"] if rows else None
