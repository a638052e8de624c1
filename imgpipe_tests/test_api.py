"""The REST API over real HTTP: what it owns without a running pipeline (the upload reaching the inbox, the
status document, errors, limits, auth and static files)."""
from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from urllib.parse import urlsplit

import pandas as pd
import requests

from imgpipe.status.store import ImageResult

# BOM, CRLF and non-ASCII: the upload must reach the inbox byte for byte.
CSV = "\ufeffS. No.,Product Name,Input Image Urls\r\n1.,Chaussure été,https://e.com/a.jpg\r\n".encode()
CSV_WITH_3_PROBLEMS = (b"S. No.,Product Name,Input Image Urls\n"
                       b"1,,https://e.com/a.jpg\n"
                       b"2,Shoe,ftp://e.com/b.jpg\n"
                       b"3,Hat,\n")
REQUEST_KEYS = {"request_id", "status", "created_at", "updated_at", "counts", "output_csv_url", "errors", "products"}


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


def test_multipart_upload_is_recorded_and_dropped_in_the_inbox(api_server):
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
    assert inbox(server) == [f"{request_id}.csv", f"{request_id}.json"]
    assert (server.settings.inbox / f"{request_id}.csv").read_bytes() == CSV
    assert json.loads((server.settings.inbox / f"{request_id}.json").read_text()) == {
        "request_id": request_id, "file_name": "products.csv", "source": "api",
        "webhook_url": "https://hooks.example.com/done",
    }
    row = server.store.get_request(request_id)
    assert (row["source"], row["file_name"], row["webhook_url"]) == (
        "api", "products.csv", "https://hooks.example.com/done")

    status = requests.get(response.json()["status_url"], timeout=10)
    assert status.status_code == 200
    document = status.json()
    assert set(document) == REQUEST_KEYS
    assert document["status"] == "queued"
    assert document["counts"] == {"total": 0, "pending": 0, "processing": 0, "compressed": 0, "failed": 0}
    assert (document["output_csv_url"], document["errors"], document["products"]) == (None, [], [])
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
    assert (row["file_name"], row["webhook_url"]) == ("list.csv", "http://hooks.example.com/")
    assert (server.settings.inbox / f"{request_id}.csv").read_bytes() == CSV

    unnamed = requests.post(f"{server.url}/requests", data=CSV, headers={"Content-Type": "text/csv"}, timeout=10)
    assert server.store.get_request(unnamed.json()["request_id"])["file_name"] == "upload.csv"


def test_invalid_csv_is_422_with_every_problem_and_nothing_queued(api_server):
    server = api_server()
    response = upload(server, CSV_WITH_3_PROBLEMS)
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["code"] == "invalid_upload"
    assert [(e["row"], e["column"]) for e in body["errors"]] == [
        (2, "Product Name"), (3, "Input Image Urls"), (4, "Input Image Urls")]
    assert all(e["message"] for e in body["errors"])
    assert inbox(server) == []


def test_bad_webhook_url_is_reported_with_the_csv_problems(api_server):
    server = api_server()
    response = upload(server, webhook_url="ftp://hooks.example.com/")
    assert response.status_code == 422
    assert [e["column"] for e in response.json()["errors"]] == ["webhook_url"]

    both = upload(server, CSV_WITH_3_PROBLEMS, webhook_url="not a url")
    assert [e["column"] for e in both.json()["errors"]][0] == "webhook_url"
    assert len(both.json()["errors"]) == 4
    assert inbox(server) == []


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
    assert inbox(server) == []
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
    assert len([name for name in inbox(server) if name.endswith(".csv")]) == 2


def test_token_guards_everything_but_health_and_images(api_server):
    server = api_server(IMGPIPE_API_TOKEN="s3cret")
    image = server.settings.images_dir / "req" / "a.jpg"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\xff\xd8 jpeg bytes")
    good = {"Authorization": "Bearer s3cret"}

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        refused = upload(server, headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    accepted = upload(server, headers=good)
    assert accepted.status_code == 202
    status_url = accepted.json()["status_url"]
    assert requests.get(status_url, timeout=10).status_code == 401
    assert requests.get(status_url, headers=good, timeout=10).status_code == 200
    assert requests.get(f"{server.url}/openapi.json", timeout=10).status_code == 401
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
    server.store.finish_request(request_id, "completed")
    done = requests.get(output_url, timeout=10)
    assert done.status_code == 200
    assert done.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert done.content.decode() == output
    assert requests.get(f"{server.url}/requests/{request_id}", timeout=10).json()["output_csv_url"] == output_url


def test_failed_request_without_csv_shows_its_error(api_server):
    server = api_server()
    request_id = upload(server).json()["request_id"]
    server.store.finish_request(request_id, "failed", "the run crashed")
    document = requests.get(f"{server.url}/requests/{request_id}", timeout=10).json()
    assert document["status"] == "failed"
    assert document["output_csv_url"] is None
    assert document["errors"] == [{"row": None, "column": None, "message": "the run crashed"}]
    missing = requests.get(f"{server.url}/requests/{request_id}/output.csv", timeout=10)
    assert missing.status_code == 404


def test_request_document_lists_products_and_images_in_input_order(api_server):
    server = api_server()
    request_id = upload(server).json()["request_id"]
    # Deliberately out of order: the document must follow row_number and position.
    manifest = pd.DataFrame(
        [(2, "2", "Hat", 1, "https://e.com/c.jpg"),
         (1, "1.", "Shoe", 2, "https://e.com/b.jpg"),
         (1, "1.", "Shoe", 1, "https://e.com/a.jpg")],
        columns=["row_number", "serial", "product_name", "position", "input_url"],
    )
    server.store.start_processing(request_id, "run-1", manifest)
    server.store.record_results(request_id, [
        ImageResult("https://e.com/a.jpg", "compressed", output_url=f"{server.url}/images/{request_id}/a.jpg"),
        ImageResult("https://e.com/c.jpg", "failed", error="HTTP 404"),
    ])
    document = requests.get(f"{server.url}/requests/{request_id}", timeout=10).json()
    assert document["status"] == "processing"
    assert document["counts"] == {"total": 3, "pending": 1, "processing": 0, "compressed": 1, "failed": 1}
    assert document["products"] == [
        {"serial": "1.", "product_name": "Shoe", "images": [
            {"position": 1, "input_url": "https://e.com/a.jpg", "status": "compressed",
             "output_url": f"{server.url}/images/{request_id}/a.jpg", "error": None},
            {"position": 2, "input_url": "https://e.com/b.jpg", "status": "pending", "output_url": None,
             "error": None},
        ]},
        {"serial": "2", "product_name": "Hat", "images": [
            {"position": 1, "input_url": "https://e.com/c.jpg", "status": "failed", "output_url": None,
             "error": "HTTP 404"},
        ]},
    ]


def test_images_are_served_without_listing_or_escaping_the_folder(api_server):
    server = api_server()
    image = server.settings.images_dir / "req" / "a.webp"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"RIFF webp bytes")
    (server.settings.home / "secret.txt").write_text("secret")

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
        ("GET", "/requests", {}, None, 405, "method_not_allowed"),
        ("POST", "/requests", {"Content-Type": "application/json"}, b"{}", 415, "unsupported_media_type"),
        ("POST", "/requests", {"Content-Type": "multipart/form-data; boundary=x"}, b"garbage", 400, "bad_request"),
        ("POST", "/requests", {"Content-Type": "multipart/form-data; boundary=x"},
         b'--x\r\nContent-Disposition: form-data; name="other"\r\n\r\nv\r\n--x--\r\n', 422, "invalid_upload"),
    ]
    for method, path, headers, body, status, code in cases:
        got_status, got_body = raw_request(server.url, method, path, headers=headers, body=body)
        assert (got_status, json.loads(got_body)["error"]["code"]) == (status, code), path


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
                                      "/images/{path}", "/healthz", "/openapi.json"}
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
    assert set(schemas["Request"]["required"]) == REQUEST_KEYS
