"""Re-uploads: a URL seen before is fetched conditionally and an unchanged image is not encoded again, against a
real image server that sends validators (or none, or `no-store`), each request still with files of its own."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import replace

import pytest

from imgpipe.backends import Backends
from imgpipe.settings import Settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.storage.local import LocalStorage
from imgpipe_tests.images import save_jpeg
from imgpipe_tests.pipeline import process_here
from imgpipe_tests.servers import CatalogServer

BASE = "http://127.0.0.1:8000"


@pytest.fixture
def shop(tmp_path):
    """A catalogue of 12 photos, and the backends of a home."""
    root = tmp_path / "cdn"
    for index in range(12):
        save_jpeg(root / f"p{index}.jpg", quality=70 + index, seed=index)
    settings = Settings(home=tmp_path / "home", public_base_url=BASE, allow_private_hosts="127.0.0.1")
    return root, Backends(settings, DuckDBStatusStore(settings.db_path), LocalStorage(settings.home_dir, BASE))


def catalogue(server: CatalogServer) -> list[list[str]]:
    return [[server.url(f"p{2 * row}.jpg"), server.url(f"p{2 * row + 1}.jpg")] for row in range(6)]


def obtained(store, request_id: str) -> list[str]:
    return [str(i.obtained) for i in store.images(request_id)]


def output_rows(settings: Settings, request_id: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO((settings.outputs_dir / f"{request_id}.csv").read_text())))


def test_the_same_catalogue_again_is_all_304s_and_no_encode(shop):
    root, backends = shop
    store = backends.store
    server = CatalogServer(root)
    try:
        first = process_here(backends, catalogue(server), "night-1.csv")
        served_first = len(server.served)
        second = process_here(backends, catalogue(server), "night-2.csv")
        again = server.served[served_first:]
    finally:
        server.close()

    assert obtained(store, first) == ["fetched"] * 12
    assert obtained(store, second) == ["not_modified"] * 12  # 0 encodes
    assert [seen.status for seen in again] == [304] * 12 and sum(seen.body_bytes for seen in again) == 0
    assert all(seen.headers.get("if-none-match") for seen in again)
    # Same shape, its own URLs; its files are links to the same bytes, not copies.
    first_rows, second_rows = output_rows(backends.settings, first), output_rows(backends.settings, second)
    assert [r[:3] for r in first_rows] == [r[:3] for r in second_rows]
    assert all(f"/images/{second}/" in url for row in second_rows[1:] for url in row[3].split(", "))
    for before, after in zip(store.images(first), store.images(second)):
        assert (after.bytes_in, after.bytes_out, after.quality_out) == (before.bytes_in, before.bytes_out,
                                                                          before.quality_out)
        assert os.stat(after.output_path).st_ino == os.stat(before.output_path).st_ino
        assert os.stat(after.output_path).st_nlink >= 3  # the kept output and both requests' images
    assert all(backends.storage.read_thumbnail(second, f"r{row}-p{position}.{side}.jpg")
               for row in range(1, 7) for position in (1, 2) for side in ("before", "after"))


def test_changed_images_and_only_those_are_fetched_and_encoded_again(shop):
    root, backends = shop
    store = backends.store
    server = CatalogServer(root)
    try:
        process_here(backends, catalogue(server), "night-1.csv")
        changed = [1, 4, 5, 8, 11]
        for index in changed:
            save_jpeg(root / f"p{index}.jpg", quality=60, seed=100 + index)
            os.utime(root / f"p{index}.jpg", (0, 2_000_000_000))
        third = process_here(backends, catalogue(server), "night-3.csv")
    finally:
        server.close()

    assert [index for index, way in enumerate(obtained(store, third)) if way == "fetched"] == changed
    assert obtained(store, third).count("not_modified") == 7


def test_without_validators_every_image_is_downloaded_and_none_is_encoded_again(shop):
    root, backends = shop
    store = backends.store
    server = CatalogServer(root, validators=False)
    try:
        process_here(backends, catalogue(server), "night-1.csv")
        served_first = len(server.served)
        second = process_here(backends, catalogue(server), "night-2.csv")
        again = server.served[served_first:]
    finally:
        server.close()

    assert [seen.status for seen in again] == [200] * 12 and not any("if-none-match" in s.headers for s in again)
    assert obtained(store, second) == ["same_content"] * 12


@pytest.mark.parametrize(("server_options", "settings_update", "fresh"), [
    ({"cache_control": "public, no-store"}, {}, False),
    ({}, {"reuse": "off"}, False),
    ({}, {}, True),
], ids=["no-store", "IMGPIPE_REUSE=off", "fresh-request"])
def test_reuse_can_be_refused_by_the_source_the_operator_or_the_request(shop, server_options, settings_update,
                                                                        fresh):
    root, backends = shop
    store = backends.store
    backends = replace(backends, settings=backends.settings.model_copy(update=settings_update))
    server = CatalogServer(root, **server_options)
    try:
        process_here(backends, catalogue(server), "night-1.csv")
        served_first = len(server.served)
        second = process_here(backends, catalogue(server), "night-2.csv", fresh=fresh)
        again = server.served[served_first:]
    finally:
        server.close()

    assert obtained(store, second) == ["fetched"] * 12
    assert [seen.status for seen in again] == [200] * 12 and not any("if-none-match" in s.headers for s in again)


def test_a_kept_output_whose_files_are_gone_is_made_again(shop):
    root, backends = shop
    store = backends.store
    server = CatalogServer(root)
    try:
        process_here(backends, catalogue(server)[:1], "night-1.csv")
        for kept in (backends.settings.home_dir / "content").rglob("*.jpg"):
            kept.unlink()
        second = process_here(backends, catalogue(server)[:1], "night-2.csv")
    finally:
        server.close()

    assert obtained(store, second) == ["fetched", "fetched"]
    assert all(image.status == "compressed" for image in store.images(second))


def test_reuse_stays_polite_with_throttling_hosts(shop):
    """Every image's first request is answered 429 Retry-After: 1, with many download threads: all end
    compressed, the host never saw more connections at once than the setting, and none came back too soon."""
    root, backends = shop
    store = backends.store
    backends = replace(backends, settings=backends.settings.model_copy(
        update={"per_host_connections": 2, "download_threads": 8}))
    server = CatalogServer(root, throttle=True, retry_after="1", delay=0.05)
    try:
        request_id = process_here(backends, catalogue(server), "throttled.csv")
    finally:
        server.close()

    assert [i.status for i in store.images(request_id)] == ["compressed"] * 12
    assert server.peak <= 2
    for name in (f"p{index}.jpg" for index in range(12)):
        first, second = server.served_for(name)[:2]
        assert (first.status, second.status) == (429, 200) and second.at - first.at >= 1.0
