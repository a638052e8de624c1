"""The served OpenAPI document: every contract endpoint with every status it can answer and the links of an
accepted upload; and live answers of every kind validated against it (status documented, media type documented,
JSON body valid against its schema)."""
from __future__ import annotations

import json

import jsonschema
import pytest
import requests

from imgpipe.status.models import ImageResult, ImageStatus, RequestStatus
from imgpipe_tests.test_api import CSV, CSV_WITH_3_PROBLEMS, REQUEST_KEYS, raw_request

TOKEN = "openapi-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Every contract endpoint and the statuses it can answer; with the token set, 400 for a credential given twice.
EXPECTED = {
    ("/requests", "post"): {"202", "400", "401", "413", "415", "422", "503"},
    ("/requests", "get"): {"200", "400", "401", "422", "503"},
    ("/requests/{request_id}", "get"): {"200", "400", "401", "404", "410", "422", "503"},
    ("/requests/{request_id}/report", "get"): {"200", "400", "401", "404", "410", "422", "503"},
    ("/requests/{request_id}/report/thumbs/{name}", "get"): {"200", "400", "401", "404", "422"},
    ("/metrics", "get"): {"200", "400", "401", "503"},
    ("/requests/{request_id}/output.csv", "get"): {"200", "400", "401", "404", "409", "410", "503"},
    ("/images/{path}", "get"): {"200", "404", "422"},  # 422: a `w` out of its range
    ("/healthz", "get"): {"200", "503"},
    ("/openapi.json", "get"): {"200", "400", "401"},
}
OPEN = {("/images/{path}", "get"), ("/healthz", "get")}


def get_document(server, headers=AUTH) -> dict:
    response = requests.get(f"{server.url}/openapi.json", headers=headers, timeout=10)
    assert response.status_code == 200
    return response.json()


def test_every_contract_endpoint_and_status_is_documented_with_the_links(api_server):
    server = api_server(IMGPIPE_API_TOKEN=TOKEN)
    document = get_document(server)
    assert document["openapi"].startswith("3.1")
    assert {(path, method): set(operation["responses"]) for path, operations in document["paths"].items()
            for method, operation in operations.items()} == EXPECTED
    assert document["components"]["securitySchemes"] == {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    for (path, method) in EXPECTED:
        operation = document["paths"][path][method]
        assert operation["security"] == ([] if (path, method) in OPEN else [{"bearerAuth": []}]), path

    create = document["paths"]["/requests"]["post"]
    assert create["operationId"] == "createRequest"
    links = create["responses"]["202"]["links"]
    assert {name: (link["operationId"], link["parameters"]) for name, link in links.items()} == {
        "GetRequest": ("getRequest", {"request_id": "$response.body#/request_id"}),
        "GetOutputCsv": ("getOutputCsv", {"request_id": "$response.body#/request_id"}),
    }
    operation_ids = {op["operationId"] for ops in document["paths"].values() for op in ops.values()}
    assert {"getRequest", "getOutputCsv"} <= operation_ids
    # Both request bodies, the form's `file` required.
    content = create["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "text/csv"}
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    assert set(content["multipart/form-data"]["schema"]["properties"]) == {"file", "webhook_url"}
    assert {(p["in"], p["name"]) for p in create["parameters"]} == {
        ("header", "Idempotency-Key"), ("query", "webhook_url"), ("query", "file_name"), ("query", "fresh"),
        ("query", "renditions"), ("query", "widths")}
    assert "Location" in create["responses"]["202"]["headers"]
    # The error shapes: `error` everywhere, `errors` on 422; the status document is RequestDocument.
    schemas = document["components"]["schemas"]
    assert create["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InvalidBody"}
    assert set(schemas["InvalidBody"]["required"]) == {"error", "errors"}
    assert schemas["ErrorBody"]["required"] == ["error"]
    assert set(schemas["RequestDocument"]["required"]) == REQUEST_KEYS
    # The whole document, a page of it (?limit/?offset) or its summary (?view=summary).
    get_request = document["paths"]["/requests/{request_id}"]["get"]
    assert get_request["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"] == [
        {"$ref": f"#/components/schemas/{name}"} for name in ("RequestDocument", "RequestPage", "RequestSummary")]
    assert set(schemas["RequestPage"]["required"]) == REQUEST_KEYS | {"products_total"}
    assert set(schemas["RequestSummary"]["required"]) == REQUEST_KEYS - {"products"} | {"products_total"}
    parameters = {p["name"]: p for p in get_request["parameters"] if p["in"] == "query"}
    assert set(parameters) == {"view", "offset", "limit"}
    assert parameters["view"]["schema"]["enum"] == ["full", "summary"]
    assert (parameters["offset"]["schema"]["minimum"], parameters["limit"]["schema"]["minimum"]) == (0, 1)
    # The list of requests: each a RequestSummary, the statuses a documented comma list.
    list_requests = document["paths"]["/requests"]["get"]
    assert list_requests["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RequestList"}
    assert schemas["RequestList"]["properties"]["requests"]["items"] == {"$ref": "#/components/schemas/RequestSummary"}
    assert set(schemas["RequestList"]["required"]) == {"requests", "requests_total"}
    parameters = {p["name"]: p["schema"] for p in list_requests["parameters"] if p["in"] == "query"}
    assert set(parameters) == {"status", "limit", "offset"}
    assert parameters["status"]["pattern"].startswith("^(?:queued|processing|")
    assert (parameters["limit"]["minimum"], parameters["limit"]["maximum"], parameters["limit"]["default"],
            parameters["offset"]["minimum"]) == (1, 500, 50, 0)
    report = document["paths"]["/requests/{request_id}/report"]["get"]
    assert set(report["responses"]["200"]["content"]) == {"text/html"}
    assert {p["name"] for p in report["parameters"] if p["in"] == "query"} == {"offset", "limit", "expires",
                                                                              "signature"}
    assert set(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    # Nothing left of FastAPI's own validation error shape, which the API never answers with.
    assert "HTTPValidationError" not in json.dumps(document)


def test_without_a_token_the_document_asks_for_none(api_server):
    document = get_document(api_server(), headers={})
    assert document["components"]["securitySchemes"] == {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["security"] == [], path
            # No 401, and no 400 for a credential given twice (a malformed upload's 400 stays).
            twice = {"400"} if (path, method) != ("/requests", "post") else set()
            assert set(operation["responses"]) == EXPECTED[(path, method)] - {"401"} - twice, path


class LiveChecker:
    """Validates answers against the served document: the status is documented for the operation, so is the
    media type, and a JSON body is valid against its schema (formats checked)."""

    def __init__(self, document: dict):
        self.document = document
        self.seen: set[tuple[str, str, str]] = set()

    def check(self, response: requests.Response, path: str, method: str = "get") -> requests.Response:
        operation = self.document["paths"][path][method]
        status = str(response.status_code)
        assert status in operation["responses"], (path, method, status, response.text[:500])
        declared = operation["responses"][status].get("content", {})
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        assert media_type in declared, (path, method, status, media_type, list(declared))
        if media_type == "application/json":
            schema = {**declared[media_type]["schema"], "components": self.document["components"]}
            validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                      for e in validator.iter_errors(response.json())]
            assert not errors, (path, method, status, errors, response.text[:500])
        self.seen.add((path, method, status))
        return response


@pytest.fixture
def live(api_server):
    server = api_server(IMGPIPE_API_TOKEN=TOKEN, IMGPIPE_MAX_CSV_BYTES="2000")
    return server, LiveChecker(get_document(server))


def test_live_answers_match_the_document(live):
    server, checker = live
    url = server.url

    def post(data=None, files=None, headers=None, **kwargs):
        return requests.post(f"{url}/requests", data=data, files=files, headers={**AUTH, **(headers or {})},
                             timeout=10, **kwargs)

    def get(path, headers=AUTH):
        return requests.get(f"{url}{path}", headers=headers, timeout=10)

    # 202, both ways, and the status document it links to.
    accepted = checker.check(post(files={"file": ("a.csv", CSV)}, data={"webhook_url": "https://h.example.com/"}),
                             "/requests", "post")
    assert accepted.status_code == 202 and accepted.headers["Location"] == accepted.json()["status_url"]
    request_id = accepted.json()["request_id"]
    raw = checker.check(post(data=CSV, headers={"Content-Type": "text/csv"}, params={"file_name": "b.csv"}),
                        "/requests", "post")
    assert raw.status_code == 202
    document = checker.check(get(f"/requests/{request_id}"), "/requests/{request_id}")
    assert document.status_code == 200 and document.json()["status"] == "queued"
    # 409 until it ends; then 200 with the CSV, images served, and the full document.
    assert checker.check(get(f"/requests/{request_id}/output.csv"),
                         "/requests/{request_id}/output.csv").status_code == 409
    storage_url = f"{url}/images/{request_id}"
    (server.settings.images_dir / request_id).mkdir(parents=True)
    (server.settings.images_dir / request_id / "s1.jpg").write_bytes(b"\xff\xd8\xff jpeg")
    (server.settings.images_dir / request_id / "s2.webp").write_bytes(b"RIFF webp")
    server.store.start_processing(request_id, "run-1")
    server.store.record_results(request_id, [ImageResult("https://e.com/a.jpg", ImageStatus.COMPRESSED,
                                                         output_url=f"{storage_url}/s1.jpg")])
    (server.settings.outputs_dir / f"{request_id}.csv").write_bytes(b"S. No.,Product Name\r\n")
    server.store.finish_request(request_id, RequestStatus.COMPLETED)
    output = checker.check(get(f"/requests/{request_id}/output.csv"), "/requests/{request_id}/output.csv")
    assert output.status_code == 200
    done = checker.check(get(f"/requests/{request_id}"), "/requests/{request_id}")
    assert (done.json()["status"], done.json()["counts"]["compressed"]) == ("completed", 1)
    for name in ("s1.jpg", "s2.webp"):
        assert checker.check(get(f"/images/{request_id}/{name}", headers={}), "/images/{path}").status_code == 200
    assert checker.check(get(f"/images/{request_id}/none.jpg", headers={}), "/images/{path}").status_code == 404
    # 404s: unknown request, and a failed request without an output CSV.
    assert checker.check(get("/requests/unknown"), "/requests/{request_id}").status_code == 404
    assert checker.check(get("/requests/unknown/output.csv"), "/requests/{request_id}/output.csv").status_code == 404
    failed = post(data=CSV, headers={"Content-Type": "text/csv"}).json()["request_id"]
    server.store.finish_request(failed, RequestStatus.FAILED, "the run crashed")
    assert checker.check(get(f"/requests/{failed}/output.csv"),
                         "/requests/{request_id}/output.csv").status_code == 404
    assert checker.check(get(f"/requests/{failed}"), "/requests/{request_id}").json()["errors"][0]["message"] == (
        "the run crashed")

    # 422: an invalid CSV (recorded, with its request ID), and problems outside the CSV (recorded nowhere).
    invalid = checker.check(post(files={"file": ("bad.csv", CSV_WITH_3_PROBLEMS)}), "/requests", "post")
    assert invalid.status_code == 422 and invalid.json()["request_id"]
    rejected = checker.check(get(f"/requests/{invalid.json()['request_id']}"), "/requests/{request_id}")
    assert rejected.json()["status"] == "rejected"
    bad_webhook = checker.check(post(files={"file": ("a.csv", CSV)}, data={"webhook_url": "ftp://x"}),
                                "/requests", "post")
    assert bad_webhook.status_code == 422 and "request_id" not in bad_webhook.json()
    # 413, 415, 400, 401.
    assert checker.check(post(data=CSV * 30, headers={"Content-Type": "text/csv"}),
                         "/requests", "post").status_code == 413
    assert checker.check(post(data=b"{}", headers={"Content-Type": "application/json"}),
                         "/requests", "post").status_code == 415
    assert checker.check(post(data=b"junk", headers={"Content-Type": "multipart/form-data; boundary=x"}),
                         "/requests", "post").status_code == 400
    for path, template, method in (("/requests", "/requests", "post"),
                                   (f"/requests/{request_id}", "/requests/{request_id}", "get"),
                                   (f"/requests/{request_id}/output.csv", "/requests/{request_id}/output.csv", "get"),
                                   ("/openapi.json", "/openapi.json", "get")):
        refused = requests.request(method, f"{url}{path}", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert checker.check(refused, template, method).status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert checker.check(get("/openapi.json"), "/openapi.json").status_code == 200
    assert checker.check(get("/healthz", headers={}), "/healthz").status_code == 200
    # 503 once the store is unreadable.
    server.settings.db_path.write_bytes(b"not a database" * 100)
    assert checker.check(get("/healthz", headers={}), "/healthz").status_code == 503

    assert {status for _, _, status in checker.seen} >= {"200", "202", "400", "401", "404", "409", "413", "415",
                                                         "422", "503"}


def test_a_raw_path_answer_is_checked_too(live):
    """`..` and encoded `..` under /images/ are a 404 in the documented shape."""
    server, checker = live
    for path in ("/images/../../etc/passwd", "/images/%2e%2e/%2e%2e/x.jpg", "/images/req/"):
        status, body = raw_request(server.url, "GET", path)
        assert status == 404
        schema = {**checker.document["paths"]["/images/{path}"]["get"]["responses"]["404"]["content"][
            "application/json"]["schema"], "components": checker.document["components"]}
        jsonschema.validate(json.loads(body), schema, cls=jsonschema.Draft202012Validator)


def test_live_answers_of_pages_summaries_reports_and_metrics_match_the_document(live):
    from imgpipe_tests.test_api_report import seed_finished_request

    server, checker = live
    url = server.url
    request_id = seed_finished_request(server)

    def get(path, headers=AUTH, **params):
        return requests.get(f"{url}{path}", headers=headers, params=params, timeout=10)

    template = "/requests/{request_id}"
    whole = checker.check(get(f"/requests/{request_id}"), template).json()
    page = checker.check(get(f"/requests/{request_id}", offset=1, limit=1), template).json()
    summary = checker.check(get(f"/requests/{request_id}", view="summary"), template).json()
    assert (len(whole["products"]), len(page["products"]), page["products_total"]) == (2, 1, 2)
    assert "products" not in summary and summary["products_total"] == 2
    assert checker.check(get(f"/requests/{request_id}", limit=0), template).status_code == 422
    listed = checker.check(get("/requests", status="completed_with_errors,failed"), "/requests").json()
    assert (listed["requests"], listed["requests_total"]) == ([summary], 1)
    assert checker.check(get("/requests", status="done"), "/requests").status_code == 422
    assert checker.check(get("/requests", offset=-1), "/requests").status_code == 422
    assert checker.check(get("/requests", headers={}), "/requests").status_code == 401
    report = "/requests/{request_id}/report"
    assert checker.check(get(f"/requests/{request_id}/report"), report).status_code == 200
    assert checker.check(get(f"/requests/{request_id}/report", limit=10_000), report).status_code == 422
    assert checker.check(get("/requests/unknown/report"), report).status_code == 404
    signed = dict(pair.split("=") for pair in summary["report_url"].split("?")[1].split("&"))
    assert checker.check(get(f"/requests/{request_id}/report", headers={}, **signed), report).status_code == 200
    wrong = {**signed, "signature": "x" * 43}
    assert checker.check(get(f"/requests/{request_id}/report", headers={}, **wrong), report).status_code == 401
    thumbs = "/requests/{request_id}/report/thumbs/{name}"
    assert checker.check(get(f"/requests/{request_id}/report/thumbs/r1-p1.after.jpg", headers={}, **signed),
                         thumbs).status_code == 200
    assert checker.check(get(f"/requests/{request_id}/report/thumbs/nope.jpg"), thumbs).status_code == 404
    assert checker.check(get("/metrics"), "/metrics").status_code == 200
    assert checker.check(get("/metrics", headers={}), "/metrics").status_code == 401
