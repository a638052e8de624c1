"""The status store's interface: every statement and public method, written once (contract section 4).

A backend (`DuckDBStatusStore`, the embedded default; `PostgresStatusStore`, the distributed profile) differs
only in how a transaction is opened, how parameters are spelled and how a DataFrame reaches a statement. Every
method is one short transaction on a connection of its own, so no process holds the database between
operations. Rows come back typed (`imgpipe.status.models`).
"""
from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import asdict, fields
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence, TypeVar

import pandas as pd

from imgpipe.status.models import (
    DeliveryRow,
    ImageResult,
    ImageRow,
    ImageSlot,
    OutboxEntry,
    ProductRow,
    RequestRow,
    RequestStatus,
    image_counts,
)

T = TypeVar("T")
R = TypeVar("R")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id VARCHAR PRIMARY KEY,
    status VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    file_name VARCHAR,
    webhook_url VARCHAR,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    completed_at TIMESTAMP,
    total_images INTEGER,
    error VARCHAR,
    errors_json VARCHAR,
    idempotency_key VARCHAR,
    generation INTEGER NOT NULL DEFAULT 0,
    run_id VARCHAR
);
CREATE TABLE IF NOT EXISTS products (
    request_id VARCHAR NOT NULL,
    serial VARCHAR NOT NULL,
    product_name VARCHAR NOT NULL,
    row_number INTEGER NOT NULL,
    PRIMARY KEY (request_id, row_number)
);
CREATE TABLE IF NOT EXISTS images (
    request_id VARCHAR NOT NULL,
    serial VARCHAR NOT NULL,
    position INTEGER NOT NULL,
    row_number INTEGER NOT NULL,
    input_url VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    output_path VARCHAR,
    output_url VARCHAR,
    bytes_in BIGINT,
    bytes_out BIGINT,
    quality_in INTEGER,
    quality_out INTEGER,
    format_out VARCHAR,
    error VARCHAR,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (request_id, row_number, position)
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    request_id VARCHAR NOT NULL,
    attempt INTEGER NOT NULL,
    url VARCHAR NOT NULL,
    status_code INTEGER,
    error VARCHAR,
    attempted_at TIMESTAMP NOT NULL,
    webhook_id VARCHAR NOT NULL,
    event_type VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    webhook_id VARCHAR PRIMARY KEY,
    request_id VARCHAR NOT NULL,
    url VARCHAR NOT NULL,
    event_type VARCHAR NOT NULL,
    payload VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL,
    first_attempt_at TIMESTAMP,
    next_attempt_at TIMESTAMP NOT NULL
);
"""


def utcnow() -> datetime:
    """Naive UTC, as both stores' TIMESTAMP columns keep it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class StoreBusy(RuntimeError):
    """The database stayed locked by (or kept conflicting with) other processes for longer than the store is
    willing to wait."""


class NotRetryable(ValueError):
    """A retry was asked for a request that cannot take one now; the message says why."""


class StatusStore:
    """Every statement and public method of the status store, written once with `?` placeholders.

    A backend supplies `_transact` (run a function inside one transaction on a fresh connection, retrying
    while the database is busy), `_execute` (one statement; returns something with `fetchone`, `fetchall`
    and `description`), `_register` (make a DataFrame readable by name within the transaction),
    `_schema_key`/`_create_schema` (the schema is created once per process and database) and `_busy_message`."""

    _schema_ready: set[str] = set()
    _schema_lock = threading.Lock()

    lock_timeout: float

    # ------------------------------------------------------------------ backend

    def _transact(self, work: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def _execute(self, con: Any, sql: str, params: Sequence = ()) -> Any:
        raise NotImplementedError

    def _register(self, con: Any, name: str, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def _schema_key(self) -> str:
        raise NotImplementedError

    def _create_schema(self) -> None:
        raise NotImplementedError

    def _busy_message(self) -> str:
        """What StoreBusy says, before "for <lock_timeout> s"."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared machinery

    def _retry(self, attempt: Callable[[], T], busy: Callable[[Exception], bool], deadline: float) -> T:
        """`attempt()` until it does not fail with an exception `busy` accepts, with jittered exponential
        backoff; StoreBusy once `deadline` (time.monotonic) has passed."""
        delay = 0.005
        while True:
            try:
                return attempt()
            except Exception as exc:
                if not busy(exc):
                    raise
                if time.monotonic() > deadline:
                    raise StoreBusy(f"{self._busy_message()} for {self.lock_timeout:.0f} s") from exc
            # Jitter keeps several waiting writers from retrying in lock-step.
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.2)

    def _ensure_schema(self) -> None:
        key = self._schema_key()
        if key in StatusStore._schema_ready:
            return
        with StatusStore._schema_lock:
            if key in StatusStore._schema_ready:
                return
            self._create_schema()
            StatusStore._schema_ready.add(key)

    def _rows(self, sql: str, params: Sequence = ()) -> list[dict]:
        def work(con) -> list[dict]:
            cur = self._execute(con, sql, params)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

        return self._transact(work)

    def _typed(self, cls: type[R], sql: str, params: Sequence = ()) -> list[R]:
        return [cls.from_mapping(row) for row in self._rows(sql, params)]

    def _run(self, *statements: tuple[str, Sequence]) -> None:
        """Several statements in one transaction."""
        def work(con) -> None:
            for sql, params in statements:
                self._execute(con, sql, params)

        self._transact(work)

    # ------------------------------------------------------------------ requests

    def record_accepted(self, request_id: str, *, source: str, file_name: str | None, webhook_url: str | None,
                        manifest: pd.DataFrame, idempotency_key: str | None = None) -> None:
        """A `queued` request with its products and its image slots (all `pending`), in one transaction: what
        the intake validated is what the run processes. Recording the same request again changes nothing."""
        now = utcnow()
        # Set-based inserts from the frame itself: row-by-row inserts cost ~10 ms a slot on DuckDB.
        slots = manifest[["serial", "product_name", "row_number", "position", "input_url"]]

        def work(con) -> None:
            inserted = self._execute(
                con,
                "INSERT INTO requests (request_id, status, source, file_name, webhook_url, created_at, updated_at,"
                " total_images, idempotency_key) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING RETURNING request_id",
                [request_id, str(source), file_name, webhook_url, now, now, len(slots), idempotency_key],
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
        self._run((
            "INSERT INTO requests (request_id, status, source, file_name, webhook_url, created_at,"
            " updated_at, completed_at, total_images, error, errors_json, idempotency_key)"
            " VALUES (?, 'rejected', ?, ?, ?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT DO NOTHING",
            [request_id, str(source), file_name, webhook_url, now, now, now, summary, json.dumps(errors),
             idempotency_key],
        ))

    def get_request(self, request_id: str) -> RequestRow | None:
        rows = self._typed(RequestRow, "SELECT * FROM requests WHERE request_id = ?", [request_id])
        return rows[0] if rows else None

    def find_by_idempotency_key(self, key: str) -> RequestRow | None:
        rows = self._typed(RequestRow, "SELECT * FROM requests WHERE idempotency_key = ? ORDER BY created_at LIMIT 1",
                           [key])
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

    def queued_requests(self) -> list[RequestRow]:
        return self._typed(RequestRow, "SELECT * FROM requests WHERE status = 'queued' ORDER BY created_at")

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
                " completed_at = NULL, error = NULL WHERE request_id = ?",
                [now, request_id],
            )
            (todo,) = self._execute(
                con, "SELECT count(*) FROM images WHERE request_id = ? AND status <> 'compressed'", [request_id]
            ).fetchone()
            return int(todo)

        return self._transact(work)

    # ------------------------------------------------------------------ images

    def manifest(self, request_id: str) -> pd.DataFrame:
        """The request's slots as the intake validated them, in the manifest's columns and order."""
        rows = self._rows(
            "SELECT i.row_number, i.serial, p.product_name, i.position, i.input_url FROM images i"
            " JOIN products p ON p.request_id = i.request_id AND p.row_number = i.row_number"
            " WHERE i.request_id = ? ORDER BY i.row_number, i.position",
            [request_id],
        )
        return pd.DataFrame(rows, columns=["row_number", "serial", "product_name", "position", "input_url"])

    def unfinished_slots(self, request_id: str) -> list[ImageSlot]:
        rows = self._rows(
            "SELECT row_number, position, input_url FROM images WHERE request_id = ? AND status <> 'compressed'"
            " ORDER BY row_number, position",
            [request_id],
        )
        return [ImageSlot(**r) for r in rows]

    def mark_processing(self, request_id: str, input_urls: Sequence[str]) -> None:
        if not input_urls:
            return
        self._run((
            "UPDATE images SET status = 'processing', attempts = attempts + 1, updated_at = ?"
            " WHERE request_id = ? AND status <> 'compressed' AND input_url IN (SELECT unnest(?))",
            [utcnow(), request_id, list(input_urls)],
        ))

    def record_results(self, request_id: str, results: Sequence[ImageResult]) -> None:
        if not results:
            return
        now = utcnow()
        batch = pd.DataFrame([{**asdict(r), "status": str(r.status)} for r in results],
                             columns=[f.name for f in fields(ImageResult)]).astype(
            {column: "Int64" for column in ("bytes_in", "bytes_out", "quality_in", "quality_out")})

        def work(con) -> None:
            self._register(con, "result_batch", batch)
            self._execute(
                con,
                "UPDATE images SET status = r.status, output_path = r.output_path, output_url = r.output_url,"
                " bytes_in = r.bytes_in, bytes_out = r.bytes_out, quality_in = r.quality_in,"
                " quality_out = r.quality_out, format_out = r.format_out, error = r.error, updated_at = ?"
                " FROM result_batch r WHERE images.request_id = ? AND images.input_url = r.input_url"
                " AND images.status <> 'compressed'",
                [now, request_id],
            )
            self._execute(con, "UPDATE requests SET updated_at = ? WHERE request_id = ?", [now, request_id])

        self._transact(work)

    def images(self, request_id: str) -> list[ImageRow]:
        return self._typed(ImageRow, "SELECT * FROM images WHERE request_id = ? ORDER BY row_number, position",
                           [request_id])

    def products(self, request_id: str) -> list[ProductRow]:
        return self._typed(ProductRow, "SELECT * FROM products WHERE request_id = ? ORDER BY row_number",
                           [request_id])

    def counts(self, request_id: str) -> dict[str, int]:
        rows = self._rows("SELECT status FROM images WHERE request_id = ?", [request_id])
        return image_counts(r["status"] for r in rows)

    # ------------------------------------------------------------------ webhook outbox

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
