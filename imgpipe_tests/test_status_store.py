"""The status store, on both backends (DuckDB, the default, and PostgreSQL, the distributed profile): the
contract's schema, every method, plain Python values back, and many writers at once with a reader polling; on
PostgreSQL, which refuses a NUL, a request whose image servers answer status lines of NULs and ANSI escapes."""
from __future__ import annotations

import contextlib
import multiprocessing
import uuid
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import psycopg2
import pytest

from imgpipe.backends import Backends, open_status_store
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.output.completion import complete_request
from imgpipe.processing import compress_images
from imgpipe.settings import Settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.models import (ImageResult, ImageSlot, ImageStatus, RenditionRow, RequestRow, RequestStatus,
                                   Source, utcnow)
from imgpipe.status.postgres_store import PostgresStatusStore
from imgpipe.status.request_rows import NotRetryable
from imgpipe.status.retention_rows import NotPurgeable
from imgpipe.status.store import StatusStore, StoreBusy
from imgpipe.storage.local import LocalStorage
from imgpipe_tests.images import save_jpeg
from imgpipe_tests.pipeline import csv_for

CONTRACT_COLUMNS = {
    "requests": {"request_id": "VARCHAR", "status": "VARCHAR", "source": "VARCHAR", "file_name": "VARCHAR",
                 "webhook_url": "VARCHAR", "created_at": "TIMESTAMP", "updated_at": "TIMESTAMP",
                 "completed_at": "TIMESTAMP", "total_images": "INTEGER", "error": "VARCHAR"},
    "products": {"request_id": "VARCHAR", "serial": "VARCHAR", "product_name": "VARCHAR", "row_number": "INTEGER"},
    "images": {"request_id": "VARCHAR", "serial": "VARCHAR", "position": "INTEGER", "input_url": "VARCHAR",
               "status": "VARCHAR", "output_path": "VARCHAR", "output_url": "VARCHAR", "bytes_in": "BIGINT",
               "bytes_out": "BIGINT", "quality_in": "INTEGER", "quality_out": "INTEGER", "error": "VARCHAR",
               "updated_at": "TIMESTAMP"},
    "webhook_deliveries": {"request_id": "VARCHAR", "attempt": "INTEGER", "url": "VARCHAR",
                           "status_code": "INTEGER", "error": "VARCHAR", "attempted_at": "TIMESTAMP"},
}
# information_schema.columns.data_type in PostgreSQL for the contract's (DuckDB's) type names.
POSTGRES_TYPE_NAMES = {"VARCHAR": "character varying", "INTEGER": "integer", "BIGINT": "bigint",
                       "TIMESTAMP": "timestamp without time zone"}


def manifest(n_rows: int, per_row: int, prefix: str = "http://img.example/") -> pd.DataFrame:
    return pd.DataFrame([
        {"row_number": r, "serial": str(r), "product_name": f"P{r}", "position": p,
         "input_url": f"{prefix}{r}-{p}.jpg"}
        for r in range(1, n_rows + 1) for p in range(1, per_row + 1)
    ])


def accept(store: StatusStore, request_id: str, frame: pd.DataFrame | None = None, **fields) -> None:
    fields = {"source": "folder", "file_name": "a.csv", "webhook_url": None, **fields}
    store.record_accepted(request_id, manifest=manifest(2, 2) if frame is None else frame, **fields)


def test_schema_has_the_contract_columns_and_types(store_factory):
    accept(store_factory(), "r1")
    for table, columns in CONTRACT_COLUMNS.items():
        if store_factory.backend == "duckdb":
            con, placeholder = duckdb.connect(store_factory.target, read_only=True), "?"
            expected = columns
        else:
            con, placeholder = psycopg2.connect(store_factory.target), "%s"
            expected = {c: POSTGRES_TYPE_NAMES[t] for c, t in columns.items()}
        try:
            cur = con.cursor()
            cur.execute("SELECT column_name, data_type FROM information_schema.columns"
                        f" WHERE table_name = {placeholder} AND table_schema = current_schema()", [table])
            actual = dict(cur.fetchall())
        finally:
            con.close()
        assert {c: actual.get(c) for c in columns} == expected, table


def test_an_accepted_request_is_queued_with_every_slot_and_recorded_once(store_factory):
    store = store_factory()
    accept(store, "r1", source="api", idempotency_key="k")
    accept(store, "r1", manifest(5, 5), file_name="again.csv")  # an interrupted intake taken again: no-op
    request = store.get_request("r1")
    assert (request.status, request.source, request.file_name, request.total_images) == ("queued", "api", "a.csv", 4)
    assert store.claim_idempotency_key("k", "r-again", timedelta(0)) == "r1"
    assert store.counts("r1") == {"total": 4, "pending": 4, "processing": 0, "compressed": 0, "failed": 0}
    assert [(p.serial, p.product_name, p.row_number) for p in store.products("r1")] == [("1", "P1", 1), ("2", "P2", 2)]
    assert store.manifest("r1").equals(manifest(2, 2)[["row_number", "serial", "product_name", "position",
                                                        "input_url"]])


def test_lifecycle_counts_and_idempotent_start(store_factory):
    store = store_factory()
    accept(store, "r1")
    store.start_processing("r1", "run-1")
    store.record_results("r1", [ImageResult("http://img.example/1-1.jpg", "compressed", bytes_in=10, bytes_out=5)])
    store.mark_processing("r1", ["http://img.example/1-2.jpg"])
    store.start_processing("r1", "run-2")  # a re-executed run: the finished image kept, the interrupted one pending
    assert store.counts("r1") == {"pending": 3, "processing": 0, "compressed": 1, "failed": 0, "total": 4}
    assert (store.get_request("r1").status, store.get_request("r1").run_id) == ("processing", "run-2")


def test_every_method_and_typed_rows(store_factory):
    store = store_factory()
    accept(store, "r1", webhook_url="https://hooks.example/x")
    assert store.known_request_ids(["r1", "nope"]) == {"r1"} and store.known_request_ids([]) == set()
    assert [q.request_id for q in store.queued_requests()] == ["r1"]
    store.start_processing("r1", "run-1")
    store.mark_processing("r1", ["http://img.example/1-1.jpg", "http://img.example/2-2.jpg"])
    store.record_results("r1", [
        ImageResult("http://img.example/1-1.jpg", ImageStatus.COMPRESSED, output_path="out/1-1.webp",
                    output_url="http://o/1", bytes_in=5_000_000_000, bytes_out=40, quality_in=90, quality_out=75,
                    format_out="webp"),
        ImageResult("http://img.example/2-2.jpg", ImageStatus.FAILED, error="HTTP 404 (a 100% miss?)"),
    ])
    [first, *_, last] = store.images("r1")
    assert (first.bytes_in, first.quality_out, first.attempts, first.format_out) == (5_000_000_000, 75, 1, "webp")
    assert (last.status, last.error, last.bytes_in, last.output_path) == (
        ImageStatus.FAILED, "HTTP 404 (a 100% miss?)", None, None)
    for row in (first, last, store.get_request("r1"), store.products("r1")[0]):
        for column, value in vars(row).items():
            assert value is None or type(value) in (str, int, bool, datetime, ImageStatus, RequestStatus), (column, value)
    assert type(first.updated_at) is datetime and first.updated_at.tzinfo is None
    assert abs(first.updated_at - utcnow()) < timedelta(minutes=1)  # naive UTC, not local time

    with pytest.raises(NotRetryable, match="r1 is processing"):
        store.requeue_for_retry("r1")
    store.finish_request("r1", RequestStatus.COMPLETED_WITH_ERRORS, "1 image failed")
    request = store.get_request("r1")
    assert (request.status, request.error, request.total_images) == ("completed_with_errors", "1 image failed", 4)
    assert request.completed_at is not None
    assert store.requeue_for_retry("r1") == 3
    assert (store.get_request("r1").generation, store.get_request("r1").status) == (1, RequestStatus.QUEUED)
    assert store.unfinished_slots("r1") == [ImageSlot(1, 2, "http://img.example/1-2.jpg"),
                                            ImageSlot(2, 1, "http://img.example/2-1.jpg"),
                                            ImageSlot(2, 2, "http://img.example/2-2.jpg")]
    with pytest.raises(NotRetryable, match="r1 is queued"):
        store.requeue_for_retry("r1")
    with pytest.raises(KeyError):
        store.requeue_for_retry("nope")

    store.record_rejected("r2", source="api", file_name="b.csv", webhook_url=None,
                          errors=[{"row": 2, "column": None, "message": "bad"}])
    rejected = store.latest_request_for_file("b.csv")
    assert isinstance(rejected, RequestRow) and rejected.status is RequestStatus.REJECTED
    assert rejected.errors == [{"row": 2, "column": None, "message": "bad"}]
    with pytest.raises(NotRetryable, match="rejected"):
        store.requeue_for_retry("r2")

    store.enqueue_webhook(webhook_id="w1", request_id="r1", url="https://hooks.example/x", event_type="done",
                          payload=b'{"a": 1}')
    assert store.due_webhook_ids() == ["w1"] and store.due_webhook_ids("r1") == ["w1"]
    assert store.due_webhook_ids("r2") == [] and store.webhooks_due_again(first_attempt_grace=60) == []
    entry = store.claim_webhook("w1", lease_seconds=60)
    assert entry.payload == b'{"a": 1}' and entry.attempts == 0 and entry.first_attempt_at is None
    assert store.claim_webhook("w1", lease_seconds=60) is None and store.due_webhook_ids() == []
    attempted = utcnow()
    store.record_webhook_attempt(entry, status_code=500, error="HTTP 500", attempted_at=attempted, state="pending",
                                 next_attempt_at=attempted - timedelta(seconds=1))
    assert store.webhooks_due_again(first_attempt_grace=60) == [("w1", 1)]
    again = store.claim_webhook("w1", lease_seconds=60)
    assert again.attempts == 1 and again.first_attempt_at == attempted
    store.record_webhook_attempt(again, status_code=200, error=None, attempted_at=utcnow(), state="delivered",
                                 next_attempt_at=None)
    deliveries = store.webhook_deliveries("r1")
    assert [(d.attempt, d.status_code, d.error) for d in deliveries] == [(1, 500, "HTTP 500"), (2, 200, None)]
    assert store.claim_webhook("w1", lease_seconds=0) is None


def test_renditions_are_recorded_with_their_image_and_go_with_their_request(store_factory):
    store = store_factory()
    for request_id in ("r1", "r2"):
        accept(store, request_id, renditions="avif", widths="480")
        store.start_processing(request_id, "run-1")
    url = "http://img.example/1-1.jpg"
    files = (RenditionRow(url, "r1-p1.jpg", "JPEG", 1200, 800, 30_000, "main"),
             RenditionRow(url, "r1-p1.w1200.avif", "AVIF", 1200, 800, 18_000, "alternative"),
             RenditionRow(url, "r1-p1.w480.jpg", "JPEG", 480, 320, 9_000, "fallback"),
             RenditionRow(url, "r1-p1.w480.avif", "AVIF", 480, 320, 4_000, "alternative"))
    for request_id in ("r1", "r2"):
        store.record_results(request_id, [
            ImageResult(url, ImageStatus.COMPRESSED, output_url="http://o/r1-p1.jpg", bytes_in=90_000,
                        bytes_out=30_000, format_out="JPEG", renditions=files),
            ImageResult("http://img.example/1-2.jpg", ImageStatus.COMPRESSED, bytes_in=10, bytes_out=5,
                        format_out="JPEG")])
    store.record_results("r1", [ImageResult(url, ImageStatus.COMPRESSED, renditions=files[:1])])  # again: no change

    assert store.renditions_of("r1") == store.renditions_of("r1", [url, "http://img.example/1-2.jpg"]) == {url: [
        files[0], files[1], files[3], files[2]]}  # the main output, then by width, widest first
    assert store.renditions_of("r1", []) == {} and store.renditions_of("nope") == {}
    assert store.rendition_totals("r1") == {"fallback jpeg": (1, 9_000, 0),
                                            "alternative avif": (2, 22_000, 12_000 + 5_000)}
    # Main outputs by format count every slot, as imgpipe_image_bytes_total does; renditions each file.
    assert store.metrics((1.0,)).bytes_out_by_format == {("main", "jpeg"): 2 * 30_005,
                                                          ("rendition", "avif"): 2 * 22_000,
                                                          ("rendition", "jpeg"): 2 * 9_000}
    store.finish_request("r1", RequestStatus.COMPLETED)
    store.mark_purged("r1")
    store.purge_request("r1")
    assert store.renditions_of("r1") == {} and list(store.renditions_of("r2")) == [url]


def test_a_request_that_has_not_ended_cannot_be_purged_and_one_being_purged_cannot_be_retried(store_factory):
    store = store_factory()
    accept(store, "r1")
    for status in ("queued", "processing"):
        with pytest.raises(NotPurgeable, match=f"^request r1 is {status}: cancel its run first$"):
            store.mark_purged("r1")
        assert store.purged_at("r1") is None
        store.start_processing("r1", "run-1")
    store.finish_request("r1", RequestStatus.FAILED, "its run was cancelled")

    store.mark_purged("r1")  # then its files go, then its rows (purge_request)

    assert store.purged_at("r1") is not None
    with pytest.raises(NotRetryable, match="request r1 is being purged"):
        store.requeue_for_retry("r1")
    assert store.get_request("r1").status == "failed"


def test_a_database_of_the_first_release_gets_the_columns_added_since(store_factory):
    first_release = {"requests": "request_id VARCHAR PRIMARY KEY, status VARCHAR NOT NULL, source VARCHAR NOT NULL,"
                                 " file_name VARCHAR, webhook_url VARCHAR, created_at TIMESTAMP NOT NULL,"
                                 " updated_at TIMESTAMP NOT NULL, completed_at TIMESTAMP, total_images INTEGER,"
                                 " error VARCHAR, errors_json VARCHAR, idempotency_key VARCHAR,"
                                 " generation INTEGER NOT NULL DEFAULT 0, run_id VARCHAR"}
    connect = duckdb.connect if store_factory.backend == "duckdb" else psycopg2.connect
    with contextlib.closing(connect(store_factory.target)) as connection:
        con = connection.cursor()
        con.execute(f"CREATE TABLE requests ({first_release['requests']})")
        # Two API processes could give one Idempotency-Key two requests before keys had a table of their own.
        for request_id, minute in (("r-key-first", 1), ("r-key-again", 2)):
            con.execute("INSERT INTO requests (request_id, status, source, created_at, updated_at, idempotency_key)"
                        f" VALUES ('{request_id}', 'queued', 'api', TIMESTAMP '2026-01-01 00:0{minute}:00',"
                        " now(), 'k')")
        connection.commit()
    store = store_factory()
    accept(store, "r1", fresh=True, renditions="avif", widths="480")
    assert (store.get_request("r1").fresh, store.get_request("r1").renditions) == (True, "avif")
    assert store_factory().get_request("r1").widths == "480"  # opened again: nothing added twice
    assert (store.get_request("r-key-first").renditions, store.get_request("r-key-first").widths) == (None, None)
    # The key names the first of its requests, the one earlier releases replayed, and no new one.
    assert store.claim_idempotency_key("k", "r-new", timedelta(0)) == "r-key-first"


def test_open_status_store_follows_the_profile(tmp_path):
    embedded = Settings.from_env({"IMGPIPE_HOME": str(tmp_path)})
    store = open_status_store(embedded, lock_timeout=5)
    assert type(store) is DuckDBStatusStore and store.path == embedded.db_path and store.lock_timeout == 5
    distributed = Settings.from_env({
        "IMGPIPE_HOME": str(tmp_path), "IMGPIPE_PROFILE": "distributed",
        "IMGPIPE_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/x", "IMGPIPE_BROKER_URL": "redis://127.0.0.1",
        "IMGPIPE_STORAGE_URL": "s3://bucket/prefix", "IMGPIPE_WEBHOOK_SECRET": "whsec_x"})
    store = open_status_store(distributed)
    assert type(store) is PostgresStatusStore and store.url == distributed.database_url
    assert isinstance(store, StatusStore)


SERIALIZATION_FAILURE = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"


def test_postgres_runs_a_transaction_again_after_a_serialization_failure(postgres_url):
    store = PostgresStatusStore(postgres_url, lock_timeout=0.3)
    attempts = []

    def work(cur):
        attempts.append(1)
        cur.execute("INSERT INTO products VALUES ('r1', 's', 'P', %s)", [len(attempts)])
        if len(attempts) < 3:
            cur.execute(SERIALIZATION_FAILURE)
        return "done"

    assert store._transact(work) == "done" and len(attempts) == 3
    assert [p.row_number for p in store.products("r1")] == [3]  # the failed attempts were rolled back
    with pytest.raises(StoreBusy, match="serialization failures"):
        store._transact(lambda cur: cur.execute(SERIALIZATION_FAILURE))
    with pytest.raises(psycopg2.errors.DivisionByZero):  # other errors are not retried
        store._transact(lambda cur: cur.execute("SELECT 1 / 0"))


def _writer(factory, request_id: str, urls: list[str]) -> None:
    store = factory()
    for url in urls:
        store.record_results(request_id, [ImageResult(url, "compressed", bytes_in=100, bytes_out=40)])


def test_eight_writers_and_a_polling_reader_lose_nothing(store_factory):
    store = store_factory()
    frame = manifest(8, 10)
    accept(store, "r1", frame)
    store.start_processing("r1", "run-1")
    urls = list(frame["input_url"])
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(store_factory, "r1", urls[i::8])) for i in range(8)]
    for w in writers:
        w.start()
    reads = 0
    while any(w.is_alive() for w in writers):
        counts = store.counts("r1")  # would raise on a lock error
        assert counts["total"] == 80
        reads += 1
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert store.counts("r1")["compressed"] == 80
    assert reads > 0


def _claimer(factory, webhook_ids: list[str], barrier, claims) -> None:
    store = factory()
    barrier.wait()
    claims.put([w for w in webhook_ids if store.claim_webhook(w, lease_seconds=300) is not None])


def test_concurrent_claims_take_each_entry_once(store_factory):
    store = store_factory()
    webhook_ids = [f"w{i}" for i in range(20)]
    for webhook_id in webhook_ids:
        store.enqueue_webhook(webhook_id=webhook_id, request_id="r1", url="https://hooks.example/x",
                              event_type="done", payload=b"{}")
    ctx = multiprocessing.get_context("spawn")
    barrier, claims = ctx.Barrier(2), ctx.Queue()
    claimers = [ctx.Process(target=_claimer, args=(store_factory, webhook_ids, barrier, claims)) for _ in range(2)]
    for c in claimers:
        c.start()
    taken = [claims.get(timeout=120) for _ in claimers]
    for c in claimers:
        c.join()
        assert c.exitcode == 0
    assert sorted(taken[0] + taken[1]) == sorted(webhook_ids)  # every entry claimed, and only once
    assert store.due_webhook_ids() == []


class CountingDuckDBStore(DuckDBStatusStore):
    """Counts how often the file is opened."""

    opened = 0

    def _session(self):
        self.opened += 1
        return super()._session()


def test_operations_held_together_open_the_file_once_and_stay_transactions_of_their_own(tmp_path):
    store = CountingDuckDBStore(tmp_path / "s.duckdb")
    accept(store, "r1")
    store.opened = 0
    with store.held():
        store.start_processing("r1", "run-1")
        with pytest.raises(RuntimeError):
            store._transact(lambda con: (con.execute("DELETE FROM requests"), _raise(RuntimeError("boom"))))
        assert store.get_request("r1").status == RequestStatus.PROCESSING  # only the failed one was undone
        with store.held():  # nested: the same session
            store.images("r1")
    assert store.opened == 1
    store.get_request("r1")
    store.images("r1")
    assert store.opened == 3  # outside, each operation opens the file for itself, as before


def _raise(exc: Exception):
    raise exc


def test_status_lines_of_nul_bytes_and_ansi_escapes_end_printable_in_postgresql(tmp_path, postgres_url, image_server,
                                                                               image_root):
    """A request through the steps' own calls (intake, compress_images, complete_request) on the PostgreSQL store:
    servers whose reason phrase, redirect or whole status line holds NUL and ESC bytes fail their images with a
    printable reason, and the request ends with every result recorded."""
    settings = Settings(home=tmp_path / "home", allow_private_hosts="127.0.0.1")
    store = PostgresStatusStore(postgres_url)
    backends = Backends(settings, store, LocalStorage(tmp_path / "home", settings.public_base_url))
    folder = uuid.uuid4().hex[:8]
    save_jpeg(image_root / folder / "good.jpg", quality=80)
    hostile = [image_server.url(f"rawstatus/{code}") for code in ("500", "302", "99")]
    rows = [[image_server.url(f"img/{folder}/good.jpg")], hostile]
    request_id = take_upload(backends, Upload(csv_for(rows).encode(), "x.csv", Source.API)).request_id
    store.start_processing(request_id, "run-1")

    compress_images(backends, request_id)
    complete_request(backends, request_id, "run-1")

    assert store.get_request(request_id).status == RequestStatus.COMPLETED_WITH_ERRORS
    with contextlib.closing(psycopg2.connect(postgres_url)) as con, con.cursor() as cur:
        cur.execute("SELECT input_url, status, error FROM images WHERE request_id = %s ORDER BY row_number, position",
                    [request_id])
        stored = cur.fetchall()
    assert [status for _, status, _ in stored] == ["compressed", "failed", "failed", "failed"]
    errors = {url: error for url, _, error in stored[1:]}
    assert all(error.isprintable() for error in errors.values()), errors
    assert errors[hostile[0]] == f"download failed: HTTP 500 from {hostile[0]}"  # a reason phrase is never quoted
    for quoted in hostile[1:]:
        assert "\\x00\\x1b[31mred" in errors[quoted], errors[quoted]
