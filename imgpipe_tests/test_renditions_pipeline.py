"""Renditions through the pipeline, on both profiles (folders and DuckDB; moto's S3 and PostgreSQL): made with a
request's images, served from their main URLs by `Accept` and `?w=`, listed in the status document, the report,
/metrics and the asset metadata; reused with the kept outputs (and made when a request asks for more); purged
with their requests."""
from __future__ import annotations

import csv
import io
import json
import re

import boto3
import pytest

from imgpipe.api.app import create_app
from imgpipe.defs.metadata import rendition_metadata
from imgpipe.images.image_policy import POLICY_VERSION
from imgpipe.retention import PurgePlan, parse_duration, parse_statuses, purge
from imgpipe.storage.local import LocalStorage
from imgpipe.storage.s3 import S3Storage
from imgpipe_tests.asgi import asgi_get
from imgpipe_tests.images import illustration
from imgpipe_tests.kept_content import has_content
from imgpipe_tests.pipeline import process_here
from imgpipe_tests.servers import CatalogServer
from imgpipe_tests.test_retention import made_old

BASE = "http://127.0.0.1:8000"
CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
MEDIA = {"jpg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}


@pytest.fixture
def catalogue(tmp_path):
    """Two pictures 1200x800 on an image host that sends validators (so a re-upload is answered 304), of the kind
    where, at every width, AVIF is smaller than WebP and WebP than JPEG (each checked where it matters)."""
    (tmp_path / "cdn").mkdir()
    for index in range(2):
        illustration(1200, 800, seed=20 + index).save(tmp_path / "cdn" / f"p{index}.jpg", quality=85)
    server = CatalogServer(tmp_path / "cdn")
    yield [[server.url("p0.jpg"), server.url("p1.jpg")]]
    server.close()


def get(app, url: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    return asgi_get(app, url.removeprefix(BASE), {"Accept": accept} if accept is not None else None)


def document(app, request_id: str) -> dict:
    status, _, body = get(app, f"{BASE}/requests/{request_id}")
    assert status == 200, body
    return json.loads(body)


def images_of(app, request_id: str) -> list[dict]:
    return [image for product in document(app, request_id)["products"] for image in product["images"]]


def stored_keys(storage) -> set[str]:
    """Every key the storage holds."""
    if isinstance(storage, LocalStorage):
        files = [p.relative_to(storage.home) for p in storage.home.rglob("*") if p.is_file()]
        return {str(p.relative_to("public") if p.parts[0] == "public" else p) for p in files
                if p.parts[0] in ("public", "requests", "rejected", "content")}
    assert isinstance(storage, S3Storage)
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=storage.bucket,
                                                                         Prefix=storage.prefix + "/")
    return {item["Key"].removeprefix(storage.prefix + "/") for page in pages for item in page.get("Contents", [])}


def test_renditions_are_served_from_the_main_url_by_accept_and_width_and_listed_everywhere(backends, catalogue):
    store, storage = backends.store, backends.storage
    request_id = process_here(backends, catalogue, "photos.csv", renditions="avif,WEBP", widths="2000,480")
    plain = process_here(backends, catalogue, "plain.csv", renditions="", widths="")
    app = create_app(backends.settings, storage)

    row = store.get_request(request_id)
    assert (row.renditions, row.widths) == ("webp,avif", "480,2000")
    first, second = images_of(app, request_id)
    main = first["output_url"]
    assert main == f"{BASE}/images/{request_id}/r1-p1.jpg"
    # Each format at the image's width and at 480 (2000 is wider than the image: never upscaled), a JPEG at 480.
    assert [(r["format"], r["width"]) for r in first["renditions"]] == [
        ("avif", 1200), ("webp", 1200), ("avif", 480), ("jpeg", 480), ("webp", 480)]
    assert first["srcset"] == f"{main}?w=480 480w, {main} 1200w"
    files = {(r["format"], r["width"]): r for r in first["renditions"]}
    for width, jpeg_size in ((480, files[("jpeg", 480)]["bytes"]), (1200, main_size(store, request_id, first))):
        assert files[("avif", width)]["bytes"] < files[("webp", width)]["bytes"] < jpeg_size, "the fixture's order"
    for rendition in first["renditions"]:  # each explicit URL serves its own file, whatever the Accept
        status, headers, body = get(app, rendition["url"], CHROME)
        assert (status, headers["content-type"], len(body)) == (200, MEDIA[rendition["url"].rsplit(".", 1)[1]],
                                                              rendition["bytes"])
        assert "vary" not in headers

    def served(accept=None, query="") -> tuple[str, bytes]:
        status, headers, body = get(app, main + query, accept)
        assert status == 200 and headers["vary"] == "Accept" and headers["cache-control"].startswith("public")
        return headers["content-type"], body

    jpeg = get(app, files[("jpeg", 480)]["url"])[2]
    avif = {width: get(app, files[("avif", width)]["url"])[2] for width in (480, 1200)}
    webp = get(app, files[("webp", 1200)]["url"])[2]
    main_bytes = served()[1]
    assert served() == served("*/*") == served("image/*") == ("image/jpeg", main_bytes)
    assert served(CHROME) == ("image/avif", avif[1200])
    assert served("image/avif;q=0, image/webp, */*") == ("image/webp", webp)
    assert served("image/webp;q=0.5, image/avif;q=0, image/jpeg;q=0") == ("image/webp", webp)
    assert served(None, "?w=480") == ("image/jpeg", jpeg) and served(CHROME, "?w=300") == ("image/avif", avif[480])
    assert served(CHROME, "?w=481") == served(CHROME, "?w=5000") == ("image/avif", avif[1200])
    assert get(app, main + "?w=0")[0] == 422
    # A request made without renditions: its URLs answer as they always did.
    status, headers, body = get(app, images_of(app, plain)[0]["output_url"], CHROME)
    assert (status, headers["content-type"], "vary" in headers, body) == (200, "image/jpeg", False, main_bytes)
    assert images_of(app, plain)[0]["renditions"] == [] and images_of(app, plain)[0]["srcset"] == ""

    # The output CSV is as without renditions: the main URLs.
    status, _, body = get(app, f"{BASE}/requests/{request_id}/output.csv")
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert status == 200 and rows[1][3] == f"{main}, {second['output_url']}"

    # /metrics: bytes out by format, the renditions' as the status document lists them.
    status, _, body = get(app, f"{BASE}/metrics")
    avif_total = sum(r["bytes"] for image in (first, second) for r in image["renditions"] if r["format"] == "avif")
    assert f'imgpipe_image_bytes_out_total{{format="avif",kind="rendition"}} {float(avif_total)}' in body.decode()
    assert re.search(r'imgpipe_image_bytes_out_total\{format="jpeg",kind="main"\} [1-9]', body.decode())

    # The report: the image as served to a browser, and each file's size by width and format.
    status, _, body = get(app, f"{BASE}/requests/{request_id}/report")
    page = body.decode()
    assert status == 200 and f'src="../../images/{request_id}/r1-p1.jpg"' in page
    assert f'srcset="../../images/{request_id}/r1-p1.jpg?w=480 480w, ../../images/{request_id}/r1-p1.jpg 1200w"' in page
    assert re.search(r"480 px: <a [^>]+>JPEG [0-9.]+ KB</a> · <a [^>]+>AVIF", page)

    # The asset metadata: bytes saved by format against the JPEG of the same width.
    metadata = rendition_metadata(store.rendition_totals(request_id))
    assert metadata["renditions_avif_files"] == 4 and metadata["renditions_fallback_jpeg_files"] == 2
    assert metadata["renditions_avif_bytes"] == avif_total
    assert metadata["renditions_avif_bytes_saved"] == sum(
        (image_bytes(image, "jpeg", 480) if r["width"] == 480 else main_size(store, request_id, image))
        - r["bytes"] for image in (first, second) for r in image["renditions"] if r["format"] == "avif")
    assert 0 < metadata["renditions_avif_percent_saved"] < 100 and 0 < metadata["renditions_webp_bytes_saved"]


def image_bytes(image: dict, image_format: str, width: int) -> int:
    return next(r["bytes"] for r in image["renditions"] if (r["format"], r["width"]) == (image_format, width))


def main_size(store, request_id: str, image: dict) -> int:
    return next(i.bytes_out for i in store.images(request_id) if i.output_url == image["output_url"])


def test_a_re_upload_reuses_the_kept_renditions_and_one_asking_for_more_gets_them_made(backends, catalogue):
    store, storage = backends.store, backends.storage
    first = process_here(backends, catalogue, "night-1.csv", renditions="webp,avif", widths="480")
    again = process_here(backends, catalogue, "night-2.csv", renditions="webp,avif", widths="480")
    webp_only = process_here(backends, catalogue, "webp.csv", renditions="webp", widths="")
    wider = process_here(backends, catalogue, "wider.csv", renditions="avif", widths="480,960")
    app = create_app(backends.settings, storage)

    def obtained(request_id):
        return [str(i.obtained) for i in store.images(request_id)]

    def renditions(request_id):
        return [[(r["format"], r["width"], r["bytes"]) for r in image["renditions"]]
                for image in images_of(app, request_id)]

    assert obtained(first) == ["fetched"] * 2
    # The source answered 304 and every rendition asked for was kept: nothing encoded, the same files linked.
    assert obtained(again) == ["not_modified"] * 2 and renditions(again) == renditions(first)
    for before, after in zip(images_of(app, first), images_of(app, again), strict=True):
        for old, new in zip(before["renditions"], after["renditions"], strict=True):
            assert get(app, new["url"])[2] == get(app, old["url"])[2]
            if isinstance(storage, LocalStorage):  # a link to the kept file, not a copy
                assert storage.path(key_of(new["url"])).stat().st_ino == storage.path(key_of(old["url"])).stat().st_ino
    # A subset of what was made: reused, and only what this request asked for is its own.
    assert obtained(webp_only) == ["not_modified"] * 2
    assert [[(f, w) for f, w, _ in image] for image in renditions(webp_only)] == [[("webp", 1200)]] * 2
    main = images_of(app, webp_only)[0]["output_url"]
    status, headers, _ = get(app, main, "image/avif,*/*")  # a format not made for this request: the JPEG
    assert (status, headers["content-type"], headers["vary"]) == (200, "image/jpeg", "Accept")
    # 960 was never made: the image is fetched and encoded again, with it.
    assert obtained(wider) == ["fetched"] * 2
    assert [(f, w) for f, w, _ in renditions(wider)[0]] == [("avif", 1200), ("avif", 960), ("jpeg", 960),
                                                           ("avif", 480), ("jpeg", 480)]
    assert get(app, images_of(app, wider)[0]["output_url"] + "?w=900", CHROME)[1]["content-type"] == "image/avif"


def key_of(url: str) -> str:
    return url.removeprefix(BASE + "/")


def test_purge_leaves_no_file_of_a_purged_request_and_kept_renditions_go_with_their_last_user(backends, catalogue):
    store, storage = backends.store, backends.storage
    before = stored_keys(storage)
    older = process_here(backends, catalogue, "older.csv", renditions="webp,avif", widths="480")
    newer = process_here(backends, catalogue, "newer.csv", renditions="avif", widths="640")
    app = create_app(backends.settings, storage)
    older_urls = [r["url"] for image in images_of(app, older) for r in image["renditions"]]
    newer_urls = [r["url"] for image in images_of(app, newer) for r in image["renditions"]]
    shas = {i.input_sha256 for i in store.images(older)}
    made_old(store, older)

    [purged] = purge(backends, PurgePlan(older_than=parse_duration("12h"), statuses=parse_statuses(None)))

    assert (purged.request.request_id, purged.refused) == (older, None)
    assert [key for key in stored_keys(storage) if older in key] == []
    assert all(get(app, url, CHROME)[0] == 404 for url in older_urls)
    assert store.renditions_of(older) == {}
    # The newer request still serves every file; the kept output (with every rendition made of it) stays for it.
    assert all(get(app, url)[0] == 200 for url in newer_urls)
    assert get(app, images_of(app, newer)[0]["output_url"], CHROME)[1]["content-type"] == "image/avif"
    kept = {key for key in stored_keys(storage) if any(sha in key for sha in shas)}
    assert {key.rsplit(".", 2)[-2] for key in kept} >= {"w480", "w640", "w1200"}

    made_old(store, newer)
    assert [o.request.request_id for o in purge(backends, PurgePlan(
        older_than=parse_duration("12h"), statuses=parse_statuses(None)))] == [newer]
    assert stored_keys(storage) == before  # no file of either request, nor of what was kept for them
    assert not has_content(storage, POLICY_VERSION, next(iter(shas)), ".jpg")
