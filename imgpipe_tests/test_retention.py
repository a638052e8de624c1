"""Retention on both profiles (folders and DuckDB; a bucket and PostgreSQL): five requests, two of them sharing an
image through reuse; the three oldest purged. Exactly their files, objects, rows and partitions go; the two
others still serve every image and their CSV; a purged ID answers 410. A request that has not ended is refused
(its run would write files after the purge, which no purge would then find) and purged whole once it has ended;
a rejected request, and one whose outputs another still uses, are purged too; the daily schedule's job purges
only requests that have ended."""
from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from dagster import instance_for_test

from imgpipe.api.app import create_app
from imgpipe.defs.resources import ImgpipeResource
from imgpipe.defs.schedules import purge_old_requests_job
from imgpipe.images.batch import work_items
from imgpipe.images.image_policy import POLICY_VERSION
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.output.completion import complete_request
from imgpipe.processing import compress_images
from imgpipe.retention import PurgePlan, parse_duration, parse_statuses, purge
from imgpipe.runs.partitions import partition_forgetter
from imgpipe.status.models import Obtained, Source, utcnow
from imgpipe.storage.keys import THUMBNAIL_SIDES, errors_key, image_key, input_key, output_key, thumbnail_key
from imgpipe_tests.asgi import asgi_get
from imgpipe_tests.images import save_jpeg
from imgpipe_tests.kept_content import has_content
from imgpipe_tests.pipeline import csv_for, process_here

BASE = "http://127.0.0.1:8000"


def test_purge_removes_exactly_the_old_requests_and_keeps_what_the_others_reuse(backends, image_server,
                                                                                image_root, tmp_path):
    store, storage = backends.store, backends.storage
    a, b, c, d, shared_url = served_images(uuid.uuid4().hex[:8], image_root, image_server, "a", "b", "c", "d", "shared")
    ids = [process_here(backends, rows, f"r{index}.csv") for index, rows in enumerate(
        [[[a]], [[b]], [[shared_url, c]], [[shared_url]], [[d]]])]
    old, kept = ids[:3], ids[3:]
    shared = {i.input_url: i for i in store.images(ids[3])}[shared_url]
    assert shared.obtained in (Obtained.NOT_MODIFIED, Obtained.SAME_CONTENT)  # request 4 reused request 3's output
    made_old(store, *old)
    only_old = {i.input_sha256 for r in old for i in store.images(r)} - {i.input_sha256 for r in kept
                                                                          for i in store.images(r)}
    plan = PurgePlan(older_than=parse_duration("30m"), statuses=parse_statuses(None))

    with instance_for_test() as instance:
        instance.add_dynamic_partitions("requests", ids)
        dry = [o.request.request_id for o in purge(backends, plan, dry_run=True)]
        assert dry == old and all(store.get_request(r) for r in ids)
        assert all(storage.exists(input_key(r)) for r in ids)

        forget = partition_forgetter(instance, delete_runs=False)
        purged = [o.request.request_id for o in purge(backends, plan, forget_partition=forget)]

        assert purged == old
        assert instance.get_dynamic_partitions("requests") == kept
    for request_id in old:
        assert store.get_request(request_id) is None and store.images(request_id) == []
        assert store.products(request_id) == [] and store.purged_at(request_id) is not None
        assert not storage.exists(input_key(request_id)) and not storage.exists(output_key(request_id))
    for sha256 in only_old:
        assert not has_content(storage, POLICY_VERSION, sha256, ".jpg")
    assert has_content(storage, POLICY_VERSION, shared.input_sha256, ".jpg")  # still reused by request 4

    app = create_app(backends.settings)
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


def served_images(folder, image_root, image_server, *names: str) -> list[str]:
    for name in names:
        save_jpeg(image_root / folder / f"{name}.jpg", quality=80, seed=hash(name) % 100)
    return [image_server.url(f"img/{folder}/{name}.jpg") for name in names]


def made_old(store, *request_ids: str) -> None:
    """Created in 2000, a minute apart, in the order given."""
    long_ago = utcnow().replace(year=2000)
    store._run(*[("UPDATE requests SET created_at = ? WHERE request_id = ?", [long_ago.replace(minute=n), r])
                 for n, r in enumerate(request_ids)])


def files_of(store, request_id: str) -> list[str]:
    """The keys of every file the request's run wrote and of its input."""
    names = [image.output_path.rsplit("/", 1)[1] for image in store.images(request_id) if image.output_path]
    return [input_key(request_id), output_key(request_id), *[image_key(request_id, name) for name in names],
            *[thumbnail_key(request_id, f"{name.rsplit('.', 1)[0]}.{side}.jpg") for name in names
              for side in THUMBNAIL_SIDES]]


def test_a_request_still_processing_is_refused_and_purged_whole_once_its_run_has_ended(backends, image_server,
                                                                                        image_root):
    """The audit's case: purged while processing, its run wrote images and thumbnails afterwards that the API
    served and that no later purge removed (no rows were left to find them)."""
    store, storage = backends.store, backends.storage
    urls = served_images(uuid.uuid4().hex[:8], image_root, image_server, "a", "b")
    request_id = take_upload(backends, Upload(csv_for([urls]).encode(), "running.csv", Source.API)).request_id
    store.start_processing(request_id, "run-1")

    [refused] = purge(backends, PurgePlan(older_than=parse_duration("0s"), statuses=parse_statuses("processing")))

    assert (refused.request.request_id, refused.refused) == (
        request_id, f"request {request_id} is processing: cancel its run first")
    assert store.get_request(request_id).status == "processing" and store.purged_at(request_id) is None
    assert storage.exists(input_key(request_id))
    # The run goes on, writes its images and thumbnails, and ends.
    compress_images(backends, request_id, work_items(store.unfinished_slots(request_id)))
    complete_request(backends, request_id, "run-1")
    written = files_of(store, request_id)
    assert len(written) == 2 + 2 * 3 and all(storage.exists(key) for key in written)

    [purged] = purge(backends, PurgePlan(older_than=parse_duration("0s"), statuses=parse_statuses(None)))

    assert (purged.request.request_id, purged.refused) == (request_id, None)
    assert [key for key in written if storage.exists(key)] == []
    assert store.get_request(request_id) is None and store.purged_at(request_id) is not None


def test_a_rejected_request_and_one_whose_outputs_another_still_uses_are_purged(backends, image_server, image_root):
    store, storage = backends.store, backends.storage
    [url] = served_images(uuid.uuid4().hex[:8], image_root, image_server, "shared")
    rejected = take_upload(backends, Upload(b"S. No.,Product Name\n1,,\n", "bad.csv", Source.API)).request_id
    first, second = (process_here(backends, [[url]], name) for name in ("first.csv", "second.csv"))
    made_old(store, rejected, first)

    outcomes = list(purge(backends, PurgePlan(older_than=parse_duration("30m"), statuses=parse_statuses(None))))

    assert [(o.request.request_id, o.refused) for o in outcomes] == [(rejected, None), (first, None)]
    assert store.get_request(rejected) is None and not storage.exists(errors_key(rejected))
    assert [key for key in files_of(store, first) if storage.exists(key)] == []
    [kept] = store.images(second)
    assert has_content(storage, POLICY_VERSION, kept.input_sha256, ".jpg")


def test_the_retention_schedule_purges_the_old_requests_that_have_ended_and_no_other(backends):
    store, storage = backends.store, backends.storage
    settings = backends.settings.model_copy(update={"retention_days": 1})
    ended, running, queued = (take_upload(backends, Upload(
        csv_for([["https://e.com/a.jpg"]]).encode(), f"{name}.csv", Source.API)).request_id
        for name in ("ended", "running", "queued"))
    for request_id in (ended, running):
        store.start_processing(request_id, "run-1")
    store.finish_request(ended, "completed")
    made_old(store, ended, running, queued)

    with instance_for_test() as instance:
        result = purge_old_requests_job.execute_in_process(
            instance=instance, resources={"imgpipe": ImgpipeResource.from_settings(settings, secrets_from_env=False)})

    assert result.success
    assert store.get_request(ended) is None and not storage.exists(input_key(ended))
    for request_id, status in ((running, "processing"), (queued, "queued")):
        assert store.get_request(request_id).status == status and storage.exists(input_key(request_id))


@pytest.mark.parametrize("text, expected", [("90s", timedelta(seconds=90)), ("15m", timedelta(minutes=15)),
                                            ("12h", timedelta(hours=12)), (" 30d ", timedelta(days=30))])
def test_a_duration_is_read_in_its_unit(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["30", "3w", "²d", "١٢d", "-1d", "99999999999d", "9" * 40 + "s", "365001d"])
def test_what_is_not_a_duration_of_the_calendar_is_refused_with_its_text(text):
    with pytest.raises(ValueError, match="not a duration|longer than"):
        parse_duration(text)
