"""The status store: requests, products, images and webhook deliveries (contract section 4).

One interface, `StatusStore`, holds every statement and public method; two backends differ only in how a
transaction is opened, how parameters are spelled and how a DataFrame reaches a statement:

- `DuckDBStatusStore` (the default): DuckDB lets one process at a time open the file, so no connection
  outlives an operation: every method opens, works inside one transaction and closes, retrying with jittered
  backoff while another process holds the lock. Readers (the REST API, the contract's checks) get in between
  writes the same way.
- `PostgresStatusStore` (the distributed profile, contract section 11): a short-lived connection per operation
  too, every transaction SERIALIZABLE and run again (with the same jittered backoff) on a serialization failure
  or deadlock, so that read-then-write methods such as `claim_webhook` keep the one-writer-at-a-time guarantees.

`open_status_store` picks the backend from the settings.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import random
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar

import duckdb
import pandas as pd
import psycopg2
import psycopg2.extensions
from psycopg2.extras import execute_values

if TYPE_CHECKING:
    from imgpipe.settings import Settings

T = TypeVar("T")

TERMINAL_STATUSES = frozenset({"completed", "completed_with_errors", "failed", "rejected"})
IMAGE_STATUSES = ("pending", "processing", "compressed", "failed")

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


@dataclass(frozen=True)
class ImageSlot:
    row_number: int
    position: int
    input_url: str


@dataclass(frozen=True)
class ImageResult:
    """The outcome of one unique input URL, applied to every slot that names it."""

    input_url: str
    status: str  # compressed | failed
    output_path: str | None = None
    output_url: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    quality_in: int | None = None
    quality_out: int | None = None
    format_out: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class OutboxEntry:
    webhook_id: str
    request_id: str
    url: str
    event_type: str
    payload: bytes
    attempts: int
    first_attempt_at: datetime | None


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

    def _run(self, *statements: tuple[str, Sequence]) -> None:
        """Several statements in one transaction."""
        def work(con) -> None:
            for sql, params in statements:
                self._execute(con, sql, params)

        self._transact(work)

    # ------------------------------------------------------------------ requests

    def create_request(self, request_id: str, *, source: str, file_name: str | None,
                       webhook_url: str | None, idempotency_key: str | None = None) -> None:
        now = utcnow()
        self._run((
            "INSERT INTO requests (request_id, status, source, file_name, webhook_url, created_at,"
            " updated_at, idempotency_key) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            [request_id, source, file_name, webhook_url, now, now, idempotency_key],
        ))

    def record_rejected(self, request_id: str, *, source: str, file_name: str | None,
                        webhook_url: str | None, errors: list[dict]) -> None:
        now = utcnow()
        summary = f"{len(errors)} problem(s): " + "; ".join(e["message"] for e in errors[:3])
        self._run((
            "INSERT INTO requests (request_id, status, source, file_name, webhook_url, created_at,"
            " updated_at, completed_at, total_images, error, errors_json)"
            " VALUES (?, 'rejected', ?, ?, ?, ?, ?, ?, 0, ?, ?)"
            " ON CONFLICT (request_id) DO UPDATE SET status = 'rejected', updated_at = excluded.updated_at,"
            " completed_at = excluded.completed_at, error = excluded.error, errors_json = excluded.errors_json",
            [request_id, source, file_name, webhook_url, now, now, now, summary, json.dumps(errors)],
        ))

    def get_request(self, request_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM requests WHERE request_id = ?", [request_id])
        return rows[0] if rows else None

    def find_by_idempotency_key(self, key: str) -> dict | None:
        rows = self._rows("SELECT * FROM requests WHERE idempotency_key = ? ORDER BY created_at LIMIT 1", [key])
        return rows[0] if rows else None

    def latest_request_for_file(self, file_name: str) -> dict | None:
        rows = self._rows("SELECT * FROM requests WHERE file_name = ? ORDER BY created_at DESC LIMIT 1", [file_name])
        return rows[0] if rows else None

    def known_request_ids(self, request_ids: Iterable[str]) -> set[str]:
        wanted = list(request_ids)
        if not wanted:
            return set()
        rows = self._rows("SELECT request_id FROM requests WHERE request_id IN (SELECT unnest(?))", [wanted])
        return {r["request_id"] for r in rows}

    def queued_requests(self) -> list[dict]:
        return self._rows(
            "SELECT request_id, generation, source, file_name FROM requests WHERE status = 'queued'"
            " ORDER BY created_at"
        )

    def start_processing(self, request_id: str, run_id: str, manifest) -> None:
        """Record products and image slots (idempotent: a re-executed run keeps finished images) and mark
        the request `processing`. Slots a crashed run left `processing` go back to `pending`."""
        now = utcnow()
        # Set-based inserts from the frame itself: row-by-row inserts cost ~10 ms a slot on this DuckDB.
        slots = manifest[["serial", "product_name", "row_number", "position", "input_url"]]

        def work(con) -> None:
            self._register(con, "manifest_slots", slots)
            self._execute(
                con,
                "INSERT INTO products SELECT DISTINCT ON (row_number) ?, serial, product_name, row_number"
                " FROM manifest_slots ORDER BY row_number ON CONFLICT DO NOTHING",
                [request_id],
            )
            self._execute(
                con,
                "INSERT INTO images (request_id, serial, position, row_number, input_url, status, updated_at)"
                " SELECT ?, serial, position, row_number, input_url, 'pending', ? FROM manifest_slots"
                " ON CONFLICT DO NOTHING",
                [request_id, now],
            )
            self._execute(
                con,
                "UPDATE images SET status = 'pending', updated_at = ? WHERE request_id = ? AND status = 'processing'",
                [now, request_id],
            )
            self._execute(
                con,
                "UPDATE requests SET status = 'processing', run_id = ?, updated_at = ?, total_images = ?,"
                " completed_at = NULL, error = NULL WHERE request_id = ?",
                [run_id, now, len(manifest), request_id],
            )

        self._transact(work)

    def finish_request(self, request_id: str, status: str, error: str | None = None) -> None:
        now = utcnow()
        self._run((
            "UPDATE requests SET status = ?, error = ?, updated_at = ?, completed_at = ? WHERE request_id = ?",
            [status, error, now, now, request_id],
        ))

    def requeue_for_retry(self, request_id: str) -> int:
        """Put a request back in the queue for another run over its images that are not `compressed`;
        returns how many images will be processed again."""
        now = utcnow()

        def work(con) -> int:
            row = self._execute(con, "SELECT status FROM requests WHERE request_id = ?", [request_id]).fetchone()
            if row is None:
                raise KeyError(request_id)
            if row[0] == "rejected":
                raise ValueError(f"request {request_id} was rejected; fix the CSV and upload it again")
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
        batch = pd.DataFrame([asdict(r) for r in results]).astype(
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

    def images(self, request_id: str) -> list[dict]:
        return self._rows(
            "SELECT * FROM images WHERE request_id = ? ORDER BY row_number, position", [request_id]
        )

    def products(self, request_id: str) -> list[dict]:
        return self._rows("SELECT * FROM products WHERE request_id = ? ORDER BY row_number", [request_id])

    def counts(self, request_id: str) -> dict[str, int]:
        rows = self._rows(
            "SELECT status, count(*) AS n FROM images WHERE request_id = ? GROUP BY status", [request_id]
        )
        counts = {status: 0 for status in IMAGE_STATUSES}
        for r in rows:
            counts[r["status"]] = int(r["n"])
        counts["total"] = sum(counts[s] for s in IMAGE_STATUSES)
        return counts

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

    def due_webhook_ids(self) -> list[str]:
        rows = self._rows(
            "SELECT webhook_id FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at",
            [utcnow()],
        )
        return [r["webhook_id"] for r in rows]

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

    def webhook_deliveries(self, request_id: str) -> list[dict]:
        return self._rows(
            "SELECT * FROM webhook_deliveries WHERE request_id = ? ORDER BY attempted_at, attempt", [request_id]
        )


# ---------------------------------------------------------------------------------------------- DuckDB


def _is_lock_conflict(exc: Exception) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


class DuckDBStatusStore(StatusStore):
    """Short-lived DuckDB connections with retry; the schema is created on first use."""

    def __init__(self, path: Path | str, lock_timeout: float = 60.0):
        self.path = Path(path)
        self.lock_timeout = lock_timeout

    def _busy_message(self) -> str:
        return f"{self.path} stayed locked"

    @contextlib.contextmanager
    def _session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection held under an exclusive lock on `<db>.lock`, from connect to close.

        DuckDB's own file lock alone lost an update now and then with eight writing processes (a process could
        open the file while another was still checkpointing it on close); our processes therefore take turns
        through this lock, and DuckDB's lock only has to keep out readers from outside (retried here)."""
        deadline = time.monotonic() + self.lock_timeout
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock_file:
            self._retry(lambda: fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB),
                        lambda exc: isinstance(exc, BlockingIOError), deadline)
            try:
                con = self._retry(lambda: duckdb.connect(str(self.path)),
                                  lambda exc: isinstance(exc, duckdb.IOException) and _is_lock_conflict(exc),
                                  deadline)
                try:
                    yield con
                finally:
                    con.close()
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _transact(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Always read-write: within one process DuckDB refuses a read-only and a read-write connection to the
        same file at once, and across processes either kind takes the whole file anyway."""
        self._ensure_schema()
        with self._session() as con:
            con.begin()
            try:
                result = work(con)
                con.commit()
            except BaseException:
                con.rollback()
                raise
        return result

    def _execute(self, con: duckdb.DuckDBPyConnection, sql: str, params: Sequence = ()) -> duckdb.DuckDBPyConnection:
        return con.execute(sql, list(params))

    def _register(self, con: duckdb.DuckDBPyConnection, name: str, frame: pd.DataFrame) -> None:
        con.register(name, frame)

    def _schema_key(self) -> str:
        return "duckdb:" + str(self.path.resolve())

    def _create_schema(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._session() as con:
            con.execute(SCHEMA)


# ---------------------------------------------------------------------------------------------- PostgreSQL

# SQLSTATEs after which the whole transaction is simply run again: serialization_failure, deadlock_detected.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# Key of the transaction-level advisory lock that serializes schema creation across processes.
SCHEMA_LOCK_KEY = 7_316_248_150_917
# Column types of a DataFrame copied into a temporary table, by `pandas.api.types.infer_dtype`.
_FRAME_SQL_TYPES = {"integer": "BIGINT", "boolean": "BOOLEAN", "floating": "DOUBLE PRECISION",
                    "mixed-integer-float": "DOUBLE PRECISION", "datetime64": "TIMESTAMP", "datetime": "TIMESTAMP"}


def _is_retryable(exc: Exception) -> bool:
    return getattr(exc, "pgcode", None) in RETRYABLE_SQLSTATES


def _plain(value: Any) -> Any:
    """A DataFrame cell as psycopg2 adapts it: None for missing values, Python scalars for NumPy ones."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


class PostgresStatusStore(StatusStore):
    """The same tables in PostgreSQL: a connection per operation, SERIALIZABLE transactions run again on a
    serialization failure or deadlock until `lock_timeout`."""

    CONNECT_TIMEOUT = 10

    def __init__(self, url: str, lock_timeout: float = 60.0):
        self.url = url
        self.lock_timeout = lock_timeout

    def _busy_message(self) -> str:
        params = psycopg2.extensions.parse_dsn(self.url)
        return (f"transactions on PostgreSQL database {params.get('dbname', '?')} at {params.get('host', 'localhost')}"
                " kept failing with serialization failures or deadlocks")

    def _connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(self.url, connect_timeout=self.CONNECT_TIMEOUT, application_name="imgpipe")

    def _transact(self, work: Callable[[psycopg2.extensions.cursor], T]) -> T:
        self._ensure_schema()
        deadline = time.monotonic() + self.lock_timeout
        with contextlib.closing(self._connect()) as con:
            con.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE)

            def attempt() -> T:
                try:
                    with con.cursor() as cur:
                        result = work(cur)
                    con.commit()
                except BaseException:
                    with contextlib.suppress(psycopg2.Error):  # a broken connection must not hide the cause
                        con.rollback()
                    raise
                return result

            return self._retry(attempt, _is_retryable, deadline)

    def _execute(self, con: psycopg2.extensions.cursor, sql: str, params: Sequence = ()) -> psycopg2.extensions.cursor:
        con.execute(sql.replace("%", "%%").replace("?", "%s"), list(params))
        return con

    def _register(self, con: psycopg2.extensions.cursor, name: str, frame: pd.DataFrame) -> None:
        """The frame as a temporary table of the same name, gone at the end of the transaction."""
        columns = ", ".join(
            f'"{column}" {_FRAME_SQL_TYPES.get(pd.api.types.infer_dtype(frame[column], skipna=True), "VARCHAR")}'
            for column in frame.columns)
        con.execute(f'CREATE TEMP TABLE "{name}" ({columns}) ON COMMIT DROP')
        rows = [tuple(_plain(v) for v in row) for row in frame.itertuples(index=False, name=None)]
        execute_values(con, f'INSERT INTO "{name}" VALUES %s', rows, page_size=1000)

    def _schema_key(self) -> str:
        return "postgres:" + self.url

    def _create_schema(self) -> None:
        with contextlib.closing(self._connect()) as con:
            with con, con.cursor() as cur:  # one transaction, committed on leaving
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK_KEY])
                cur.execute(SCHEMA)


def open_status_store(settings: Settings, lock_timeout: float = 60.0) -> StatusStore:
    """PostgreSQL in the distributed profile, DuckDB under IMGPIPE_HOME otherwise."""
    if settings.distributed:
        return PostgresStatusStore(settings.database_url, lock_timeout=lock_timeout)
    return DuckDBStatusStore(settings.db_path, lock_timeout=lock_timeout)
