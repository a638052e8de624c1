"""The DuckDB status store: the contract's schema, and many writers at once with a reader polling."""
from __future__ import annotations

import multiprocessing

import duckdb
import pandas as pd

from imgpipe.status_store import DuckDBStatusStore, ImageResult

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


def manifest(n_rows: int, per_row: int, prefix: str = "http://img.example/") -> pd.DataFrame:
    return pd.DataFrame([
        {"row_number": r, "serial": str(r), "product_name": f"P{r}", "position": p,
         "input_url": f"{prefix}{r}-{p}.jpg"}
        for r in range(1, n_rows + 1) for p in range(1, per_row + 1)
    ])


def test_schema_has_the_contract_columns_and_types(tmp_path):
    store = DuckDBStatusStore(tmp_path / "s.duckdb")
    store.create_request("r1", source="folder", file_name="a.csv", webhook_url=None)
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    try:
        for table, columns in CONTRACT_COLUMNS.items():
            actual = dict(con.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", [table]
            ).fetchall())
            assert {c: actual.get(c) for c in columns} == columns, table
    finally:
        con.close()


def test_lifecycle_counts_and_idempotent_start(tmp_path):
    store = DuckDBStatusStore(tmp_path / "s.duckdb")
    store.create_request("r1", source="api", file_name="a.csv", webhook_url=None, idempotency_key="k")
    assert store.get_request("r1")["status"] == "queued"
    assert store.find_by_idempotency_key("k")["request_id"] == "r1"
    frame = manifest(2, 2)
    store.start_processing("r1", "run-1", frame)
    store.record_results("r1", [ImageResult("http://img.example/1-1.jpg", "compressed", bytes_in=10, bytes_out=5)])
    store.mark_processing("r1", ["http://img.example/1-2.jpg"])
    store.start_processing("r1", "run-2", frame)  # a re-executed run: nothing duplicated, finished kept
    assert store.counts("r1") == {"pending": 3, "processing": 0, "compressed": 1, "failed": 0, "total": 4}
    assert len(store.products("r1")) == 2
    assert store.get_request("r1")["status"] == "processing"


def _writer(path: str, request_id: str, urls: list[str]) -> None:
    store = DuckDBStatusStore(path)
    for url in urls:
        store.record_results(request_id, [ImageResult(url, "compressed", bytes_in=100, bytes_out=40)])


def test_eight_writers_and_a_polling_reader_lose_nothing(tmp_path):
    path = str(tmp_path / "s.duckdb")
    store = DuckDBStatusStore(path)
    store.create_request("r1", source="folder", file_name="a.csv", webhook_url=None)
    frame = manifest(8, 10)
    store.start_processing("r1", "run-1", frame)
    urls = list(frame["input_url"])
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(path, "r1", urls[i::8])) for i in range(8)]
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
