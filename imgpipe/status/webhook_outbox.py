"""The webhook outbox in the status store (docs/api.md#webhook): each webhook queued once, claimed under a lease
by the process that attempts it, and every attempt recorded.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from imgpipe.status.models import DeliveryRow, OutboxEntry, utcnow


class WebhookOutbox:
    """The status store's statements about webhooks, mixed into `StatusStore` (whose `_transact`, `_execute`,
    `_rows`, `_typed` and `_run` they use)."""

    def enqueue_webhook(self, *, webhook_id: str, request_id: str, url: str, event_type: str,
                        payload: bytes) -> None:
        now = utcnow()
        self._run((
            "INSERT INTO webhook_outbox (webhook_id, request_id, url, event_type, payload, state, created_at,"
            " next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT DO NOTHING",
            [webhook_id, request_id, url, event_type, payload.decode(), now, now],
        ))

    def claim_webhook(self, webhook_id: str, lease_seconds: float) -> OutboxEntry | None:
        """Take a pending entry that is due, pushing its due time out by the lease so that no other
        process attempts it meanwhile; None when it is not due, delivered or given up."""
        now = utcnow()

        def work(con) -> tuple | None:
            row = self._execute(
                con,
                "SELECT webhook_id, request_id, url, event_type, payload, attempts, first_attempt_at"
                " FROM webhook_outbox WHERE webhook_id = ? AND state = 'pending' AND next_attempt_at <= ?",
                [webhook_id, now],
            ).fetchone()
            if row is not None:
                self._execute(
                    con,
                    "UPDATE webhook_outbox SET next_attempt_at = ? WHERE webhook_id = ?",
                    [now + timedelta(seconds=lease_seconds), webhook_id],
                )
            return row

        row = self._transact(work)
        if row is None:
            return None
        return OutboxEntry(row[0], row[1], row[2], row[3], row[4].encode(), int(row[5]), row[6])

    def due_webhook_ids(self, request_id: str | None = None) -> list[str]:
        """Pending webhooks whose next attempt is due: of one request, or of all."""
        rows = self._rows(
            "SELECT webhook_id FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= ?"
            " AND (CAST(? AS VARCHAR) IS NULL OR request_id = ?) ORDER BY next_attempt_at",
            [utcnow(), request_id, request_id],
        )
        return [r["webhook_id"] for r in rows]

    def webhooks_due_again(self, first_attempt_grace: float) -> list[tuple[str, int]]:
        """(webhook_id, attempts made) of pending webhooks that are due and that no run's `webhook` step is about
        to attempt: those attempted before, and those still unattempted `first_attempt_grace` seconds after
        they were queued (their run died first)."""
        now = utcnow()
        rows = self._rows(
            "SELECT webhook_id, attempts FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= ?"
            " AND (attempts > 0 OR created_at <= ?) ORDER BY next_attempt_at",
            [now, now - timedelta(seconds=first_attempt_grace)],
        )
        return [(r["webhook_id"], int(r["attempts"])) for r in rows]

    def record_webhook_attempt(self, entry: OutboxEntry, *, status_code: int | None, error: str | None,
                               attempted_at: datetime, state: str, next_attempt_at: datetime | None) -> None:
        attempt = entry.attempts + 1
        self._run(
            ("INSERT INTO webhook_deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
             [entry.request_id, attempt, entry.url, status_code, error, attempted_at, entry.webhook_id,
              entry.event_type]),
            ("UPDATE webhook_outbox SET state = ?, attempts = ?, first_attempt_at = coalesce(first_attempt_at, ?),"
             " next_attempt_at = ? WHERE webhook_id = ?",
             [state, attempt, attempted_at, next_attempt_at or attempted_at, entry.webhook_id]),
        )

    def webhook_deliveries(self, request_id: str) -> list[DeliveryRow]:
        return self._typed(DeliveryRow, "SELECT * FROM webhook_deliveries WHERE request_id = ?"
                                        " ORDER BY attempted_at, attempt", [request_id])
