"""The status store's interface: every statement and public method, written once (contract section 4).

A backend (`DuckDBStatusStore`, the embedded default; `PostgresStatusStore`, the distributed profile) differs
only in how a transaction is opened, how parameters are spelled and how a DataFrame reaches a statement. Every
method is one short transaction on a connection of its own, so no process holds the database between
operations. Rows come back typed (`imgpipe.status.models`).
"""
from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import pandas as pd

from imgpipe.status.idempotency import KEYS_FROM_REQUESTS, KEYS_TABLE, IdempotencyKeys
from imgpipe.status.rendition_rows import RENDITIONS_TABLE, RenditionRows
from imgpipe.status.models import (
    ContentOutput,
    DeliveryRow,
    ImageResult,
    ImageRow,
    ImageSlot,
    OutboxEntry,
    ProductRow,
    RequestRow,
    RequestStatus,
    ReuseCandidate,
    image_counts,
    utcnow,
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
CREATE TABLE IF NOT EXISTS url_validators (
    input_url VARCHAR PRIMARY KEY,
    etag VARCHAR,
    last_modified VARCHAR,
    input_sha256 VARCHAR NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    validated_url VARCHAR
);
CREATE TABLE IF NOT EXISTS content_outputs (
    input_sha256 VARCHAR NOT NULL,
    policy_version INTEGER NOT NULL,
    extension VARCHAR NOT NULL,
    format_out VARCHAR NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    quality_in INTEGER,
    quality_out INTEGER,
    note VARCHAR,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (input_sha256, policy_version)
);
CREATE TABLE IF NOT EXISTS purged_requests (
    request_id VARCHAR PRIMARY KEY,
    purged_at TIMESTAMP NOT NULL
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
""" + KEYS_TABLE + RENDITIONS_TABLE
# Columns added after the first release, as (table, column, type): a database made before them gets them when
# first opened. Only the missing ones are added: an ALTER TABLE locks the table even when it changes nothing,
# which in PostgreSQL deadlocks with other processes' writes.
ADDED_COLUMNS = (
    ("requests", "fresh", "BOOLEAN DEFAULT FALSE"),
    ("images", "obtained", "VARCHAR"),
    ("images", "note", "VARCHAR"),
    ("images", "input_sha256", "VARCHAR"),
    ("images", "download_seconds", "REAL"),
    ("images", "compress_seconds", "REAL"),
    ("requests", "run_key", "VARCHAR"),
    ("requests", "run_key_at", "TIMESTAMP"),
    ("requests", "renditions", "VARCHAR"),
    ("requests", "widths", "VARCHAR"),
)
# Idempotent: a purge interrupted after its first step is done again whole.
_REMEMBER_PURGED = "INSERT INTO purged_requests VALUES (?, ?) ON CONFLICT DO NOTHING"
EXISTING_COLUMNS = ("SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema()")
# The columns of a batch of results (`record_results`): a result's renditions go to a table of their own.
_RESULT_COLUMNS = [f.name for f in fields(ImageResult) if f.name != "renditions"]


def upgrades(before: set[tuple[str, str]], after: set[tuple[str, str]]) -> list[str]:
    """What a database made by an earlier release lacks, given its (table, column) pairs `before` SCHEMA ran and
    `after`: the columns added since (ALTER TABLE), and the keys of its requests in the idempotency table."""
    added = [f"ALTER TABLE {table} ADD COLUMN {column} {kind}" for table, column, kind in ADDED_COLUMNS
             if (table, column) not in after]
    return added + ([KEYS_FROM_REQUESTS] if ("idempotency_keys", "idempotency_key") not in before else [])


class StoreBusy(RuntimeError):
    """The database stayed locked by (or kept conflicting with) other processes for longer than the store is
    willing to wait."""


class NotRetryable(ValueError):
    """A retry was asked for a request that cannot take one now; the message says why."""


class NotPurgeable(ValueError):
    """A purge was asked for a request that has not ended: its run would write files after the purge deleted the
    request's, files that no purge would find any more."""

    def __init__(self, request_id: str, status: str):
        super().__init__(f"request {request_id} is {status}: cancel its run first")


class StatusStore(IdempotencyKeys, RenditionRows):
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

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Operations of this thread inside share what an operation would otherwise open for itself; each is still
        its own transaction. Nothing to share here (a server's connections are cheap); see DuckDBStatusStore."""
        yield

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
        return self._transact(lambda con: _dicts(self._execute(con, sql, params)))

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
                        manifest: pd.DataFrame, idempotency_key: str | None = None, fresh: bool = False,
                        renditions: str | None = None, widths: str | None = None) -> None:
        """A `queued` request with its products and its image slots (all `pending`), in one transaction: what
        the intake validated is what the run processes. Recording the same request again changes nothing.
        `renditions`, `widths`: what it asked for beside the main outputs (None: the settings' default)."""
        now = utcnow()
        # Set-based inserts from the frame itself: row-by-row inserts cost ~10 ms a slot on DuckDB.
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

    def record_results(self, request_id: str, results: Sequence[ImageResult], policy_version: int = 0) -> None:
        """The results of some images, in one transaction: their slots, and for later requests the validators
        and kept outputs of those that carry them (`policy_version`: the image policy they were made under)."""
        if not results:
            return
        now = utcnow()
        # vars, not asdict: asdict deep-copies every field (20 us a result here, against 0.7) for str and int values.
        batch = pd.DataFrame([{**vars(r), "status": str(r.status), "obtained": r.obtained and str(r.obtained)}
                              for r in results], columns=_RESULT_COLUMNS).astype(
            {column: "Int64" for column in ("bytes_in", "bytes_out", "quality_in", "quality_out")})

        def work(con) -> None:
            self._record_renditions(con, request_id, results)
            self._register(con, "result_batch", batch)
            self._execute(
                con,
                # Casts: a column that is NULL in every result reaches PostgreSQL untyped (as text).
                "UPDATE images SET status = r.status, output_path = r.output_path, output_url = r.output_url,"
                " bytes_in = CAST(r.bytes_in AS BIGINT), bytes_out = CAST(r.bytes_out AS BIGINT),"
                " quality_in = CAST(r.quality_in AS INTEGER), quality_out = CAST(r.quality_out AS INTEGER),"
                " format_out = r.format_out, error = r.error, obtained = r.obtained, note = r.note,"
                " input_sha256 = r.input_sha256, download_seconds = CAST(r.download_seconds AS REAL),"
                " compress_seconds = CAST(r.compress_seconds AS REAL), updated_at = ?"
                " FROM result_batch r WHERE images.request_id = ? AND images.input_url = r.input_url"
                " AND images.status <> 'compressed'",
                [now, request_id],
            )
            self._execute(
                con,
                "INSERT INTO url_validators SELECT input_url, etag, last_modified, input_sha256, ?, validated_url"
                " FROM result_batch WHERE kept_extension IS NOT NULL ON CONFLICT (input_url) DO UPDATE SET"
                " etag = excluded.etag, last_modified = excluded.last_modified, input_sha256 = excluded.input_sha256,"
                " updated_at = excluded.updated_at, validated_url = excluded.validated_url",
                [now],
            )
            self._execute(
                con,
                "INSERT INTO content_outputs SELECT DISTINCT ON (input_sha256) input_sha256, ?, kept_extension,"
                " format_out, CAST(bytes_in AS BIGINT), CAST(bytes_out AS BIGINT), CAST(quality_in AS INTEGER),"
                " CAST(quality_out AS INTEGER), note, ? FROM result_batch"
                " WHERE kept_extension IS NOT NULL AND obtained = 'fetched' ORDER BY input_sha256"
                " ON CONFLICT DO NOTHING",
                [policy_version, now],
            )
            self._execute(con, "UPDATE requests SET updated_at = ? WHERE request_id = ?", [now, request_id])

        self._transact(work)

    # ------------------------------------------------------------------ reuse across requests

    def reuse_candidates(self, input_urls: Sequence[str], policy_version: int) -> dict[str, ReuseCandidate]:
        """By URL, what the last successful download of each of `input_urls` left."""
        if not input_urls:
            return {}
        rows = self._rows(
            "SELECT v.input_url, v.etag, v.last_modified, v.validated_url, v.input_sha256, c.extension, c.format_out, c.bytes_in,"
            " c.bytes_out, c.quality_in, c.quality_out, c.note FROM url_validators v LEFT JOIN content_outputs c"
            " ON c.input_sha256 = v.input_sha256 AND c.policy_version = ?"
            " WHERE v.input_url IN (SELECT unnest(?))",
            [policy_version, list(input_urls)],
        )
        return {r["input_url"]: ReuseCandidate(
            r["input_url"], r["etag"], r["last_modified"], r["validated_url"], r["input_sha256"],
            ContentOutput.from_mapping({**r, "policy_version": policy_version}) if r["extension"] else None)
            for r in rows}

    def content_output(self, input_sha256: str, policy_version: int) -> ContentOutput | None:
        rows = self._typed(ContentOutput, "SELECT * FROM content_outputs WHERE input_sha256 = ? AND policy_version = ?",
                           [input_sha256, policy_version])
        return rows[0] if rows else None

    def kept_content(self, policy_version: int) -> set[str]:
        """The SHA-256 of every input whose output is kept under `policy_version`."""
        return {r["input_sha256"] for r in self._rows(
            "SELECT input_sha256 FROM content_outputs WHERE policy_version = ?", [policy_version])}

    def forget_content(self, input_sha256: str, policy_version: int) -> None:
        """A kept output whose files are gone: it is made again next time."""
        self._run(("DELETE FROM content_outputs WHERE input_sha256 = ? AND policy_version = ?",
                   [input_sha256, policy_version]))

    def images(self, request_id: str) -> list[ImageRow]:
        return self._typed(ImageRow, "SELECT * FROM images WHERE request_id = ? ORDER BY row_number, position",
                           [request_id])

    def products(self, request_id: str) -> list[ProductRow]:
        return self._typed(ProductRow, "SELECT * FROM products WHERE request_id = ? ORDER BY row_number",
                           [request_id])

    def counts(self, request_id: str) -> dict[str, int]:
        rows = self._rows("SELECT status FROM images WHERE request_id = ?", [request_id])
        return image_counts(r["status"] for r in rows)

    # ------------------------------------------------------------------ retention

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
            orphans = [ContentOutput.from_mapping(row) for row in _dicts(self._execute(
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

    # ------------------------------------------------------------------ reads for people and dashboards
    # Set-based and paged in SQL: a request of 20,000 images is answered without reading every row of it.

    def request_view(self, request_id: str, *, offset: int = 0, limit: int | None = None,
                     with_products: bool = True) -> RequestView | None:
        """In one transaction: the request row, its images' counts and bytes (grouped in SQL), how many products
        it has and, `with_products`, the products `offset`..`offset + limit` in input order (all from `offset`
        when `limit` is None) with their images. None for an unknown request."""
        def work(con) -> RequestView | None:
            found = _dicts(self._execute(con, "SELECT * FROM requests WHERE request_id = ?", [request_id]))
            if not found:
                return None
            (view,) = self._views_without_products(con, found)
            if not with_products:
                return view
            page = " LIMIT ? OFFSET ?" if limit is not None else " OFFSET ?"
            products = [ProductRow.from_mapping(row) for row in _dicts(self._execute(
                con, "SELECT * FROM products WHERE request_id = ? ORDER BY row_number" + page,
                [request_id, *([limit] if limit is not None else []), offset]))]
            images: list[ImageRow] = []
            if products:
                # Products are read in row order, so their images are those of the rows between the first
                # and the last of the page.
                images = [ImageRow.from_mapping(row) for row in _dicts(self._execute(
                    con,
                    "SELECT * FROM images WHERE request_id = ? AND row_number BETWEEN ? AND ?"
                    " ORDER BY row_number, position",
                    [request_id, products[0].row_number, products[-1].row_number]))]
            return replace(view, products=products, images=images)

        return self._transact(work)

    def request_views(self, *, statuses: Sequence[str] | None = None, limit: int,
                      offset: int = 0) -> tuple[list[RequestView], int]:
        """In one transaction: the requests in `statuses` (every one when none are given), newest first (by
        `created_at`, then `request_id`), `offset`..`offset + limit` of them as `request_view(...,
        with_products=False)` reads each, and how many there are in all."""
        where, params = (" WHERE status IN (SELECT unnest(?))", [[str(s) for s in statuses]]) if statuses else ("", [])

        def work(con) -> tuple[list[RequestView], int]:
            (total,) = self._execute(con, "SELECT count(*) FROM requests" + where, params).fetchone()
            rows = _dicts(self._execute(
                con, "SELECT * FROM requests" + where + " ORDER BY created_at DESC, request_id DESC LIMIT ? OFFSET ?",
                [*params, limit, offset]))
            return self._views_without_products(con, rows), int(total)

        return self._transact(work)

    def _views_without_products(self, con, rows: list[dict]) -> list[RequestView]:
        """The views of the request `rows`: their images' counts and bytes and their products' count, grouped in
        SQL for all of them at once."""
        if not rows:  # PostgreSQL cannot type an empty array
            return []
        request_ids = [row["request_id"] for row in rows]
        groups: dict[str, list[dict]] = {request_id: [] for request_id in request_ids}
        for group in _dicts(self._execute(
                con,
                "SELECT request_id, status, obtained, count(*) AS images, sum(bytes_in) AS bytes_in,"
                " sum(bytes_out) AS bytes_out FROM images WHERE request_id IN (SELECT unnest(?))"
                " GROUP BY request_id, status, obtained ORDER BY request_id, status, obtained",
                [request_ids])):
            groups[group["request_id"]].append(group)
        products_totals = dict(self._execute(
            con, "SELECT request_id, count(*) FROM products WHERE request_id IN (SELECT unnest(?))"
                 " GROUP BY request_id", [request_ids]).fetchall())
        return [RequestView(RequestRow.from_mapping(row), groups[row["request_id"]],
                            int(products_totals.get(row["request_id"], 0)), [], []) for row in rows]

    def requests_updated_since(self, moment: datetime) -> list[RequestRow]:
        """Requests recorded or changed at `moment` or later (naive UTC), oldest first: what `imgpipe up` shows."""
        return self._typed(RequestRow, "SELECT * FROM requests WHERE updated_at >= ? ORDER BY created_at", [moment])

    def image_counts_of(self, request_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """`image_counts` of each of `request_ids` (grouped in SQL); an unknown ID gets none."""
        wanted = list(request_ids)
        if not wanted:
            return {}
        rows = self._rows("SELECT request_id, status, count(*) AS images FROM images"
                          " WHERE request_id IN (SELECT unnest(?)) GROUP BY request_id, status", [wanted])
        groups: dict[str, list[dict]] = {request_id: [] for request_id in wanted}
        for row in rows:
            groups[row["request_id"]].append(row)
        return {request_id: _grouped_counts(rows) for request_id, rows in groups.items()}

    def metrics(self, buckets: Sequence[float]) -> StoreMetrics:
        """What /metrics shows, across every process that writes the store, in one transaction of a few
        aggregate statements; `buckets`: the histograms' upper bounds (seconds), ascending."""
        bounds = [float(bound) for bound in buckets]

        def histogram(column: str) -> str:
            # Cumulative counts, the sum and the count of one duration over the compressed images. The bounds are
            # compared as REAL, the column's own precision: 0.1 kept as REAL is just above the double 0.1.
            return ("SELECT " + ", ".join([f"count(*) FILTER (WHERE {column} <= CAST(? AS REAL))"] * len(bounds))
                    + f", count({column}), coalesce(sum({column}), 0) FROM images WHERE status = 'compressed'")

        def work(con) -> StoreMetrics:
            def grouped(sql: str) -> dict[str, int]:
                return {str(key): int(count) for key, count in self._execute(con, sql).fetchall()}

            def counts(column: str) -> tuple[tuple[int, ...], int, float]:
                row = self._execute(con, histogram(column), bounds).fetchone()
                return tuple(int(n) for n in row[:len(bounds)]), int(row[-2]), float(row[-1])

            bytes_in, bytes_out = self._execute(
                con, "SELECT coalesce(sum(bytes_in), 0), coalesce(sum(bytes_out), 0) FROM images"
                     " WHERE status = 'compressed'").fetchone()
            (oldest_queued,) = self._execute(
                con, "SELECT min(updated_at) FROM requests WHERE status = 'queued'").fetchone()
            return StoreMetrics(
                requests_by_status=grouped("SELECT status, count(*) FROM requests GROUP BY status"),
                images_by_status=grouped("SELECT status, count(*) FROM images GROUP BY status"),
                images_by_obtained=grouped(
                    "SELECT obtained, count(*) FROM images WHERE obtained IS NOT NULL GROUP BY obtained"),
                bytes_in=int(bytes_in), bytes_out=int(bytes_out),
                buckets=tuple(bounds), download_seconds=counts("download_seconds"),
                compress_seconds=counts("compress_seconds"),
                webhook_attempts=grouped(
                    "SELECT CASE WHEN status_code BETWEEN 200 AND 299 THEN 'delivered'"
                    " WHEN status_code BETWEEN 300 AND 399 THEN 'http_3xx'"
                    " WHEN status_code BETWEEN 400 AND 499 THEN 'http_4xx'"
                    " WHEN status_code IS NOT NULL THEN 'http_5xx'"
                    " WHEN error LIKE 'blocked:%' THEN 'blocked' ELSE 'network_error' END, count(*)"
                    " FROM webhook_deliveries GROUP BY 1"),
                oldest_queued_at=oldest_queued, read_at=utcnow(),
                bytes_out_by_format=self._bytes_out_by_format(con))

        return self._transact(work)


def _grouped_counts(groups: Iterable[dict]) -> dict[str, int]:
    """`image_counts` from rows of (`status`, `images`): how many images are in each status."""
    counts = image_counts(())
    for group in groups:
        counts[group["status"]] += int(group["images"])
        counts["total"] += int(group["images"])
    return counts


def _dicts(cursor: Any) -> list[dict]:
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


@dataclass(frozen=True)
class RequestView:
    """A request as `request_view` reads it: `groups` holds one dict per (status, obtained) of its images with
    `images`, `bytes_in` and `bytes_out`; `products` and `images` are the page asked for."""

    request: RequestRow
    groups: list[dict]
    products_total: int
    products: list[ProductRow]
    images: list[ImageRow]

    @property
    def counts(self) -> dict[str, int]:
        return _grouped_counts(self.groups)

    def compressed_total(self, column: str) -> int:
        return sum(int(g[column] or 0) for g in self.groups if g["status"] == "compressed")

    def obtained(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for group in self.groups:
            if group["obtained"]:
                found[group["obtained"]] = found.get(group["obtained"], 0) + int(group["images"])
        return found


@dataclass(frozen=True)
class StoreMetrics:
    """The status store's aggregates for /metrics; each histogram is (cumulative counts per bucket of
    `buckets`, count, sum)."""

    requests_by_status: dict[str, int]
    images_by_status: dict[str, int]
    images_by_obtained: dict[str, int]
    bytes_in: int
    bytes_out: int
    buckets: tuple[float, ...]
    download_seconds: tuple[tuple[int, ...], int, float]
    compress_seconds: tuple[tuple[int, ...], int, float]
    webhook_attempts: dict[str, int]
    oldest_queued_at: datetime | None
    read_at: datetime
    bytes_out_by_format: dict[tuple[str, str], int]  # by (main or rendition, format)
