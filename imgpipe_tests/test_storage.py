"""The storage interface: the same tests against the local folders and an S3-compatible bucket (moto's server),
then the REST API and the intake over the bucket."""
from __future__ import annotations

import json
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

import boto3
import pandas as pd
import pytest

from imgpipe.backends import Backends, open_storage
from imgpipe_tests.asgi import asgi_get
from imgpipe.intake.inbox import Inbox
from imgpipe.settings import Settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.storage.interface import Storage
from imgpipe.storage.keys import errors_key, image_key, input_key, output_key, rejected_key
from imgpipe.storage.local import LocalStorage
from imgpipe.storage.s3 import S3Storage, split_s3_url
from imgpipe_tests.kept_content import has_content

BASE = "http://127.0.0.1:8000"
GOOD = b"S. No.,Product Name,Input Image Urls\n1,Chair,https://img.example/a.jpg\n"
BAD = b"S. No.,Product Name\n1,,\n"
OUTPUT = "S. No.,Product Name,Input Image Urls,Output Image Urls\r\n1,Chaise été,https://e.com/a.jpg,x\r\n".encode()
BAD_REQUEST_IDS = ("", "..", "a/b", "../x", "x" * 65, "a b", "r1\n")
BAD_IMAGE_NAMES = ("", "a.exe", "a.svg", "a/b.jpg", "../a.jpg", ".jpg", "a.jpg/", "a.JPG.exe", "a b.webp")


@pytest.fixture
def bucket_url(s3_storage_env) -> str:
    """A prefix of its own in the module's bucket, so tests do not see each other's objects."""
    return f"s3://{s3_storage_env['S3_BUCKET']}/t-{secrets.token_hex(4)}"


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "home", BASE)
    return S3Storage(request.getfixturevalue("bucket_url"), BASE)


def test_image_round_trip(storage):
    stored = storage.write_image("r1", "a.jpg", b"\xff\xd8 jpeg")
    assert stored.url == f"{BASE}/images/r1/a.jpg"
    assert stored.path == storage.location(image_key("r1", "a.jpg"))
    assert storage.read_image("r1", "a.jpg") == b"\xff\xd8 jpeg"
    storage.write_image("r1", "a.jpg", b"again")
    storage.write_image("r1", "b_2-x.webp", b"RIFF webp")
    assert (storage.read_image("r1", "a.jpg"), storage.read_image("r1", "b_2-x.webp")) == (b"again", b"RIFF webp")
    assert storage.read(image_key("r1", "a.jpg")) == b"again"


def test_a_kept_image_becomes_a_new_requests_own_and_replaces_what_was_there(storage):
    sha = "ab" * 32
    storage.keep_content(3, sha, ".webp", b"RIFF kept", b"before", b"after")
    stored = storage.link_content(3, sha, ".webp", "r9", "r1-p1")  # r9 has no folder yet
    assert stored.url == f"{BASE}/images/r9/r1-p1.webp"
    storage.write_image("r10", "r1-p1.webp", b"an older file")
    storage.link_content(3, sha, ".webp", "r10", "r1-p1")
    assert storage.read_image("r9", "r1-p1.webp") == storage.read_image("r10", "r1-p1.webp") == b"RIFF kept"
    assert storage.read_thumbnail("r10", "r1-p1.after.jpg") == b"after"
    with pytest.raises(Exception):  # nothing kept under that hash: the caller makes the image again
        storage.link_content(3, "cd" * 32, ".webp", "r9", "r1-p2")
    assert storage.read_image("r9", "r1-p2.webp") is None


def test_kept_renditions_are_linked_as_a_requests_own_and_go_with_their_kept_image(storage):
    sha = "ab" * 32
    storage.keep_content(3, sha, ".jpg", b"jpeg", b"before", b"after")
    storage.keep_content_renditions(3, sha, {".w480.jpg": b"small jpeg", ".w480.avif": b"small avif"}, b'{"r": 1}')
    storage.link_content_renditions(3, sha, [".w480.avif"], "r9", "r1-p1")
    storage.write_renditions("r9", "r1-p1", b'{"r": 2}')

    assert storage.read_image("r9", "r1-p1.w480.avif") == b"small avif"
    assert storage.read_image("r9", "r1-p1.w480.jpg") is None  # only what was linked
    assert storage.read_content_renditions(3, sha) == b'{"r": 1}'
    assert storage.read_renditions("r9", "r1-p1") == b'{"r": 2}'
    for name in ("r1-p1.w480", "r1-p1.w.avif", "r1-p1.wide.avif", "r1-p1.w123456.avif", "r1-p1.w480.avif.jpg"):
        with pytest.raises(ValueError):
            storage.read_image("r9", name)
    with pytest.raises(ValueError):
        storage.read_renditions("r9", "../r1-p1")

    storage.delete_content(3, sha)

    assert not has_content(storage, 3, sha, ".jpg") and storage.read_content_renditions(3, sha) is None
    with pytest.raises(Exception):  # every file named after the hash is gone
        storage.link_content_renditions(3, sha, [".w480.jpg"], "r9", "r1-p2")
    assert storage.read_image("r9", "r1-p1.w480.avif") == b"small avif"  # the request's own stays its own
    storage.delete_request("r9")
    assert storage.read_image("r9", "r1-p1.w480.avif") is None and storage.read_renditions("r9", "r1-p1") is None


def test_output_csv_round_trip(storage):
    assert not storage.has_output_csv("r1")
    stored = storage.write_output_csv("r1", OUTPUT)
    assert stored.url == f"{BASE}/requests/r1/output.csv"
    assert stored.path == storage.location(output_key("r1"))
    assert storage.has_output_csv("r1") and storage.exists(output_key("r1"))
    assert storage.read_output_csv("r1") == OUTPUT


def test_an_input_kept_by_the_intake_is_read_back(storage):
    storage.keep_input("r1", GOOD)
    assert storage.read_input("r1") == GOOD


def test_a_rejected_file_is_kept_with_its_errors(storage, tmp_path):
    errors = json.dumps({"request_id": "r1", "file_name": "bad été.csv", "errors": []}).encode()
    storage.keep_rejected("r1", "bad été.csv", BAD, errors)
    assert storage.read(rejected_key("r1", "bad été.csv")) == BAD
    assert storage.read(errors_key("r1")) == errors
    # A file too large to read into memory is kept from its path, byte for byte.
    large = tmp_path / "large.csv"
    large.write_bytes(BAD * 100_000)
    storage.keep_rejected("r2", "large.csv", large, errors)
    assert storage.read(rejected_key("r2", "large.csv")) == BAD * 100_000


def test_uploads_are_private_on_disk_and_outputs_are_not(tmp_path):
    storage = LocalStorage(tmp_path, BASE)
    storage.keep_input("r1", GOOD)
    storage.keep_rejected("r2", "x.csv", BAD, b"{}")
    storage.write_image("r1", "a.jpg", b"x")
    storage.write_output_csv("r1", OUTPUT)
    storage.keep_content(3, "ab" * 32, ".webp", b"RIFF", b"before", b"after")
    storage.link_content(3, "ab" * 32, ".webp", "r1", "b")  # a kept output, served as r1's own image
    modes = {key: storage.path(key).stat().st_mode & 0o777 for key in (
        input_key("r1"), rejected_key("r2", "x.csv"), errors_key("r2"), image_key("r1", "a.jpg"), output_key("r1"),
        image_key("r1", "b.webp"))}
    assert modes == {input_key("r1"): 0o600, rejected_key("r2", "x.csv"): 0o600, errors_key("r2"): 0o600,
                     image_key("r1", "a.jpg"): 0o644, output_key("r1"): 0o644, image_key("r1", "b.webp"): 0o644}


def test_missing_keys(storage):
    assert storage.read_image("r1", "a.jpg") is None
    assert storage.read_output_csv("r1") is None
    assert storage.read(rejected_key("r1", "x.csv")) is None
    assert not storage.has_output_csv("r1") and not storage.exists(image_key("r1", "a.jpg"))
    with pytest.raises(FileNotFoundError):
        storage.read_input("r1")
    storage.write_image("r1", "a.jpg", b"x")
    assert storage.read_image("r1", "b.jpg") is None


def test_bad_request_ids_names_and_keys_are_refused(storage):
    source = GOOD
    for request_id in BAD_REQUEST_IDS:
        for call in (lambda: storage.write_image(request_id, "a.jpg", b"x"),
                     lambda: storage.read_image(request_id, "a.jpg"),
                     lambda: storage.write_output_csv(request_id, b"x"),
                     lambda: storage.read_output_csv(request_id),
                     lambda: storage.has_output_csv(request_id),
                     lambda: storage.read_input(request_id),
                     lambda: storage.keep_input(request_id, source),
                     lambda: storage.keep_rejected(request_id, "x.csv", source, b"{}")):
            with pytest.raises(ValueError):
                call()
    for name in BAD_IMAGE_NAMES:
        with pytest.raises(ValueError):
            storage.write_image("r1", name, b"x")
        with pytest.raises(ValueError):
            storage.read_image("r1", name)
    for name in ("", ".", "..", "a/b.csv", "..\\x.csv", "errors.json", "a\nb.csv", "x" * 256):
        with pytest.raises(ValueError):
            storage.keep_rejected("r1", name, source, b"{}")
    for key in ("", "images", "images/r1", "images/r1/../../x", "images/r1/a.jpg/", "public/images/r1/a.jpg",
                "outputs/r1/x.csv", "requests//input.csv", "/requests/r1/input.csv", "requests/r1/..\\x"):
        with pytest.raises(ValueError):
            storage.read(key)
    assert storage.read_image("r1", "a.jpg") is None  # and nothing was written by a refused call


def test_urls_and_objects_are_the_same_in_both_profiles(tmp_path, bucket_url):
    settings = Settings(home=tmp_path, public_base_url=BASE)
    local, s3 = LocalStorage(tmp_path, BASE), S3Storage(bucket_url, BASE + "/")
    for storage in (local, s3):
        assert storage.write_image("r1", "a.webp", b"w").url == f"{settings.public_base_url}/images/r1/a.webp"
        assert storage.write_output_csv("r1", OUTPUT).url == settings.output_csv_url("r1")
    assert local.read_output_csv("r1") == s3.read_output_csv("r1")


def test_local_keys_are_todays_folders(tmp_path):
    settings = Settings(home=tmp_path)
    local = LocalStorage(tmp_path, BASE)
    assert local.path(input_key("r1")) == settings.requests_dir / "r1" / "input.csv"
    assert local.path(rejected_key("r1", "x.csv")) == settings.rejected_dir / "r1" / "x.csv"
    assert local.path(errors_key("r1")) == settings.rejected_dir / "r1" / "errors.json"
    assert local.write_image("r1", "a.jpg", b"j").path == str(settings.images_dir / "r1" / "a.jpg")
    assert local.write_output_csv("r1", b"c").path == str(settings.outputs_dir / "r1.csv")
    (settings.images_dir / "r1" / "d.jpg").mkdir()
    assert local.read_image("r1", "d.jpg") is None  # a folder is not an image


def test_s3_objects_have_their_keys_and_content_types(bucket_url, tmp_path):
    s3 = S3Storage(bucket_url, BASE)
    bucket, prefix = split_s3_url(bucket_url)
    assert s3.write_image("r1", "a.jpg", b"j").path == f"{bucket_url}/images/r1/a.jpg"
    s3.write_image("r1", "a.webp", b"w")
    assert s3.write_output_csv("r1", OUTPUT).path == f"{bucket_url}/outputs/r1.csv"
    source = tmp_path / "in.csv"
    source.write_bytes(GOOD)
    s3.keep_input("r1", GOOD)
    s3.keep_rejected("r2", "x.csv", GOOD, b"{}")
    client = boto3.client("s3")
    types = {obj["Key"]: client.head_object(Bucket=bucket, Key=obj["Key"])["ContentType"]
             for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]}
    assert types == {f"{prefix}/images/r1/a.jpg": "image/jpeg", f"{prefix}/images/r1/a.webp": "image/webp",
                     f"{prefix}/outputs/r1.csv": "text/csv", f"{prefix}/requests/r1/input.csv": "text/csv",
                     f"{prefix}/rejected/r2/x.csv": "text/csv", f"{prefix}/rejected/r2/errors.json": "application/json"}


def test_one_s3_storage_serves_many_threads(bucket_url):
    s3 = S3Storage(bucket_url, BASE)  # its client is made by whichever thread comes first

    def round_trip(i: int) -> bytes | None:
        s3.write_image("r1", f"i{i}.webp", b"%d" % i)
        return s3.read_image("r1", f"i{i}.webp")

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(round_trip, range(32))) == [b"%d" % i for i in range(32)]


def test_the_profile_chooses_the_storage(tmp_path):
    settings = Settings(home=str(tmp_path), public_base_url=BASE)
    assert isinstance(open_storage(settings), LocalStorage)
    s3 = open_storage(settings.model_copy(update={"profile": "distributed", "storage_url": "s3://b/some/prefix/"}))
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("b", "some/prefix")
    assert s3.location(input_key("r1")) == "s3://b/some/prefix/requests/r1/input.csv"
    assert S3Storage("s3://b", BASE).location(output_key("r1")) == "s3://b/outputs/r1.csv"
    for url in ("", "b/prefix", "https://b/prefix", "s3:///prefix"):
        with pytest.raises(ValueError):
            split_s3_url(url)


# ---------------------------------------------------------------------- the REST API over the bucket


def test_the_api_serves_images_and_output_csvs_from_the_bucket(tmp_path, bucket_url):
    from imgpipe.api.app import create_app

    settings = Settings(home=str(tmp_path / "home"), public_base_url=BASE)
    s3 = S3Storage(bucket_url, BASE)
    app = create_app(settings, storage=s3)
    store = DuckDBStatusStore(settings.db_path)

    s3.write_image("req", "a.webp", b"RIFF webp bytes")
    s3.write_image("req", "b.jpg", b"\xff\xd8 jpeg bytes")
    assert asgi_get(app, "/images/req/a.webp") == (
        200, {"content-type": "image/webp", "content-length": "15", "cache-control": "public, max-age=86400"},
        b"RIFF webp bytes")
    status, headers, body = asgi_get(app, "/images/req/b.jpg")
    assert (status, headers["content-type"], body) == (200, "image/jpeg", b"\xff\xd8 jpeg bytes")
    # Only the bucket counts: a file in the local folder is not served.
    (settings.images_dir / "req").mkdir(parents=True)
    (settings.images_dir / "req" / "local.jpg").write_bytes(b"local")
    for path in ("/images/req/local.jpg", "/images/req/missing.jpg", "/images/req/", "/images/req", "/images/",
                 "/images/../outputs/x.csv", "/images/req/../../imgpipe/outputs/r1.csv", "/images/req/a.webp/x"):
        status, _, body = asgi_get(app, path)
        assert (status, json.loads(body)["error"]["code"]) == (404, "not_found"), path

    store.record_accepted("r1", source="api", file_name="x.csv", webhook_url=None, manifest=pd.DataFrame(
        [(1, "1", "Chair", 1, "https://img.example/a.jpg")],
        columns=["row_number", "serial", "product_name", "position", "input_url"]))
    assert asgi_get(app, "/requests/r1/output.csv")[0] == 409
    store.finish_request("r1", "failed", "no CSV")
    assert asgi_get(app, "/requests/r1/output.csv")[0] == 404
    assert json.loads(asgi_get(app, "/requests/r1")[2])["output_csv_url"] is None
    s3.write_output_csv("r1", OUTPUT)
    status, headers, body = asgi_get(app, "/requests/r1/output.csv")
    assert (status, headers["content-type"], body) == (200, "text/csv; charset=utf-8", OUTPUT)
    assert json.loads(asgi_get(app, "/requests/r1")[2])["output_csv_url"] == f"{BASE}/requests/r1/output.csv"


# ---------------------------------------------------------------------- the intake over the bucket


@pytest.fixture
def s3_intake(tmp_path, bucket_url):
    """The inbox over a bucket: the files go nowhere else."""
    settings = Settings(home=str(tmp_path / "home"), public_base_url=BASE)
    settings.ensure_folders()
    store = DuckDBStatusStore(settings.db_path)
    return settings, store, Inbox(Backends(settings, store, S3Storage(bucket_url, BASE)))


def test_intake_puts_accepted_and_rejected_files_in_the_bucket(s3_intake):
    settings, store, inbox = s3_intake
    (settings.inbox / "good.csv").write_bytes(GOOD)
    (settings.inbox / "bad.csv").write_bytes(BAD)
    results = {r.file_name: r for r in inbox.take()}
    good, bad = results["good.csv"], results["bad.csv"]
    assert good.accepted and not bad.accepted
    assert inbox.backends.storage.read_input(good.request_id) == GOOD
    assert inbox.backends.storage.read(rejected_key(bad.request_id, "bad.csv")) == BAD
    assert json.loads(inbox.backends.storage.read(errors_key(bad.request_id)))["errors"]
    assert store.get_request(bad.request_id).status == "rejected"
    # Nothing stays on this machine's disk: other machines read the bucket.
    assert [p for p in settings.home_dir.rglob("*") if p.is_file() and "imgpipe.duckdb" not in p.name] == []


def test_a_failed_upload_is_taken_again_on_the_next_pass(s3_intake, monkeypatch):
    settings, store, inbox = s3_intake
    (settings.inbox / "later.csv").write_bytes(GOOD)

    def unreachable(*args, **kwargs):
        raise ConnectionError("the bucket is unreachable")

    monkeypatch.setattr(inbox.backends.storage, "keep_input", unreachable)
    assert inbox.take() == []  # logged, not raised: other files go on
    monkeypatch.undo()
    [result] = inbox.take()
    assert result.accepted and inbox.backends.storage.read_input(result.request_id) == GOOD
    assert result.file_name == "later.csv" and store.get_request(result.request_id).file_name == "later.csv"
    assert inbox.take() == [] and os.listdir(settings.inbox) == [".claimed"]
