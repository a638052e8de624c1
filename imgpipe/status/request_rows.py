"""Requests in the status store: recorded by the intake (`queued` with every slot, or `rejected` with every
problem), given their run key, started, ended, and queued again for a retry
(docs/operations.md#runs-launched-at-once-started-warm-supervised).
"""
from __future__ import annotations

import json
from typing import Iterable

import pandas as pd

from imgpipe.status.models import RequestRow, RequestStatus, utcnow


class NotRetryable(ValueError):
    """A retry was asked for a request that cannot take one now; the message says why."""


class RequestRows:
    """The status store's statements about requests, mixed into `StatusStore` (whose `_transact`, `_execute`,
    `_register`, `_rows`, `_typed` and `_run` they use, and `_hold_idempotency_key` of `IdempotencyKeys`)."""

    def record_accepted(self, request_id: str, *, source: str, file_name: str | None, webhook_url: str | None,
                        manifest: pd.DataFrame, idempotency_key: str | None = None, fresh: bool = False,
                        renditions: str | None = None, widths: str | None = None) -> None:
        """A `queued` request with its products and its image slots (all `pending`), in one transaction: what
        the intake validated is what the run processes. Recording the same request again changes nothing.
        `renditions`, `widths`: what it asked for beside the main outputs (None: the settings' default)."""
        now = utcnow()
        # Set-based inserts from the frame itself: on DuckDB a statement per slot would dominate a large request.
        slots = manifest[["serial", "product_name", "row_number", "position", "input_url"]]

        def work(con) -> None:
            if idempotency_key is not None:
                self._hold_idempotency_key(con, idempotency_key, request_id, now)
            inserted = self._execute(
                con,
                "INSERT INTO requests (request_id, status, source, file_name, webhook_url, created_at, updated_at,"
                " total_images, idempotency_key, fresh, renditions, widths)"
                " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING request_id",
                [request_id, str(source), file_name, webhook_url, now, now, len(slots), idempotency_key, fresh,
                 renditions, widths],
            ).fetchall()
            if not inserted:
                return
            self._register(con, "manifest_slots", slots)
            self._execute(
                con,
                "INSERT INTO products SELECT DISTINCT ON (row_number) ?, serial, product_name, row_number"
                " FROM manifest_slots ORDER BY row_number",
                [request_id],
            )
            self._execute(
                con,
                "INSERT INTO images (request_id, serial, position, row_number, input_url, status, updated_at)"
                " SELECT ?, serial, position, row_number, input_url, 'pending', ? FROM manifest_slots",
                [request_id, now],
            )

        self._transact(work)

    def record_rejected(self, request_id: str, *, source: str, file_name: str | None,
                        webhook_url: str | None, errors: list[dict], idempotency_key: str | None = None) -> None:
        now = utcnow()
        summary = f"{len(errors)} problem(s): " + "; ".join(e["message"] for e in errors[:3])

        def work(con) -> None:
            if idempotency_key is not None:
                self._hold_idempotency_key(con, idempotency_key, request_id, now)
            self._execute(
                con,
                "INSERT INTO requests (request_id, status, source, file_name, webhook_url, created_at,"
                " updated_at, completed_at, total_images, error, errors_json, idempotency_key)"
                " VALUES (?, 'rejected', ?, ?, ?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT DO NOTHING",
                [request_id, str(source), file_name, webhook_url, now, now, now, summary, json.dumps(errors),
                 idempotency_key])

        self._transact(work)

    def get_request(self, request_id: str) -> RequestRow | None:
        rows = self._typed(RequestRow, "SELECT * FROM requests WHERE request_id = ?", [request_id])
        return rows[0] if rows else None

    def latest_request_for_file(self, file_name: str) -> RequestRow | None:
        rows = self._typed(RequestRow, "SELECT * FROM requests WHERE file_name = ? ORDER BY created_at DESC LIMIT 1",
                           [file_name])
        return rows[0] if rows else None

    def known_request_ids(self, request_ids: Iterable[str]) -> set[str]:
        wanted = list(request_ids)
        if not wanted:
            return set()
        rows = self._rows("SELECT request_id FROM requests WHERE request_id IN (SELECT unnest(?))", [wanted])
        return {r["request_id"] for r in rows}

    def processing_requests(self) -> list[RequestRow]:
        return self._typed(RequestRow, "SELECT * FROM requests WHERE status = 'processing' ORDER BY created_at")

    def queued_requests(self) -> list[RequestRow]:
        return self._typed(RequestRow, "SELECT * FROM requests WHERE status = 'queued' ORDER BY created_at")

    def assign_run_keys(self, run_keys: dict[str, str]) -> set[str]:
        """The run key each queued request (by ID) is launched under, once: a request keeps its key until it is
        queued again (a retry), so that every later launch asks for the same run. Returns the requests this call
        gave a key; one already keyed (by another launcher, however close in time) is left as it is."""
        if not run_keys:
            return set()
        now = utcnow()

        def work(con) -> set[str]:
            return {row[0] for request_id, run_key in run_keys.items() for row in self._execute(
                con, "UPDATE requests SET run_key = ?, run_key_at = ? WHERE request_id = ? AND status = 'queued'"
                     " AND run_key IS NULL RETURNING request_id", [run_key, now, request_id]).fetchall()}

        return self._transact(work)

    def requests_of_run(self, run_key: str) -> list[str]:
        return [r["request_id"] for r in self._rows(
            "SELECT request_id FROM requests WHERE run_key = ? ORDER BY created_at", [run_key])]

    def start_processing(self, request_id: str, run_id: str) -> None:
        """Mark the request `processing` by `run_id`; slots a crashed run left `processing` go back to
        `pending`."""
        now = utcnow()
        self._run(
            ("UPDATE images SET status = 'pending', updated_at = ? WHERE request_id = ? AND status = 'processing'",
             [now, request_id]),
            ("UPDATE requests SET status = 'processing', run_id = ?, updated_at = ?, completed_at = NULL,"
             " error = NULL WHERE request_id = ?", [run_id, now, request_id]),
        )

    def finish_request(self, request_id: str, status: RequestStatus, error: str | None = None) -> None:
        now = utcnow()
        self._run((
            "UPDATE requests SET status = ?, error = ?, updated_at = ?, completed_at = ? WHERE request_id = ?",
            [str(status), error, now, now, request_id],
        ))

    def requeue_for_retry(self, request_id: str) -> int:
        """Put an ended request back in the queue for another run over its images that are not `compressed`;
        returns how many images will be processed again. KeyError for an unknown request, NotRetryable for one
        that was rejected or has not ended (a second run beside the first would fetch every image twice)."""
        now = utcnow()

        def work(con) -> int:
            row = self._execute(con, "SELECT status FROM requests WHERE request_id = ?", [request_id]).fetchone()
            if row is None:
                raise KeyError(request_id)
            status = RequestStatus(row[0])
            if status is RequestStatus.REJECTED:
                raise NotRetryable(f"request {request_id} was rejected; fix the CSV and upload it again")
            if self._execute(con, "SELECT 1 FROM purged_requests WHERE request_id = ?", [request_id]).fetchone():
                raise NotRetryable(f"request {request_id} is being purged")
            if not status.terminal:
                raise NotRetryable(f"request {request_id} is {status}; retry it once it has ended")
            self._execute(
                con,
                "UPDATE images SET status = 'pending', error = NULL, updated_at = ?"
                " WHERE request_id = ? AND status <> 'compressed'",
                [now, request_id],
            )
            self._execute(
                con,
                "UPDATE requests SET status = 'queued', generation = generation + 1, updated_at = ?,"
                " completed_at = NULL, error = NULL, run_key = NULL, run_key_at = NULL WHERE request_id = ?",
                [now, request_id],
            )
            (todo,) = self._execute(
                con, "SELECT count(*) FROM images WHERE request_id = ? AND status <> 'compressed'", [request_id]
            ).fetchone()
            return int(todo)

        return self._transact(work)
