"""`GET /requests` over real HTTP: the requests newest first, each exactly as its `?view=summary` answers, filtered
by status, paged, with `requests_total`; its parameter errors; and the token it wants like the other reads."""
from __future__ import annotations

from datetime import timedelta

import pytest
import requests

from imgpipe.status.models import ImageResult, ImageStatus, RequestStatus, utcnow
from imgpipe_tests.test_api import CSV_WITH_3_PROBLEMS, upload

TOKEN = "list-token"


def list_requests(server, headers=None, **params) -> requests.Response:
    return requests.get(f"{server.url}/requests", params=params, headers=headers, timeout=10)


def summary(server, request_id: str) -> dict:
    return requests.get(f"{server.url}/requests/{request_id}", params={"view": "summary"}, timeout=10).json()


def listed(server, **params) -> tuple[list[str], int]:
    response = list_requests(server, **params)
    assert response.status_code == 200, response.text
    body = response.json()
    return [r["request_id"] for r in body["requests"]], body["requests_total"]


@pytest.fixture
def seeded(api_server):
    """Five requests, oldest first: completed (with its output CSV), failed, queued, rejected, queued; the
    second and third recorded at the same moment."""
    server = api_server()
    ids = [upload(server).json()["request_id"] for _ in range(3)]
    ids.append(upload(server, CSV_WITH_3_PROBLEMS).json()["request_id"])
    ids.append(upload(server).json()["request_id"])
    completed, failed = ids[0], ids[1]
    server.store.start_processing(completed, "run-1")
    server.store.record_results(completed, [ImageResult("https://e.com/a.jpg", ImageStatus.COMPRESSED,
                                                        bytes_in=100, bytes_out=40)])
    (server.settings.outputs_dir / f"{completed}.csv").write_bytes(b"S. No.,Product Name\r\n")
    server.store.finish_request(completed, RequestStatus.COMPLETED)
    server.store.finish_request(failed, RequestStatus.FAILED, "the run crashed")
    base = utcnow() - timedelta(hours=1)
    server.store._run(*[("UPDATE requests SET created_at = ? WHERE request_id = ?", [base + timedelta(minutes=m), r])
                        for r, m in zip(ids, (0, 1, 1, 2, 3))])
    tied_newest_first = [(r, "failed" if r == failed else "queued") for r in sorted(ids[1:3], reverse=True)]
    return server, [(ids[4], "queued"), (ids[3], "rejected"), *tied_newest_first, (completed, "completed")]


def ids_in(newest_first: list[tuple[str, str]], *statuses: str) -> list[str]:
    return [request_id for request_id, status in newest_first if not statuses or status in statuses]


def test_every_request_newest_first_each_as_its_summary(seeded):
    server, newest_first = seeded
    response = list_requests(server)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"requests", "requests_total"}
    assert ([r["request_id"] for r in body["requests"]], body["requests_total"]) == (ids_in(newest_first), 5)
    assert body["requests"] == [summary(server, request_id) for request_id in ids_in(newest_first)]
    assert [r["status"] for r in body["requests"]] == [status for _, status in newest_first]
    completed = body["requests"][-1]
    assert (completed["status"], completed["counts"]["compressed"], completed["products_total"]) == (
        "completed", 1, 1)
    assert completed["output_csv_url"] == f"{server.url}/requests/{completed['request_id']}/output.csv"
    assert (body["requests"][1]["status"], len(body["requests"][1]["errors"])) == ("rejected", 3)


def test_filtered_by_one_or_several_statuses(seeded):
    server, newest_first = seeded
    assert listed(server, status="failed") == (ids_in(newest_first, "failed"), 1)
    assert listed(server, status="queued,rejected") == (ids_in(newest_first, "queued", "rejected"), 3)
    assert listed(server, status="processing") == ([], 0)
    # A status named twice counts once.
    assert listed(server, status="failed,failed")[1] == 1


def test_paged_with_limit_and_offset_the_total_unchanged(seeded):
    server, newest_first = seeded
    every = ids_in(newest_first)
    assert listed(server, limit=2) == (every[:2], 5)
    assert listed(server, limit=2, offset=2) == (every[2:4], 5)
    assert listed(server, limit=2, offset=4) == (every[4:], 5)
    assert listed(server, offset=5) == ([], 5)
    queued_or_failed = ids_in(newest_first, "queued", "failed")
    assert listed(server, status="queued,failed", limit=1, offset=1) == (queued_or_failed[1:2], 3)


def test_an_empty_store_lists_nothing(api_server):
    assert listed(api_server()) == ([], 0)


@pytest.mark.parametrize("params, column, named", [
    ({"status": "bogus"}, "query.status", "'bogus'"),
    ({"status": "queued,done"}, "query.status", "'done'"),
    ({"status": ""}, "query.status", "''"),
    ({"status": "queued, failed"}, "query.status", "' failed'"),
    ({"limit": 0}, "query.limit", None),
    ({"limit": 501}, "query.limit", None),
    ({"limit": "x"}, "query.limit", None),
    ({"offset": -1}, "query.offset", None),
])
def test_a_bad_parameter_is_a_422_naming_it(api_server, params, column, named):
    refused = list_requests(api_server(), **params)
    assert refused.status_code == 422
    body = refused.json()
    assert body["error"]["code"] == "invalid_request"
    assert [error["column"] for error in body["errors"]] == [column]
    if named:
        assert named in body["errors"][0]["message"] and named in body["error"]["message"]


def test_every_unknown_status_is_named(api_server):
    body = list_requests(api_server(), status="nope,queued,gone").json()
    assert [error["message"].split(";")[0] for error in body["errors"]] == [
        "unknown request status 'nope'", "unknown request status 'gone'"]


def test_it_wants_the_token_like_the_other_reads(api_server):
    server = api_server(IMGPIPE_API_TOKEN=TOKEN)
    assert list_requests(server).status_code == 401
    assert list_requests(server, headers={"Authorization": "Bearer nope"}).status_code == 401
    allowed = list_requests(server, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (allowed.status_code, allowed.json()) == (200, {"requests": [], "requests_total": 0})


def test_a_405_on_the_path_allows_both_of_its_methods(api_server):
    refused = requests.put(f"{api_server().url}/requests", timeout=10)
    assert (refused.status_code, refused.headers["Allow"]) == (405, "GET, POST")
