"""`GET /metrics` (over real HTTP, parsed with prometheus-client's own parser) and the API's log lines
(IMGPIPE_LOG_FORMAT=json, `imgpipe api` as a process). Metrics during and after a request processed by a real
daemon: test_report_and_metrics.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from imgpipe.backends import Backends, open_storage
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.status.models import ImageResult, ImageStatus, RequestStatus, Source, utcnow
from imgpipe_tests.servers import REPO, IsolatedHome, free_port, wait_for

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CSV = b"S. No.,Product Name,Input Image Urls\n1,Shoe,\"https://e.com/a.jpg, https://e.com/b.jpg, https://e.com/c.jpg\"\n"


def scrape(url: str, headers=None) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label pairs: value}} of one scrape."""
    answer = requests.get(f"{url}/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples[name].items()}


def test_metrics_want_the_token_unless_they_are_public(api_server):
    guarded = api_server(IMGPIPE_API_TOKEN=TOKEN)
    refused = requests.get(f"{guarded.url}/metrics", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert "imgpipe_images_total" in scrape(guarded.url, AUTH)

    public = api_server(IMGPIPE_API_TOKEN=TOKEN, IMGPIPE_METRICS_PUBLIC="1")
    assert "imgpipe_requests_total" in scrape(public.url)
    assert requests.get(f"{public.url}/requests/x", timeout=10).status_code == 401
    assert requests.get(f"{public.url}/openapi.json", timeout=10).status_code == 401
    document = requests.get(f"{public.url}/openapi.json", headers=AUTH, timeout=10).json()
    assert document["paths"]["/metrics"]["get"]["security"] == []


def test_metrics_are_what_the_status_store_holds(api_server):
    server = api_server()
    store = server.store
    backends = Backends(server.settings, store, open_storage(server.settings))
    assert scrape(server.url)["imgpipe_oldest_queued_request_age_seconds"][()] == 0
    finished = take_upload(backends, Upload(CSV, "a.csv", Source.API)).request_id
    store.start_processing(finished, "run-1")
    store.record_results(finished, [
        ImageResult("https://e.com/a.jpg", ImageStatus.COMPRESSED, bytes_in=1000, bytes_out=300, obtained="fetched",
                    download_seconds=0.2, compress_seconds=0.1),
        ImageResult("https://e.com/b.jpg", ImageStatus.COMPRESSED, bytes_in=500, bytes_out=500,
                    obtained="same_content", download_seconds=3.0, compress_seconds=0.0),
        ImageResult("https://e.com/c.jpg", ImageStatus.FAILED, error="HTTP 404")])
    store.finish_request(finished, RequestStatus.COMPLETED_WITH_ERRORS)
    queued = take_upload(backends, Upload(CSV, "b.csv", Source.FOLDER)).request_id
    take_upload(backends, Upload(b"no csv at all", "c.csv", Source.FOLDER))
    for outcome in ((503, None), (None, "blocked: 10.0.0.1 is a private address"), (None, "network error"), (204, None)):
        store.enqueue_webhook(webhook_id=f"msg_{outcome}", request_id=finished, url="https://h.example/",
                              event_type="request.completed", payload=b"{}")
        entry = store.claim_webhook(f"msg_{outcome}", 30)
        store.record_webhook_attempt(entry, status_code=outcome[0], error=outcome[1], attempted_at=utcnow(),
                                     state="delivered", next_attempt_at=None)

    samples = scrape(server.url)

    assert by_label(samples, "imgpipe_requests_total", "status") == {
        "queued": 1, "processing": 0, "completed": 0, "completed_with_errors": 1, "failed": 0, "rejected": 1}
    assert by_label(samples, "imgpipe_images_total", "status") == {
        "pending": 3, "processing": 0, "compressed": 2, "failed": 1}
    assert by_label(samples, "imgpipe_images_obtained_total", "obtained") == {
        "fetched": 1, "not_modified": 0, "same_content": 1}
    assert by_label(samples, "imgpipe_image_bytes_total", "direction") == {"in": 1500, "out": 800}
    download = by_label(samples, "imgpipe_image_download_seconds_bucket", "le")
    assert (download["0.1"], download["0.25"], download["2.5"], download["5.0"], download["+Inf"]) == (0, 1, 1, 2, 2)
    assert samples["imgpipe_image_download_seconds_count"][()] == 2
    assert samples["imgpipe_image_download_seconds_sum"][()] == pytest.approx(3.2)
    compress = by_label(samples, "imgpipe_image_compress_seconds_bucket", "le")
    assert (compress["0.01"], compress["0.1"], compress["+Inf"]) == (1, 2, 2)
    assert by_label(samples, "imgpipe_webhook_attempts_total", "outcome") == {
        "delivered": 1, "http_3xx": 0, "http_4xx": 0, "http_5xx": 1, "blocked": 1, "network_error": 1}
    waited = samples["imgpipe_oldest_queued_request_age_seconds"][()]
    row = store.get_request(queued)
    assert 0 < waited < (utcnow() - row.updated_at).total_seconds() + 1


def test_api_log_lines_in_json_carry_the_request_id(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    isolated = IsolatedHome.create(tmp_path, public_base_url=url)
    env = {**isolated.env, "IMGPIPE_LOG_FORMAT": "json"}
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "imgpipe"), "api", "--port", str(port)], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for(lambda: _answers(f"{url}/healthz"), 30)
        accepted = requests.post(f"{url}/requests", data=CSV, headers={"Content-Type": "text/csv"}, timeout=10)
        request_id = accepted.json()["request_id"]
        assert requests.get(f"{url}/requests/{request_id}", timeout=10).status_code == 200
        rejected = requests.post(f"{url}/requests", data=b"S. No.\n1\n", headers={"Content-Type": "text/csv"},
                                 timeout=10).json()["request_id"]
        # A malformed multipart body: a 400, and no warning of python-multipart's in the log.
        assert requests.post(f"{url}/requests", data=b"--x\r\njunk", timeout=10,
                             headers={"Content-Type": "multipart/form-data; boundary=x"}).status_code == 400
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # each one JSON
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    events = {(line.get("event"), line.get("request_id")) for line in lines if line["logger"] == "imgpipe.api"}
    assert events == {("accepted", request_id), ("rejected", rejected)}
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any(line.get("request_id") == request_id and f"GET /requests/{request_id}" in line["message"]
               for line in access), access
    posts = [line.get("request_id") for line in access if "POST /requests" in line["message"]]
    assert posts == [request_id, rejected, None], access  # the malformed body never became a request
    assert not [line for line in lines if line["level"] == "warning"], lines


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
