"""A real `dagster-daemon` and the real REST API (`imgpipe api`, IMGPIPE_API_TOKEN set) process real requests:
`/metrics` is scraped during and after one and parsed with prometheus-client's parser (its image counters equal
the status store's counts, its histograms hold one observation per compressed image), and the report of a request
with a failed image is opened from its signed link in Debian's Chromium through Playwright, without the token:
both thumbnails of a product load, the failure reason shows. The screenshot lands in test-artifacts/."""
from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from imgpipe_tests.images import save_jpeg
from imgpipe_tests.servers import REPO, WebhookReceiver, product_csv, wait_for
from imgpipe_tests.test_e2e import TERMINAL, Stack

pytestmark = pytest.mark.e2e

TOKEN = "dashboard-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("report-stack"))
    stack.env["IMGPIPE_API_TOKEN"] = TOKEN
    stack.start()
    yield stack
    stack.stop()


def images(image_root: Path, image_server, count: int, kind: str = "img") -> list[str]:
    folder = uuid.uuid4().hex[:8]
    for i in range(count):
        save_jpeg(image_root / folder / f"{i}.jpg", quality=85, seed=i)
    return [image_server.url(f"{kind}/{folder}/{i}.jpg") for i in range(count)]


def submit(stack: Stack, csv_text: str, **fields) -> str:
    answer = requests.post(f"{stack.api}/requests", files={"file": ("products.csv", csv_text.encode(), "text/csv")},
                           data=fields, headers=AUTH, timeout=30)
    assert answer.status_code == 202, answer.text
    return answer.json()["request_id"]


def scrape(stack: Stack) -> dict[str, dict]:
    answer = requests.get(f"{stack.api}/metrics", headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    samples: dict[str, dict] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by_label(samples: dict, name: str, label: str) -> dict[str, int]:
    return {dict(labels)[label]: int(value) for labels, value in samples[name].items() if value}


def store_counts(stack: Stack) -> tuple[dict[str, int], dict[str, int]]:
    """Images and requests by status, asked of the status store with SQL of the test's own."""
    images = {r["status"]: int(r["n"]) for r in stack.store._rows(
        "SELECT status, count(*) AS n FROM images GROUP BY status")}
    requests_ = {r["status"]: int(r["n"]) for r in stack.store._rows(
        "SELECT status, count(*) AS n FROM requests GROUP BY status")}
    return images, requests_


def test_metrics_during_and_after_a_request_equal_the_status_store(stack, image_server, image_root):
    assert requests.get(f"{stack.api}/metrics", timeout=10).status_code == 401  # the token guards it
    receiver = WebhookReceiver()
    fast = images(image_root, image_server, 4)
    slow = images(image_root, image_server, 3, kind="slow/2")  # the request stays processing a few seconds
    request_id = submit(stack, product_csv([fast[:2] + slow[:1], fast[2:] + slow[1:],
                                            [image_server.url("status/404/gone.jpg")]]),
                        webhook_url=receiver.url())
    agreed_while_running = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        before = store_counts(stack)
        samples = scrape(stack)
        after = store_counts(stack)
        if before == after:  # nothing moved meanwhile (a status only moves forward): the scrape must agree
            assert by_label(samples, "imgpipe_images_total", "status") == before[0]
            assert by_label(samples, "imgpipe_requests_total", "status") == before[1]
            if before[1].get("processing"):
                agreed_while_running.append(before[0])
        if stack.store.get_request(request_id).status in TERMINAL:
            break
        time.sleep(0.2)
    assert agreed_while_running, "no scrape while the request was processing"
    assert any(counts.get("pending", 0) + counts.get("processing", 0) for counts in agreed_while_running)
    stack.wait_terminal(request_id, 10)
    assert wait_for(lambda: stack.store.webhook_deliveries(request_id), 30)

    samples = scrape(stack)
    images_now, requests_now = store_counts(stack)
    assert by_label(samples, "imgpipe_images_total", "status") == images_now == {"compressed": 7, "failed": 1}
    assert by_label(samples, "imgpipe_requests_total", "status") == requests_now == {"completed_with_errors": 1}
    rows = [i for i in stack.store.images(request_id) if i.status == "compressed"]
    for name, column in (("download", "download_seconds"), ("compress", "compress_seconds")):
        # One observation per compressed image, in the right buckets.
        histogram = f"imgpipe_image_{name}_seconds"
        assert samples[f"{histogram}_count"][()] == len(rows) == 7
        buckets = {float(dict(labels)["le"]): value for labels, value in samples[f"{histogram}_bucket"].items()}
        assert buckets[float("inf")] == 7
        for bound, value in buckets.items():
            assert value == sum(1 for row in rows if getattr(row, column) <= bound + 1e-6), (name, bound)
        assert samples[f"{histogram}_sum"][()] == pytest.approx(sum(getattr(row, column) for row in rows), rel=1e-4)
    assert by_label(samples, "imgpipe_images_obtained_total", "obtained") == {"fetched": 7}
    assert by_label(samples, "imgpipe_image_bytes_total", "direction") == {
        "in": sum(r.bytes_in for r in rows), "out": sum(r.bytes_out for r in rows)}
    assert by_label(samples, "imgpipe_webhook_attempts_total", "outcome") == {"delivered": 1}
    assert samples["imgpipe_oldest_queued_request_age_seconds"][()] == 0
    receiver.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install the Debian packages chromium "
                                                  "and chromium-driver (make test-system-deps does, as root)")
def test_the_report_opens_from_its_signed_link_in_a_browser(stack, image_server, image_root):
    playwright_api = pytest.importorskip("playwright.sync_api",
                                         reason="the playwright Python package is missing: pip install -e '.[dev]'")
    chair = images(image_root, image_server, 2)
    lamp = images(image_root, image_server, 1)
    broken = image_server.url("status/500/lamp-side.jpg")
    request_id = submit(stack, product_csv([chair, [lamp[0], broken]]))
    assert stack.wait_terminal(request_id, 90).status == "completed_with_errors"
    document = requests.get(f"{stack.api}/requests/{request_id}", params={"view": "summary"}, headers=AUTH,
                            timeout=10).json()
    link = document["report_url"]
    assert "signature=" in link
    [failed] = [i for i in stack.store.images(request_id) if i.status == "failed"]

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report-page.png").unlink(missing_ok=True)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(30_000)
            try:
                answer = page.goto(link)  # no token in the browser: the signed link alone
                assert answer.status == 200
                expect = playwright_api.expect
                expect(page.locator("#status")).to_have_text("completed_with_errors")
                expect(page.locator("#count-compressed")).to_have_text("3")
                expect(page.locator("#count-failed")).to_have_text("1")
                chair_rows = page.locator("#row-1 tr.image")
                expect(chair_rows).to_have_count(2)
                for side in ("before", "after"):  # both thumbnails of the first product's images, loaded
                    for thumbnail in chair_rows.locator(f"img.{side}").all():
                        thumbnail.scroll_into_view_if_needed()
                        expect(thumbnail).to_be_visible()
                        assert page.wait_for_function(
                            "image => image.complete && image.naturalWidth > 0", arg=thumbnail.element_handle())
                        assert thumbnail.evaluate("image => image.naturalWidth") > 0
                failed_row = page.locator(f"#image-2-{failed.position}")
                expect(failed_row.locator(".reason")).to_contain_text("HTTP 500")
                expect(failed_row.locator(".reason")).to_have_text(failed.error)
                expect(failed_row.locator("img")).to_have_count(0)
                page.screenshot(path=str(ARTIFACTS / "report-page.png"), full_page=True)
                # The signed link opens the report, not the JSON API.
                query = link.split("?", 1)[1]
                api_answer = page.goto(f"{stack.api}/requests/{request_id}?{query}")
                assert api_answer.status == 401
            except BaseException:
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(ARTIFACTS / "report-failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    assert (ARTIFACTS / "report-page.png").stat().st_size > 10_000
