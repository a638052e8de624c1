"""The status store's read methods for people and dashboards, on both backends (DuckDB and PostgreSQL):
`request_view` (paged in SQL), `request_views` (a page of requests, newest first), `requests_updated_since`,
`image_counts_of` and `metrics` (aggregates in SQL)."""
from __future__ import annotations

from datetime import timedelta

import pytest

from imgpipe.metrics import BUCKETS
from imgpipe.status.models import ImageResult, ImageStatus, RequestStatus, utcnow
from imgpipe_tests.test_status_store import accept, manifest


def test_request_view_pages_products_in_input_order_with_their_images(store):
    accept(store, "r1", manifest(7, 3))
    accept(store, "r2", manifest(2, 1))
    store.start_processing("r1", "run")
    store.record_results("r1", [
        ImageResult("http://img.example/1-1.jpg", ImageStatus.COMPRESSED, bytes_in=100, bytes_out=40,
                    obtained="fetched"),
        ImageResult("http://img.example/1-2.jpg", ImageStatus.COMPRESSED, bytes_in=50, bytes_out=50,
                    obtained="not_modified"),
        ImageResult("http://img.example/2-1.jpg", ImageStatus.FAILED, error="HTTP 404")])

    page = store.request_view("r1", offset=2, limit=3)

    assert page.request.request_id == "r1" and page.products_total == 7
    assert [p.row_number for p in page.products] == [3, 4, 5]
    assert [(i.row_number, i.position) for i in page.images] == [(r, p) for r in (3, 4, 5) for p in (1, 2, 3)]
    assert page.counts == {"total": 21, "pending": 18, "processing": 0, "compressed": 2, "failed": 1}
    assert (page.compressed_total("bytes_in"), page.compressed_total("bytes_out")) == (150, 90)
    assert page.obtained() == {"fetched": 1, "not_modified": 1}
    whole = store.request_view("r1")
    assert [p.row_number for p in whole.products] == list(range(1, 8)) and len(whole.images) == 21
    assert [(i.row_number, i.position) for i in whole.images] == [(i.row_number, i.position)
                                                                  for i in store.images("r1")]
    assert [p.row_number for p in store.request_view("r1", offset=5).products] == [6, 7]
    assert store.request_view("r1", offset=7, limit=3).products == []
    summary = store.request_view("r1", with_products=False)
    assert (summary.products, summary.images, summary.products_total) == ([], [], 7)
    assert store.request_view("nope") is None


def test_request_views_page_the_requests_newest_first_as_request_view_reads_each(store):
    accept(store, "r1", manifest(3, 2))
    accept(store, "r2", manifest(1, 1))
    accept(store, "r3", manifest(2, 1))
    store.record_rejected("r4", source="api", file_name="bad.csv", webhook_url=None,
                          errors=[{"row": 2, "column": "Product Name", "message": "product name is empty"}])
    store.start_processing("r1", "run")
    store.record_results("r1", [
        ImageResult("http://img.example/1-1.jpg", ImageStatus.COMPRESSED, bytes_in=100, bytes_out=40,
                    obtained="fetched"),
        ImageResult("http://img.example/2-1.jpg", ImageStatus.FAILED, error="HTTP 404")])
    store.finish_request("r2", RequestStatus.FAILED, "the run died")
    # r2 and r3 recorded at the same moment: request_id decides, the same way on every call.
    base = utcnow() - timedelta(hours=1)
    store._run(*[("UPDATE requests SET created_at = ? WHERE request_id = ?", [base + timedelta(minutes=m), r])
                 for r, m in (("r1", 0), ("r2", 1), ("r3", 1), ("r4", 2))])

    views, total = store.request_views(limit=10)

    assert ([v.request.request_id for v in views], total) == (["r4", "r3", "r2", "r1"], 4)
    assert views == [store.request_view(v.request.request_id, with_products=False) for v in views]
    assert (views[3].counts["compressed"], views[3].counts["failed"], views[3].products_total) == (1, 1, 3)
    assert (views[0].counts["total"], views[0].products_total) == (0, 0)  # rejected: no slots, no products

    def ids(**query) -> tuple[list[str], int]:
        found, matching = store.request_views(**query)
        return [v.request.request_id for v in found], matching

    assert ids(statuses=[RequestStatus.FAILED], limit=10) == (["r2"], 1)
    assert ids(statuses=["failed", "rejected"], limit=10) == (["r4", "r2"], 2)
    assert ids(statuses=["queued", "processing"], limit=1, offset=1) == (["r1"], 2)
    assert ids(limit=2, offset=1) == (["r3", "r2"], 4)
    assert ids(limit=2, offset=4) == ([], 4)
    assert ids(statuses=["completed"], limit=10) == ([], 0)


def test_requests_updated_since_and_counts_of_several_requests(store):
    before = utcnow() - timedelta(seconds=1)
    accept(store, "r1", manifest(2, 2))
    accept(store, "r2", manifest(1, 1))
    assert [r.request_id for r in store.requests_updated_since(before)] == ["r1", "r2"]
    assert store.requests_updated_since(utcnow() + timedelta(seconds=5)) == []
    store.start_processing("r1", "run")
    store.record_results("r1", [ImageResult("http://img.example/1-1.jpg", ImageStatus.COMPRESSED)])
    store.finish_request("r2", RequestStatus.FAILED, "the run died")
    assert store.image_counts_of(["r1", "r2", "nope"]) == {
        "r1": {"total": 4, "pending": 3, "processing": 0, "compressed": 1, "failed": 0},
        "r2": {"total": 1, "pending": 1, "processing": 0, "compressed": 0, "failed": 0},
        "nope": {"total": 0, "pending": 0, "processing": 0, "compressed": 0, "failed": 0}}
    assert store.image_counts_of([]) == {}


def test_metrics_aggregate_every_request_in_sql(store):
    accept(store, "r1", manifest(1, 3))
    accept(store, "r2", manifest(1, 1, prefix="http://other.example/"))
    store.start_processing("r1", "run")
    store.record_results("r1", [
        ImageResult("http://img.example/1-1.jpg", ImageStatus.COMPRESSED, bytes_in=1000, bytes_out=300,
                    obtained="fetched", download_seconds=0.2, compress_seconds=0.1),
        ImageResult("http://img.example/1-2.jpg", ImageStatus.COMPRESSED, bytes_in=10, bytes_out=10,
                    obtained="same_content", download_seconds=70.0, compress_seconds=0.0),
        ImageResult("http://img.example/1-3.jpg", ImageStatus.FAILED, error="HTTP 500")])
    store.finish_request("r1", RequestStatus.COMPLETED_WITH_ERRORS)
    for code in (200, 302, 410, 502):
        store.enqueue_webhook(webhook_id=f"m{code}", request_id="r1", url="https://h.example/",
                              event_type="request.completed", payload=b"{}")
        store.record_webhook_attempt(store.claim_webhook(f"m{code}", 30), status_code=code, error=None,
                                     attempted_at=utcnow(), state="delivered", next_attempt_at=None)

    found = store.metrics(BUCKETS)

    assert found.requests_by_status == {"completed_with_errors": 1, "queued": 1}
    assert found.images_by_status == {"compressed": 2, "failed": 1, "pending": 1}
    assert found.images_by_obtained == {"fetched": 1, "same_content": 1}
    assert (found.bytes_in, found.bytes_out) == (1010, 310)
    cumulative, count, total = found.download_seconds
    assert dict(zip(BUCKETS, cumulative))[0.25] == 1 and cumulative[-1] == 1 and count == 2  # 70 s: +Inf only
    assert total == pytest.approx(70.2)
    cumulative, count, _ = found.compress_seconds
    assert dict(zip(BUCKETS, cumulative))[0.1] == 2 and count == 2
    assert found.webhook_attempts == {"delivered": 1, "http_3xx": 1, "http_4xx": 1, "http_5xx": 1}
    assert found.oldest_queued_at == store.get_request("r2").updated_at
