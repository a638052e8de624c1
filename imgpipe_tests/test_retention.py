"""Retention on both profiles (folders and DuckDB; a bucket and PostgreSQL): five requests, two of them sharing an
image through reuse; the three oldest purged. Exactly their files, objects, rows and partitions go; the two
others still serve every image and their CSV; a purged ID answers 410."""
from __future__ import annotations

import json
import secrets
import uuid

import pytest
from dagster import instance_for_test

from imgpipe.api.app import create_app
from imgpipe.backends import open_status_store, open_storage
from imgpipe.defs.schedules import partition_forgetter
from imgpipe.images.image_policy import POLICY_VERSION
from imgpipe.retention import PurgePlan, parse_duration, parse_statuses, purge
from imgpipe.settings import Settings
from imgpipe.status.models import Obtained
from imgpipe.status.store import utcnow
from imgpipe.storage import image_key, input_key, output_key
from imgpipe_tests.asgi import asgi_get
from imgpipe_tests.images import save_jpeg
from imgpipe_tests.pipeline import process_here

BASE = "http://127.0.0.1:8000"


@pytest.fixture(params=["embedded", "distributed"])
def backends(request, tmp_path):
    """(settings, store, storage) of one profile; the distributed one over PostgreSQL and moto's S3 server."""
    settings = Settings(home=tmp_path / "home", public_base_url=BASE, allow_private_hosts="127.0.0.1")
    if request.param == "distributed":
        s3 = request.getfixturevalue("s3_storage_env")
        settings = settings.model_copy(update={
            "profile": "distributed", "database_url": request.getfixturevalue("postgres_url"),
            "storage_url": f"s3://{s3['S3_BUCKET']}/t-{secrets.token_hex(4)}", "broker_url": "redis://127.0.0.1",
            "webhook_secret": "whsec_c2VjcmV0"})
    return settings, open_status_store(settings), open_storage(settings)


def test_purge_removes_exactly_the_old_requests_and_keeps_what_the_others_reuse(backends, image_server,
                                                                                image_root, tmp_path):
    settings, store, storage = backends
    folder = uuid.uuid4().hex[:8]
    for name in ("a", "b", "c", "d", "shared"):
        save_jpeg(image_root / folder / f"{name}.jpg", quality=80, seed=hash(name) % 100)
    url = lambda name: image_server.url(f"img/{folder}/{name}.jpg")  # noqa: E731
    ids = [process_here(settings, store, storage, rows, f"r{index}.csv") for index, rows in enumerate(
        [[[url("a")]], [[url("b")]], [[url("shared"), url("c")]], [[url("shared")]], [[url("d")]]])]
    old, kept = ids[:3], ids[3:]
    shared = {i.input_url: i for i in store.images(ids[3])}[url("shared")]
    assert shared.obtained in (Obtained.NOT_MODIFIED, Obtained.SAME_CONTENT)  # request 4 reused request 3's output
    long_ago = utcnow().replace(year=2000)
    store._run(*[("UPDATE requests SET created_at = ? WHERE request_id = ?", [long_ago, r]) for r in old])
    only_old = {i.input_sha256 for r in old for i in store.images(r)} - {i.input_sha256 for r in kept
                                                                          for i in store.images(r)}
    plan = PurgePlan(older_than=parse_duration("30m"), statuses=parse_statuses(None))

    with instance_for_test() as instance:
        instance.add_dynamic_partitions("requests", ids)
        dry = [r.request_id for r in purge(store, storage, plan, dry_run=True)]
        assert dry == old and all(store.get_request(r) for r in ids)
        assert all(storage.exists(input_key(r)) for r in ids)

        purged = [r.request_id for r in purge(store, storage, plan,
                                              forget_partition=partition_forgetter(instance, delete_runs=False))]

        assert purged == old
        assert instance.get_dynamic_partitions("requests") == kept
    for request_id in old:
        assert store.get_request(request_id) is None and store.images(request_id) == []
        assert store.products(request_id) == [] and store.purged_at(request_id) is not None
        assert not storage.exists(input_key(request_id)) and not storage.exists(output_key(request_id))
    for sha256 in only_old:
        assert not storage.has_content(POLICY_VERSION, sha256, ".jpg")
    assert storage.has_content(POLICY_VERSION, shared.input_sha256, ".jpg")  # still reused by request 4

    app = create_app(settings)
    for request_id in kept:
        status, _, body = asgi_get(app, f"/requests/{request_id}")
        document = json.loads(body)
        assert status == 200 and document["status"] == "completed"
        for product in document["products"]:
            for image in product["images"]:
                path = image["output_url"].removeprefix(BASE)
                assert asgi_get(app, path)[0] == 200
        assert asgi_get(app, f"/requests/{request_id}/output.csv")[0] == 200
    status, _, body = asgi_get(app, f"/requests/{old[0]}")
    assert status == 410 and json.loads(body)["status"] == "purged" and json.loads(body)["request_id"] == old[0]
    name = next(i.output_path for i in store.images(kept[0])).rsplit("/", 1)[1]
    assert asgi_get(app, f"/images/{old[2]}/{name}")[0] == 404
    assert not storage.exists(image_key(old[2], name))
