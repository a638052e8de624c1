"""End to end through Dagster: a real instance, the multiprocess executor, a real HTTP server, real DuckDB."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest
from dagster import instance_for_test
from PIL import Image

from imgpipe.definitions import defs
from imgpipe.images.quality import estimate_jpeg_quality
from imgpipe.intake import csv_schema
from imgpipe.settings import Settings, load_settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.webhooks.signing import verify
from imgpipe_tests.images import save_jpeg
from imgpipe_tests.pipeline import HEADER, csv_for, read_output, run, slots_of, submit


@pytest.fixture(scope="module")
def instance():
    with instance_for_test() as instance:
        yield instance


def test_mixed_request_ends_completed_with_errors_and_aligned(instance, image_server, image_root):
    settings = load_settings()
    folder = uuid.uuid4().hex[:8]
    for i in range(8):
        save_jpeg(image_root / folder / f"{i}.jpg", quality=60 + i * 4, seed=i)
    urls = [image_server.url(f"img/{folder}/{i}.jpg") for i in range(8)]
    rows = [urls[0:3], [urls[3], image_server.url(f"status/404/{folder}"), urls[4]], urls[5:8]]
    request_id = submit(settings, csv_for(rows), f"mixed-{folder}.csv")

    ok, steps = run(instance, request_id)

    assert ok
    store = DuckDBStatusStore(settings.db_path)
    request = store.get_request(request_id)
    assert request.status == "completed_with_errors"
    assert request.completed_at is not None and request.total_images == 9
    images = store.images(request_id)
    assert [i.status for i in images].count("compressed") == 8
    [failed] = [i for i in images if i.status == "failed"]
    assert (failed.serial, failed.position) == ("2", 2) and "404" in failed.error
    for image in images:
        if image.status == "compressed":
            assert 0 < image.bytes_out < image.bytes_in
            assert image.quality_out == max(1, round(image.quality_in / 2))
            assert Image.open(image.output_path).format == "JPEG"
    output = read_output(settings, request_id)
    assert output[0] == HEADER
    assert [r[0] for r in output[1:]] == ["1", "2", "3"]
    assert [slots_of(r[2]) for r in output[1:]] == rows
    outputs = [slots_of(r[3]) for r in output[1:]]
    assert [len(s) for s in outputs] == [3, 3, 3]
    assert outputs[1][1] == "" and all(u.startswith("http://127.0.0.1:8000/images/") for u in outputs[0])
    # Nine images stay a handful of steps: upload_manifest, plan, one batch, summarize, output_csv, webhook.
    assert len(steps) <= 7, steps


def test_jpeg_quality_halved_and_identify_agrees(instance, image_server, image_root):
    settings = load_settings()
    folder = uuid.uuid4().hex[:8]
    for q in (20, 60, 90):
        save_jpeg(image_root / folder / f"q{q}.jpg", quality=q, seed=q)
    request_id = submit(settings, csv_for([[image_server.url(f"img/{folder}/q{q}.jpg")] for q in (20, 60, 90)]),
                        f"quality-{folder}.csv")

    ok, _ = run(instance, request_id)

    assert ok
    images = DuckDBStatusStore(settings.db_path).images(request_id)
    assert [(i.quality_in, i.quality_out) for i in images] == [(20, 10), (60, 30), (90, 45)]
    for image in images:
        with Image.open(image.output_path) as out:
            assert estimate_jpeg_quality(out.quantization) == image.quality_out
    if shutil.which("identify") is None:
        pytest.skip("ImageMagick's identify is not installed (make test installs it where it can)")
    for image in images:
        q = int(subprocess.run(["identify", "-format", "%Q", image.output_path], capture_output=True,
                               text=True, check=True).stdout)
        assert abs(q - image.quality_out) <= 1


def test_repeated_url_is_fetched_once_and_fills_every_slot(instance, image_server, image_root, webhook_receiver):
    settings = load_settings()
    folder = uuid.uuid4().hex[:8]
    save_jpeg(image_root / folder / "same.jpg", quality=80)
    same = image_server.url(f"img/{folder}/same.jpg")
    request_id = submit(settings, csv_for([[same], [same, same]]), f"repeat-{folder}.csv",
                        webhook_url=webhook_receiver.url("repeat"))

    ok, _ = run(instance, request_id)

    assert ok
    assert image_server.hits_for(f"img/{folder}/same.jpg") == 1
    output = read_output(settings, request_id)
    cells = [slots_of(r[3]) for r in output[1:]]
    assert len({u for cell in cells for u in cell}) == 1 and [len(c) for c in cells] == [1, 2]
    [call] = webhook_receiver.calls_to("repeat")
    assert verify(os.environ["IMGPIPE_WEBHOOK_SECRET"], call["headers"], call["body"])
    body = json.loads(call["body"])
    assert body["type"] == "request.completed" and body["request_id"] == request_id
    assert body["status"] == "completed" and body["counts"]["compressed"] == 3
    [delivery] = DuckDBStatusStore(settings.db_path).webhook_deliveries(request_id)
    assert delivery.status_code == 200 and delivery.attempt == 1


def test_retry_redoes_only_failed_images(instance, image_server, image_root):
    settings = load_settings()
    folder = uuid.uuid4().hex[:8]
    for name in ("a", "b", "c"):
        save_jpeg(image_root / folder / f"{name}.jpg", quality=75)
    urls = [image_server.url(f"img/{folder}/a.jpg"), image_server.url(f"flaky/1/{folder}/b.jpg"),
            image_server.url(f"flaky/1/{folder}/c.jpg")]
    request_id = submit(settings, csv_for([urls]), f"retry-{folder}.csv")
    store = DuckDBStatusStore(settings.db_path)

    assert run(instance, request_id)[0]
    assert store.get_request(request_id).status == "completed_with_errors"
    assert store.requeue_for_retry(request_id) == 2
    assert run(instance, request_id)[0]

    assert store.get_request(request_id).status == "completed"
    assert image_server.hits_for(f"img/{folder}/a.jpg") == 1
    assert image_server.hits_for(f"flaky/1/{folder}/b.jpg") == 2
    assert len(store.images(request_id)) == 3
    assert all(slots_of(read_output(settings, request_id)[1][3]))


def test_the_csv_is_parsed_once_per_request(instance, image_server, image_root, monkeypatch):
    """The intake validates the CSV and records its slots; the run works from those, never from the file."""
    settings = load_settings()
    folder = uuid.uuid4().hex[:8]
    save_jpeg(image_root / folder / "a.jpg", quality=70)
    parsed = []
    real_decode = csv_schema._decode  # every parse of an upload starts here
    monkeypatch.setattr(csv_schema, "_decode", lambda *args, **kwargs: parsed.append(1) or real_decode(*args, **kwargs))
    request_id = submit(settings, csv_for([[image_server.url(f"img/{folder}/a.jpg")]] * 2), f"once-{folder}.csv")
    assert len(parsed) == 1
    instance.add_dynamic_partitions("requests", [request_id])

    # In this process, so that every step's parsing would be counted.
    result = defs().resolve_job_def("process_request").execute_in_process(instance=instance, partition_key=request_id)

    assert result.success and len(parsed) == 1
    assert DuckDBStatusStore(settings.db_path).get_request(request_id).status == "completed"


def test_a_run_uses_the_resource_config_it_was_launched_with(instance, image_server, image_root, tmp_path):
    """Another home than the environment's, given as the `imgpipe` resource's config: every step process of the
    run (multiprocess executor) works there, and the environment's home never hears of the request."""
    env_settings = load_settings()
    other = Settings(**{**env_settings.model_dump(), "home": str(tmp_path / "other-home"),
                        "public_base_url": "http://images.example"})
    folder = uuid.uuid4().hex[:8]
    save_jpeg(image_root / folder / "a.jpg", quality=70)
    request_id = submit(other, csv_for([[image_server.url(f"img/{folder}/a.jpg")]]), f"other-{folder}.csv")

    ok, _ = run(instance, request_id, run_config={"resources": {"imgpipe": {"config": {
        name: value for name, value in other.model_dump().items() if value is not None}}}})

    assert ok
    assert DuckDBStatusStore(other.db_path).get_request(request_id).status == "completed"
    [image] = DuckDBStatusStore(other.db_path).images(request_id)
    assert image.output_path.startswith(str(other.images_dir)) and image.output_url.startswith("http://images.example/")
    assert read_output(other, request_id)[1][3] == image.output_url
    assert DuckDBStatusStore(env_settings.db_path).get_request(request_id) is None
    assert not (env_settings.outputs_dir / f"{request_id}.csv").exists()


def test_the_same_csv_again_reuses_every_output_through_the_job(instance, image_server, image_root):
    """Through the real job: the second request encodes nothing (the tests' image server sends no validators,
    so its images are downloaded and recognised by their bytes), and has files and URLs of its own."""
    settings = load_settings()
    folder = uuid.uuid4().hex[:8]
    for name in ("a", "b"):
        save_jpeg(image_root / folder / f"{name}.jpg", quality=75, seed=ord(name))
    rows = [[image_server.url(f"img/{folder}/a.jpg"), image_server.url(f"img/{folder}/b.jpg")]]
    first = submit(settings, csv_for(rows), f"night-1-{folder}.csv")
    assert run(instance, first)[0]
    second = submit(settings, csv_for(rows), f"night-2-{folder}.csv")
    assert run(instance, second)[0]

    store = DuckDBStatusStore(settings.db_path)
    assert [i.obtained for i in store.images(first)] == ["fetched", "fetched"]
    assert [i.obtained for i in store.images(second)] == ["same_content", "same_content"]
    assert all(f"/images/{second}/" in i.output_url for i in store.images(second))
    [[_, _, _, urls]] = read_output(settings, second)[1:]
    assert slots_of(urls) == [i.output_url for i in store.images(second)]
