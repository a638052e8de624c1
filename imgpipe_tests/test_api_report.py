"""The report (`GET /requests/{id}/report`), its signed links, and the paged status document, over real HTTP
against the API in a thread (`api_server`), over a request taken in by the real intake with its results and
thumbnails recorded as the pipeline records them. The report in a real browser after a real daemon:
test_report_and_metrics.py."""
from __future__ import annotations

import io
import json
import logging
import re
import time
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image

from imgpipe import report_links
from imgpipe.backends import Backends, open_storage
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.status.models import ImageResult, ImageStatus, RequestStatus, Source
from imgpipe_tests.images import photo_like
from imgpipe_tests.test_api import raw_request

TOKEN = "report-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CSV = (b"S. No.,Product Name,Input Image Urls\n"
       b"1,Oak Chair,\"https://shop.example/chair-front.jpg, https://shop.example/chair-side.jpg\"\n"
       b"2,Lamp <b>bright</b>,https://shop.example/lamp.jpg\n")


def jpeg(width: int, height: int, seed: int, quality: int = 85) -> bytes:
    out = io.BytesIO()
    photo_like(width, height, seed).save(out, "JPEG", quality=quality)
    return out.getvalue()


def seed_finished_request(server) -> str:
    """A request of two products, one image of which failed, ended as the pipeline ends one: images and
    thumbnails in the storage, results in the store, output CSV, then the terminal status."""
    settings, store, storage = server.settings, server.store, open_storage(server.settings)
    backends = Backends(settings, store, storage)
    request_id = take_upload(backends, Upload(CSV, "chairs.csv", Source.API)).request_id
    store.start_processing(request_id, "run-1")
    results = []
    for stem, url, seed in (("r1-p1", "https://shop.example/chair-front.jpg", 1),
                            ("r1-p2", "https://shop.example/chair-side.jpg", 2)):
        before, after = jpeg(160, 120, seed), jpeg(160, 120, seed, quality=40)
        image = storage.write_image(request_id, f"{stem}.jpg", jpeg(640, 480, seed, quality=42))
        storage.write_thumbnails(request_id, stem, before, after)
        results.append(ImageResult(url, ImageStatus.COMPRESSED, output_path=image.path, output_url=image.url,
                                   bytes_in=40_000, bytes_out=14_000, quality_in=85, quality_out=42,
                                   format_out="JPEG", obtained="fetched", download_seconds=0.2,
                                   compress_seconds=0.1))
    results.append(ImageResult("https://shop.example/lamp.jpg", ImageStatus.FAILED,
                               error="download failed: HTTP 404 from https://shop.example/lamp.jpg"))
    store.record_results(request_id, results)
    storage.write_output_csv(request_id, b"S. No.,Product Name,Input Image Urls,Output Image Urls\r\n")
    store.finish_request(request_id, RequestStatus.COMPLETED_WITH_ERRORS)
    return request_id


class Page(HTMLParser):
    """What a browser would fetch from the page: image sources, links, and whether any script is there."""

    def __init__(self, html: str):
        super().__init__()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.scripts = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "script" or any(name.startswith("on") for name in attrs):
            self.scripts += 1


def signed_report_url(server, request_id: str) -> str:
    document = requests.get(f"{server.url}/requests/{request_id}?view=summary", headers=AUTH, timeout=10)
    assert document.status_code == 200, document.text
    return document.json()["report_url"]


def test_a_signed_report_link_opens_the_report_and_its_thumbnails_without_the_token(api_server):
    server = api_server(IMGPIPE_API_TOKEN=TOKEN)
    request_id = seed_finished_request(server)
    link = signed_report_url(server, request_id)
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{server.url}/requests/{request_id}/report"
    query = parse_qs(parts.query)
    assert set(query) == {"expires", "signature"}
    # Between 7 and 8 days, and the same all day long.
    assert 7 * 86400 <= int(query["expires"][0]) - time.time() <= 8 * 86400
    assert signed_report_url(server, request_id) == link

    page = requests.get(link, timeout=10)  # no token

    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script at all
    assert page.headers["referrer-policy"] == "no-referrer"
    html = page.text
    parsed = Page(html)
    assert parsed.scripts == 0
    assert "Lamp &lt;b&gt;bright&lt;/b&gt;" in html and "<b>bright</b>" not in html
    assert "download failed: HTTP 404 from https://shop.example/lamp.jpg" in html
    assert re.search(r'id="count-compressed">2<', html) and re.search(r'id="count-failed">1<', html)
    assert "65.0%" in html  # 80,000 bytes in, 28,000 out
    sources = [img["src"] for img in parsed.images]
    assert [s.split("?")[0] for s in sources] == [f"report/thumbs/r1-p{p}.{side}.jpg" for p in (1, 2)
                                                  for side in ("before", "after")]
    for source in sources:  # relative to the page, carrying the page's signature
        thumbnail = requests.get(f"{server.url}/requests/{request_id}/{source}", timeout=10)
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumbnail.content)).size == (160, 120)
        assert parse_qs(urlsplit(source).query) == query
    # With the token, the plain path opens too; without either it is refused.
    assert requests.get(f"{server.url}/requests/{request_id}/report", headers=AUTH, timeout=10).status_code == 200
    refused = requests.get(f"{server.url}/requests/{request_id}/report", timeout=10)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"


def test_a_signed_link_that_expired_or_was_changed_or_moved_opens_nothing(api_server):
    server = api_server(IMGPIPE_API_TOKEN=TOKEN)
    request_id = seed_finished_request(server)
    other_id = seed_finished_request(server)
    query = parse_qs(urlsplit(signed_report_url(server, request_id)).query)
    expires, signature = query["expires"][0], query["signature"][0]

    def get(path: str, expires: str = expires, signature: str = signature) -> requests.Response:
        return requests.get(f"{server.url}{path}", params={"expires": expires, "signature": signature}, timeout=10)

    report = f"/requests/{request_id}/report"
    assert get(report).status_code == 200
    # Expired: a correct signature of a time already past.
    past = int(time.time()) - 1
    expired = get(report, str(past), report_links.signature(TOKEN, report, past))
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    # Tampered: another expiry, another signature, a signature made with another token.
    for changed in (get(report, str(int(expires) + 86400)),
                    get(report, signature=("A" if signature[0] != "A" else "B") + signature[1:]),
                    get(report, signature=report_links.signature("another-token", report, int(expires))),
                    get(report, signature=""), get(report, expires="soon")):
        assert changed.status_code in (401, 422), changed.text
        assert changed.status_code == 401 or changed.json()["error"]["code"] == "invalid_request"
    assert "does not match" in get(report, str(int(expires) + 86400)).json()["error"]["message"]
    # Other paths: another request's report and thumbnails, the JSON API, the output CSV, metrics, the document.
    for path in (f"/requests/{other_id}/report", f"/requests/{other_id}/report/thumbs/r1-p1.before.jpg",
                 f"/requests/{request_id}", f"/requests/{request_id}/output.csv", "/requests", "/metrics",
                 "/openapi.json", f"/requests/{request_id}/report/../../{other_id}/report"):
        moved = get(path)
        assert moved.status_code == 401, (path, moved.status_code, moved.text[:200])
    # The thumbnails of the report the link was made for do open.
    assert get(f"{report}/thumbs/r1-p2.after.jpg").status_code == 200
    assert get(f"{report}/thumbs/r9-p9.after.jpg").status_code == 404
    # Sent as written (requests would resolve the dots): a signed path never leads anywhere else.
    signed = f"?expires={expires}&signature={signature}"
    assert raw_request(server.url, "GET", f"{report}/thumbs/..{signed}")[0] == 404
    assert raw_request(server.url, "GET", f"{report}/../../{other_id}/report{signed}")[0] == 401
    assert raw_request(server.url, "GET", f"{report}/thumbs/%2e%2e%2f%2e%2e%2f{other_id}{signed}")[0] == 401


def test_without_a_token_the_report_is_open_and_its_link_is_the_plain_path(api_server):
    server = api_server()
    request_id = seed_finished_request(server)
    document = requests.get(f"{server.url}/requests/{request_id}", timeout=10).json()
    assert document["report_url"] == f"{server.url}/requests/{request_id}/report"
    page = requests.get(document["report_url"], timeout=10)
    assert page.status_code == 200 and "?expires" not in page.text
    assert requests.get(f"{server.url}/requests/{request_id}/report/thumbs/r1-p1.before.jpg",
                        timeout=10).status_code == 200
    assert requests.get(f"{server.url}/requests/unknown/report", timeout=10).status_code == 404


def big_csv(products: int, per_product: int) -> bytes:
    rows = ["S. No.,Product Name,Input Image Urls"]
    rows += [f'{p},Product {p},"' + ", ".join(f"https://cdn.example/{p}/{i}.jpg" for i in range(1, per_product + 1))
             + '"' for p in range(1, products + 1)]
    return ("\n".join(rows) + "\n").encode()


def test_paging_through_a_5000_image_request_gives_every_image_exactly_once(api_server):
    server = api_server()
    upload = requests.post(f"{server.url}/requests", data=big_csv(1000, 5), headers={"Content-Type": "text/csv"},
                           timeout=60)
    assert upload.status_code == 202, upload.text
    request_id = upload.json()["request_id"]
    url = f"{server.url}/requests/{request_id}"

    seen, products, offset = [], [], 0
    while True:
        page = requests.get(url, params={"offset": offset, "limit": 137}, timeout=30)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["products_total"] == 1000 and body["counts"]["total"] == 5000
        if not body["products"]:
            break
        assert len(body["products"]) == min(137, 1000 - offset)
        products += [p["serial"] for p in body["products"]]
        seen += [(p["serial"], i["position"], i["input_url"]) for p in body["products"] for i in p["images"]]
        offset += 137
    assert products == [str(p) for p in range(1, 1001)]
    assert len(seen) == 5000 and len(set(seen)) == 5000
    assert seen == [(str(p), i, f"https://cdn.example/{p}/{i}.jpg") for p in range(1, 1001) for i in range(1, 6)]

    summary = requests.get(url, params={"view": "summary"}, timeout=30).json()
    assert "products" not in summary and summary["products_total"] == 1000
    assert summary["counts"] == {"total": 5000, "pending": 5000, "processing": 0, "compressed": 0, "failed": 0}
    # Without parameters: the answer as before, every product, no products_total.
    whole = requests.get(url, timeout=30).json()
    assert "products_total" not in whole and len(whole["products"]) == 1000
    assert [(p["serial"], i["position"], i["input_url"]) for p in whole["products"] for i in p["images"]] == seen
    # limit alone starts at 0; offset alone runs to the end; out of range is a 422 in the error shape.
    assert [p["serial"] for p in requests.get(url, params={"limit": 2}, timeout=30).json()["products"]] == ["1", "2"]
    assert len(requests.get(url, params={"offset": 998}, timeout=30).json()["products"]) == 2
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"view": "everything"}):
        refused = requests.get(url, params=params, timeout=30)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_request", params
    # The report pages too: 50 products a page, linked to the next.
    report = requests.get(f"{url}/report", params={"offset": 50}, timeout=30)
    assert report.status_code == 200 and "products 51–100 of 1000" in report.text
    links = Page(report.text).links
    assert "?offset=0&limit=50" in links and "?offset=100&limit=50" in links
    assert report.text.count('class="product"') == 50


@pytest.mark.parametrize("view", ["full", "summary"])
def test_a_purged_or_unknown_request_has_no_report(api_server, view):
    server = api_server()
    request_id = seed_finished_request(server)
    store = server.store
    store.purge_request(request_id)
    assert requests.get(f"{server.url}/requests/{request_id}/report", timeout=10).status_code == 410
    assert requests.get(f"{server.url}/requests/{request_id}", params={"view": view}, timeout=10).status_code == 410


def test_the_output_csv_assets_metadata_links_the_report(api_server):
    """`request_metadata` (what the `output_csv` asset's materialization shows in the Dagster UI) of a request
    ended by the real `complete_request`: its `report_url` is the report's lasting path, which the token opens."""
    from dagster import MetadataValue

    from imgpipe.defs.metadata import request_metadata
    from imgpipe.output.completion import complete_request

    server = api_server(IMGPIPE_API_TOKEN=TOKEN)
    request_id = seed_finished_request(server)
    completion = complete_request(Backends(server.settings, server.store, open_storage(server.settings)), request_id,
                                  "run-2")

    link = request_metadata(completion)["report_url"]

    assert link == MetadataValue.url(f"{server.url}/requests/{request_id}/report")
    assert requests.get(link.value, headers=AUTH, timeout=10).status_code == 200


# `expires` as it may come in a query: Unicode digits that str.isdigit() takes (int() refuses the first two,
# takes the Arabic-Indic ones) and the spellings int() reads but a link never has.
NOT_ASCII_DIGITS = ["%C2%B2", "%E2%91%A0", "%D9%A1%D9%A7%D9%A0%D9%A0", "%EF%BC%91%EF%BC%97", "1_700_000_000",
                    "+1700000000", "%201700000000", "-1"]


@pytest.mark.parametrize("expires", NOT_ASCII_DIGITS)
def test_an_expiry_that_is_not_ascii_digits_is_refused_with_401_and_no_traceback(api_server, caplog, expires):
    server = api_server(IMGPIPE_API_TOKEN=TOKEN)
    # uvicorn logs an application's exception on "uvicorn.error", which does not propagate to the root logger.
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(caplog.handler)
    try:
        for path in ("/requests/x/report", "/requests/x/report/thumbs/r1-p1.before.jpg"):
            status, body = raw_request(server.url, "GET", f"{path}?expires={expires}&signature=x")
            assert status == 401, (path, body)
            assert json.loads(body)["error"]["message"] == "the link's expires is not a time in Unix seconds", body
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_signed_link_with_two_expiries_or_signatures_is_refused(api_server):
    """The middleware checks one pair and the page would link the other: neither is taken."""
    server = api_server(IMGPIPE_API_TOKEN=TOKEN)
    request_id = seed_finished_request(server)
    query = parse_qs(urlsplit(signed_report_url(server, request_id)).query)
    expires, signature = query["expires"][0], query["signature"][0]
    other = str(int(expires) + 86400)
    valid = f"expires={expires}&signature={signature}"
    report = f"/requests/{request_id}/report"
    assert raw_request(server.url, "GET", f"{report}?{valid}")[0] == 200
    for query_string, repeated in (
            (f"{valid}&expires={other}&signature=forged", "expires, signature"),  # the valid pair first
            (f"expires={other}&signature=forged&{valid}", "expires, signature"),  # the valid pair last
            (f"{valid}&signature=forged", "signature"),
            (f"{valid}&expires={other}", "expires"),
            (f"{valid}&expire%73={other}", "expires"),  # an encoded name is the same parameter
            (f"{valid}&signature=", "signature"),
            (f"{valid}&offset=0&expires={expires}", "expires")):  # even the same value twice
        for path in (report, f"{report}/thumbs/r1-p1.before.jpg"):
            status, body = raw_request(server.url, "GET", f"{path}?{query_string}")
            assert status == 400, (path, query_string, status, body[:300])
            assert json.loads(body)["error"]["message"] == (
                f"the query gives {repeated} more than once; send each once"), body
    # With the token, a repeated expires or signature is just as ambiguous: the page would link one of them.
    status, body = raw_request(server.url, "GET", f"{report}?{valid}&signature=forged", headers=AUTH)
    assert status == 400, body
