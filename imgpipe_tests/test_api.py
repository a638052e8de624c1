"""The REST API over real HTTP: what it owns without a running pipeline (the upload taken in and recorded, the
status document, errors, limits, auth and static files). Upload limits of the multipart reader:
test_api_uploads.py; the OpenAPI document against live answers: test_api_openapi.py; schemathesis:
test_api_schemathesis.py."""
from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from urllib.parse import urlsplit

import requests

from imgpipe.status.models import ImageResult, ImageStatus, RequestStatus, Source

# BOM, CRLF and non-ASCII: the upload must reach the storage byte for byte.
CSV = "\ufeffS. No.,Product Name,Input Image Urls\r\n1.,Chaussure été,https://e.com/a.jpg\r\n".encode()
CSV_WITH_3_PROBLEMS = (b"S. No.,Product Name,Input Image Urls\n"
                       b"1,,https://e.com/a.jpg\n"
                       b"2,Shoe,ftp://e.com/b.jpg\n"
                       b"3,Hat,\n")
REQUEST_KEYS = {"request_id", "status", "created_at", "updated_at", "counts", "output_csv_url", "report_url", "errors",
                "products"}


def upload(server, data: bytes = CSV, name: str = "products.csv", headers=None, **fields) -> requests.Response:
    return requests.post(f"{server.url}/requests", files={"file": (name, data, "text/csv")}, data=fields,
                         headers=headers, timeout=10)


def raw_request(url: str, method: str, path: str, headers=None, body: bytes | None = None):
    """Sends the path exactly as written (requests would normalise `..` away) and returns (status, body)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def inbox(server) -> list[str]:
    return sorted(p.name for p in server.settings.inbox.iterdir())


def kept_inputs(server) -> list[str]:
    """Request IDs with an input in the storage (`requests/<id>/input.csv`)."""
    return sorted(p.parent.name for p in server.settings.requests_dir.glob("*/input.csv"))


def rejected(server) -> list[str]:
    return sorted(p.name for p in server.settings.rejected_dir.iterdir())


def nothing_recorded(server) -> bool:
    return inbox(server) == [] and kept_inputs(server) == [] and rejected(server) == []


def test_multipart_upload_is_recorded_and_kept_in_the_storage(api_server):
    server = api_server()
    response = upload(server, name="some/folder/products.csv", webhook_url="https://hooks.example.com/done")
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    assert response.json() == {
        "request_id": request_id,
        "status": "queued",
        "status_url": f"{server.url}/requests/{request_id}",
        "output_csv_url": f"{server.url}/requests/{request_id}/output.csv",
    }
    # The API takes the upload in itself: nothing goes through the inbox.
    assert inbox(server) == []
    assert kept_inputs(server) == [request_id]
    assert (server.settings.requests_dir / request_id / "input.csv").read_bytes() == CSV
    row = server.store.get_request(request_id)
    assert (row.status, row.source, row.file_name, row.webhook_url) == (
        RequestStatus.QUEUED, Source.API, "products.csv", "https://hooks.example.com/done")
    assert [(i.row_number, i.position, i.input_url, i.status) for i in server.store.images(request_id)] == [
        (1, 1, "https://e.com/a.jpg", ImageStatus.PENDING)]

    status = requests.get(response.json()["status_url"], timeout=10)
    assert status.status_code == 200
    document = status.json()
    assert set(document) == REQUEST_KEYS
    assert document["status"] == "queued"
    assert document["counts"] == {"total": 1, "pending": 1, "processing": 0, "compressed": 0, "failed": 0}
    assert (document["output_csv_url"], document["errors"]) == (None, [])
    # Without a token the report is open like the rest, so its link is the plain path.
    assert document["report_url"] == f"{server.url}/requests/{request_id}/report"
    assert document["products"] == [{"serial": "1.", "product_name": "Chaussure été", "images": [
        {"position": 1, "input_url": "https://e.com/a.jpg", "status": "pending", "output_url": None, "error": None,
         "obtained": None, "note": None, "renditions": [], "srcset": ""}]}]
    assert datetime.fromisoformat(document["created_at"]).tzinfo is not None


def test_raw_csv_body_takes_webhook_and_file_name_from_the_query(api_server):
    server = api_server()
    response = requests.post(f"{server.url}/requests", data=CSV, headers={"Content-Type": "text/csv"},
                             params={"file_name": "C:\\Users\\me\\list.csv",
                                     "webhook_url": "http://hooks.example.com/"},
                             timeout=10)
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    row = server.store.get_request(request_id)
    assert (row.file_name, row.webhook_url) == ("list.csv", "http://hooks.example.com/")
    assert (server.settings.requests_dir / request_id / "input.csv").read_bytes() == CSV

    # Without a name, the default one; an empty webhook_url means none.
    unnamed = requests.post(f"{server.url}/requests", data=CSV, headers={"Content-Type": "text/csv"},
                            params={"webhook_url": ""}, timeout=10)
    row = server.store.get_request(unnamed.json()["request_id"])
    assert (row.file_name, row.webhook_url) == ("upload.csv", None)
    # A form without a webhook field takes the query's.
    form = requests.post(f"{server.url}/requests", files={"file": ("f.csv", CSV)},
                         params={"webhook_url": "https://hooks.example.com/q"}, timeout=10)
    assert server.store.get_request(form.json()["request_id"]).webhook_url == "https://hooks.example.com/q"
    assert inbox(server) == []


def test_invalid_csv_is_422_with_every_problem_and_kept_as_rejected(api_server):
    server = api_server()
    response = upload(server, CSV_WITH_3_PROBLEMS)
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["code"] == "invalid_upload"
    assert [(e["row"], e["column"]) for e in body["errors"]] == [
        (2, "Product Name"), (3, "Input Image Urls"), (4, "Input Image Urls")]
    assert all(e["message"] for e in body["errors"])
    # A rejected file is never lost: kept byte for byte beside errors.json, its request recorded `rejected`.
    request_id = body["request_id"]
    assert (inbox(server), kept_inputs(server), rejected(server)) == ([], [], [request_id])
    assert (server.settings.rejected_dir / request_id / "products.csv").read_bytes() == CSV_WITH_3_PROBLEMS
    errors_json = json.loads((server.settings.rejected_dir / request_id / "errors.json").read_text())
    assert (errors_json["request_id"], errors_json["file_name"], errors_json["errors"]) == (
        request_id, "products.csv", body["errors"])
    row = server.store.get_request(request_id)
    assert (row.status, row.file_name, row.errors) == (RequestStatus.REJECTED, "products.csv", body["errors"])
    document = requests.get(f"{server.url}/requests/{request_id}", timeout=10).json()
    assert (document["status"], document["errors"], document["products"]) == ("rejected", body["errors"], [])


def test_bad_webhook_url_is_reported_with_the_csv_problems(api_server):
    server = api_server()
    response = upload(server, webhook_url="ftp://hooks.example.com/")
    assert response.status_code == 422
    assert [e["column"] for e in response.json()["errors"]] == ["webhook_url"]

    both = upload(server, CSV_WITH_3_PROBLEMS, webhook_url="not a url")
    assert both.json()["errors"][0]["column"] == "webhook_url"
    assert len(both.json()["errors"]) == 4
    # Problems outside the CSV refuse the upload without recording it.
    assert "request_id" not in response.json() and "request_id" not in both.json()
    # The query's webhook_url counts for a form too (its field wins), so it is checked too.
    in_query = requests.post(f"{server.url}/requests", files={"file": ("a.csv", CSV)},
                             params={"webhook_url": "https:// spaces.example.com/"}, timeout=10)
    assert [e["column"] for e in in_query.json()["errors"]] == ["webhook_url"]
    long_key = upload(server, CSV_WITH_3_PROBLEMS, headers={"Idempotency-Key": "k" * 256})
    assert long_key.status_code == 422
    assert [e["column"] for e in long_key.json()["errors"]] == [
        "Idempotency-Key", "Product Name", "Input Image Urls", "Input Image Urls"]
    assert nothing_recorded(server)


def test_body_over_the_limit_is_413_however_it_is_sent(api_server):
    server = api_server(IMGPIPE_MAX_CSV_BYTES="300")
    too_big = CSV + b"2,Hat,https://e.com/" + b"x" * 300 + b".jpg\r\n"

    def assert_too_large(response_status: int, body: bytes):
        assert response_status == 413
        assert json.loads(body)["error"]["code"] == "payload_too_large"

    raw = requests.post(f"{server.url}/requests", data=too_big, headers={"Content-Type": "text/csv"}, timeout=10)
    assert_too_large(raw.status_code, raw.content)
    multipart = upload(server, too_big)
    assert_too_large(multipart.status_code, multipart.content)
    # Chunked: no Content-Length at all, so only counting while reading can stop it.
    chunked = requests.post(f"{server.url}/requests", data=iter([too_big[:200], too_big[200:]]),
                            headers={"Content-Type": "text/csv"}, timeout=10)
    assert chunked.request.headers.get("Transfer-Encoding") == "chunked"
    assert_too_large(chunked.status_code, chunked.content)
    # A declared size over the limit is refused before the body is waited for (it never comes).
    assert_too_large(*raw_request(server.url, "POST", "/requests", body=b"S. No.",
                                  headers={"Content-Type": "text/csv", "Content-Length": str(10**9)}))
    assert nothing_recorded(server)
    # Up to the limit the CSV passes, in a multipart envelope too.
    assert len(CSV) < 300 and upload(server, CSV).status_code == 202


def test_the_same_idempotency_key_gives_one_request(api_server):
    server = api_server()

    def send(key: str) -> requests.Response:
        return upload(server, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(send, ["key-1"] * 6))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["request_id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 5
    other = send("key-2")
    assert other.json()["request_id"] != responses[0].json()["request_id"]
    assert kept_inputs(server) == sorted({responses[0].json()["request_id"], other.json()["request_id"]})
    assert inbox(server) == []

    # A rejected upload's key gives the same 422 again, naming the same rejected request.
    first = upload(server, CSV_WITH_3_PROBLEMS, headers={"Idempotency-Key": "key-3"})
    again = upload(server, CSV_WITH_3_PROBLEMS, headers={"Idempotency-Key": "key-3"})
    assert (first.status_code, again.status_code) == (422, 422)
    assert again.json() == first.json() and "request_id" in first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert rejected(server) == [first.json()["request_id"]]

    # A key sent again with another upload is no retry: 422, nothing recorded (IETF Idempotency-Key draft).
    for other_upload in ({"data": CSV_WITH_3_PROBLEMS, "headers": {"Idempotency-Key": "key-1"}},
                         {"headers": {"Idempotency-Key": "key-1"}, "webhook_url": "https://hooks.example.com/"}):
        reused = upload(server, **other_upload)
        assert reused.status_code == 422
        assert [e["column"] for e in reused.json()["errors"]] == ["Idempotency-Key"]
        assert "request_id" not in reused.json()
    assert len(kept_inputs(server)) == 2 and len(rejected(server)) == 1


def test_token_guards_everything_but_health_and_images(api_server):
    server = api_server(IMGPIPE_API_TOKEN="s3cret")
    image = server.settings.images_dir / "req" / "a.jpg"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\xff\xd8 jpeg bytes")
    good = {"Authorization": "Bearer s3cret"}

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                    {"Authorization": "Basic s3cret"}, {"Authorization": "Bearer"}, {"Authorization": "Bearer s3cre"},
                    {"Authorization": "Bearer s3cret2"}):
        refused = upload(server, headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    # RFC 7235: the scheme is case-insensitive.
    for scheme in ("bearer", "BEARER", "BeArEr"):
        assert upload(server, headers={"Authorization": f"{scheme} s3cret"}).status_code == 202, scheme
    accepted = upload(server, headers=good)
    assert accepted.status_code == 202
    status_url = accepted.json()["status_url"]
    assert requests.get(status_url, timeout=10).status_code == 401
    assert requests.get(status_url, headers=good, timeout=10).status_code == 200
    assert requests.get(f"{server.url}/openapi.json", timeout=10).status_code == 401
    assert requests.get(f"{server.url}/openapi.json", headers=good, timeout=10).status_code == 200
    # Unknown routes, /docs and /redoc too: without the token nothing tells which routes exist.
    for path in ("/no/such/route", "/docs", "/redoc"):
        assert requests.get(f"{server.url}{path}", timeout=10).status_code == 401, path
        assert requests.get(f"{server.url}{path}", headers=good, timeout=10).status_code == 404, path
    assert requests.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{server.url}/images/req/a.jpg", timeout=10).content == b"\xff\xd8 jpeg bytes"


def test_output_csv_waits_for_a_terminal_status(api_server):
    server = api_server()
    assert requests.get(f"{server.url}/requests/nope/output.csv", timeout=10).status_code == 404
    request_id = upload(server).json()["request_id"]
    output_url = f"{server.url}/requests/{request_id}/output.csv"
    early = requests.get(output_url, timeout=10)
    assert early.status_code == 409
    assert early.json()["error"]["code"] == "conflict"

    output = "S. No.,Product Name,Input Image Urls,Output Image Urls\r\n1.,Chaussure été,https://e.com/a.jpg,x\r\n"
    (server.settings.outputs_dir / f"{request_id}.csv").write_text(output, encoding="utf-8", newline="")
    server.store.finish_request(request_id, RequestStatus.COMPLETED)
    done = requests.get(output_url, timeout=10)
    assert done.status_code == 200
    assert done.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert done.content.decode() == output
    assert requests.get(f"{server.url}/requests/{request_id}", timeout=10).json()["output_csv_url"] == output_url


def test_failed_request_without_csv_shows_its_error(api_server):
    server = api_server()
    request_id = upload(server).json()["request_id"]
    server.store.finish_request(request_id, RequestStatus.FAILED, "the run crashed")
    document = requests.get(f"{server.url}/requests/{request_id}", timeout=10).json()
    assert document["status"] == "failed"
    assert document["output_csv_url"] is None
    assert document["errors"] == [{"row": None, "column": None, "message": "the run crashed"}]
    missing = requests.get(f"{server.url}/requests/{request_id}/output.csv", timeout=10)
    assert missing.status_code == 404


def test_request_document_lists_products_and_images_in_input_order(api_server):
    server = api_server()
    csv = (b"S. No.,Product Name,Input Image Urls\n"
           b'1.,Shoe,"https://e.com/a.jpg, https://e.com/b.jpg"\n'
           b"2,Hat,https://e.com/c.jpg\n")
    request_id = upload(server, csv).json()["request_id"]
    server.store.start_processing(request_id, "run-1")
    # Results in another order than the CSV's: the document follows row and position.
    server.store.record_results(request_id, [
        ImageResult("https://e.com/c.jpg", ImageStatus.FAILED, error="HTTP 404"),
        ImageResult("https://e.com/a.jpg", ImageStatus.COMPRESSED,
                    output_url=f"{server.url}/images/{request_id}/a.jpg"),
    ])
    document = requests.get(f"{server.url}/requests/{request_id}", timeout=10).json()
    assert document["status"] == "processing"
    assert document["counts"] == {"total": 3, "pending": 1, "processing": 0, "compressed": 1, "failed": 1}
    assert document["products"] == [
        {"serial": "1.", "product_name": "Shoe", "images": [
            {"position": 1, "input_url": "https://e.com/a.jpg", "status": "compressed",
             "output_url": f"{server.url}/images/{request_id}/a.jpg", "error": None, "obtained": None, "note": None,
             "renditions": [], "srcset": ""},
            {"position": 2, "input_url": "https://e.com/b.jpg", "status": "pending", "output_url": None,
             "error": None, "obtained": None, "note": None, "renditions": [], "srcset": ""},
        ]},
        {"serial": "2", "product_name": "Hat", "images": [
            {"position": 1, "input_url": "https://e.com/c.jpg", "status": "failed", "output_url": None,
             "error": "HTTP 404", "obtained": None, "note": None, "renditions": [], "srcset": ""},
        ]},
    ]


def test_images_are_served_without_listing_or_escaping_the_folder(api_server):
    server = api_server()
    image = server.settings.images_dir / "req" / "a.webp"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"RIFF webp bytes")
    (server.settings.home_dir / "secret.txt").write_text("secret")

    served = requests.get(f"{server.url}/images/req/a.webp", timeout=10)
    assert (served.status_code, served.content) == (200, b"RIFF webp bytes")
    for path in ("/images/req/", "/images/req", "/images/req/missing.jpg",
                 "/images/../../secret.txt", "/images/..%2F..%2Fsecret.txt", "/images/%2e%2e/%2e%2e/secret.txt",
                 "/images/req/../../../secret.txt"):
        status, body = raw_request(server.url, "GET", path)
        assert status == 404, path
        assert json.loads(body)["error"]["code"] == "not_found"


def test_errors_share_one_json_shape(api_server):
    server = api_server()
    cases = [
        ("GET", "/requests/unknown", {}, None, 404, "not_found"),
        ("GET", "/no/such/route", {}, None, 404, "not_found"),
        ("PUT", "/requests", {}, None, 405, "method_not_allowed"),
        ("POST", "/requests", {"Content-Type": "application/json"}, b"{}", 415, "unsupported_media_type"),
        ("POST", "/requests", {"Content-Type": "multipart/form-data; boundary=x"}, b"garbage", 400, "bad_request"),
        ("POST", "/requests", {"Content-Type": "multipart/form-data; boundary=x"},
         b'--x\r\nContent-Disposition: form-data; name="other"\r\n\r\nv\r\n--x--\r\n', 422, "invalid_upload"),
        ("POST", "/requests", {"Content-Type": "multipart/form-data"}, b"--x--\r\n", 400, "bad_request"),
        ("POST", "/requests", {"Content-Type": "multipart/form-data; boundary=x"},
         b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\n1,2', 400, "bad_request"),
        ("PUT", "/healthz", {}, None, 405, "method_not_allowed"),
        ("DELETE", "/requests/x", {}, None, 405, "method_not_allowed"),
        ("GET", "/docs", {}, None, 404, "not_found"),
        ("GET", "/redoc", {}, None, 404, "not_found"),
        ("GET", "/images", {}, None, 404, "not_found"),
    ]
    for method, path, headers, body, status, code in cases:
        got_status, got_body = raw_request(server.url, method, path, headers=headers, body=body)
        body = json.loads(got_body)
        assert (got_status, body["error"]["code"]) == (status, code), (method, path, body)
        assert set(body) == ({"error", "errors"} if status == 422 else {"error"}), body
        assert set(body["error"]) == {"code", "message"} and body["error"]["message"], body


def test_an_unreadable_store_is_500_and_unhealthy(api_server):
    server = api_server()
    assert requests.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}
    server.settings.db_path.write_bytes(b"this is not a DuckDB database" * 100)
    broken = requests.get(f"{server.url}/requests/any", timeout=10)
    assert broken.status_code == 500
    assert broken.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    health = requests.get(f"{server.url}/healthz", timeout=10)
    assert health.status_code == 503
    assert health.json()["error"]["code"] == "unavailable"


def test_openapi_document_describes_every_call(api_server):
    server = api_server()
    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/requests", "/requests/{request_id}", "/requests/{request_id}/output.csv",
                                      "/requests/{request_id}/report", "/requests/{request_id}/report/thumbs/{name}",
                                      "/metrics", "/images/{path}", "/healthz", "/openapi.json"}
    assert {"202", "413", "422"} <= set(document["paths"]["/requests"]["post"]["responses"])
    assert {"404", "409"} <= set(document["paths"]["/requests/{request_id}/output.csv"]["get"]["responses"])
    assert document["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}

    def refs(node):
        if isinstance(node, dict):
            yield from ([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    schemas = document["components"]["schemas"]
    assert {ref.removeprefix("#/components/schemas/") for ref in refs(document)} <= set(schemas)
    assert set(schemas["RequestDocument"]["required"]) == REQUEST_KEYS


def test_fresh_asks_this_request_to_reuse_nothing(api_server):
    server = api_server()
    fresh = requests.post(f"{server.url}/requests?fresh=true", data=CSV, headers={"Content-Type": "text/csv"},
                          timeout=10)
    usual = upload(server)
    assert (fresh.status_code, usual.status_code) == (202, 202)
    assert server.store.get_request(fresh.json()["request_id"]).fresh is True
    assert server.store.get_request(usual.json()["request_id"]).fresh is False


def test_an_authorization_header_sent_twice_is_refused_whichever_comes_first(api_server):
    """Which of two would count is up to each server and proxy on the way: neither does."""
    server = api_server(IMGPIPE_API_TOKEN="s3cret")
    parts = urlsplit(server.url)

    def get(*authorizations: str, path: str = "/requests/unknown") -> tuple[int, dict]:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            connection.putrequest("GET", path)
            for value in authorizations:
                connection.putheader("Authorization", value)
            connection.endheaders()
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    assert get("Bearer s3cret")[0] == 404
    for pair in (("Bearer s3cret", "Bearer wrong"), ("Bearer wrong", "Bearer s3cret"),
                 ("Bearer s3cret", "Bearer s3cret"), ("Bearer s3cret", "")):
        status, body = get(*pair)
        assert status == 400, (pair, status, body)
        assert body["error"]["message"] == "the Authorization header is given more than once; send it once"
    # An open path never looks at it.
    assert get("Bearer s3cret", "Bearer wrong", path="/healthz") == (200, {"status": "ok"})
