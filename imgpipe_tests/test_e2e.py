"""The whole stack as a user meets it: a real `dagster-daemon` watching a real inbox, the real REST API
(`imgpipe api`), images from a real HTTP server and a real webhook receiver, all on 127.0.0.1."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from dagster import RunsFilter
from PIL import Image
from standardwebhooks import Webhook

from imgpipe.instance import instance_at
from imgpipe.runs.tags import request_tag
from imgpipe_tests.images import save_jpeg
from imgpipe_tests.servers import REPO, WebhookReceiver, product_csv, wait_for
from imgpipe_tests.stack import BIN, TERMINAL, Stack, run_workers

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("stack"))
    stack.start()
    yield stack
    stack.stop()


def images(image_root: Path, image_server, count: int, quality: int = 80) -> list[str]:
    folder = uuid.uuid4().hex[:8]
    for i in range(count):
        save_jpeg(image_root / folder / f"{i}.jpg", quality=quality, seed=i)
    return [image_server.url(f"img/{folder}/{i}.jpg") for i in range(count)]


def test_folder_drop_with_a_dead_url_ends_completed_with_errors_within_60s(stack, image_server, image_root):
    urls = images(image_root, image_server, 8)
    rows = [urls[:3], [urls[3], image_server.url("status/404/gone.jpg"), urls[4]], urls[5:]]
    started = time.monotonic()
    stack.drop("three-by-three.csv", product_csv(rows))

    request = stack.wait_terminal(stack.request_for("three-by-three.csv", 30).request_id, 60)

    assert time.monotonic() - started < 60
    assert request.status == "completed_with_errors" and request.source == "folder"
    counts = stack.store.counts(request.request_id)
    assert (counts["compressed"], counts["failed"]) == (8, 1)
    [failed] = [i for i in stack.store.images(request.request_id) if i.status == "failed"]
    assert "HTTP 404" in failed.error
    with open(stack.home / "public" / "outputs" / f"{request.request_id}.csv", newline="") as f:
        output = list(csv.reader(f))
    assert output[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
    assert [r[0] for r in output[1:]] == ["1", "2", "3"]
    assert [u.strip() for u in output[2][3].split(",")][1] == ""


def test_api_upload_is_queued_processed_served_and_signed_once(stack, image_server, image_root):
    receiver = WebhookReceiver()
    urls = images(image_root, image_server, 6)
    data = product_csv([urls[:3], urls[3:]]).encode()

    answer = requests.post(f"{stack.api}/requests", files={"file": ("catalogue.csv", data, "text/csv")},
                           data={"webhook_url": receiver.url()}, timeout=30)

    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "queued"
    seen = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        doc = requests.get(body["status_url"], timeout=10).json()
        if not seen or seen[-1] != doc["status"]:
            seen.append(doc["status"])
        if doc["status"] in TERMINAL:
            break
        time.sleep(0.1)
    assert seen[0] == "queued" and seen[-1] == "completed", seen
    assert "processing" in seen, seen
    output = requests.get(f"{stack.api}/requests/{body['request_id']}/output.csv", timeout=10)
    assert output.status_code == 200
    rows = list(csv.reader(io.StringIO(output.text)))
    served = [u.strip() for row in rows[1:] for u in row[3].split(",")]
    assert len(served) == 6
    for url in served:
        image = requests.get(url, timeout=10)
        assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).format == "JPEG"
    assert wait_for(lambda: receiver.calls, 30)
    time.sleep(2)
    [call] = receiver.calls
    payload = Webhook(os.environ["IMGPIPE_WEBHOOK_SECRET"]).verify(call["body"], call["headers"])
    assert payload["type"] == "request.completed" and payload["request_id"] == body["request_id"]
    assert payload["counts"]["compressed"] == 6
    receiver.close()


def test_webhook_is_retried_after_two_503s_and_delivered_once(stack, image_server, image_root):
    receiver = WebhookReceiver(codes=[503, 503])
    [url] = images(image_root, image_server, 1)
    answer = requests.post(f"{stack.api}/requests", params={"webhook_url": receiver.url()},
                           data=product_csv([[url]]).encode(), headers={"Content-Type": "text/csv"}, timeout=30)
    request_id = answer.json()["request_id"]
    stack.wait_terminal(request_id, 60)

    deliveries = wait_for(lambda: (d := stack.store.webhook_deliveries(request_id)) and len(d) == 3 and d, 30)

    assert [d.status_code for d in deliveries] == [503, 503, 200]
    assert [d.attempt for d in deliveries] == [1, 2, 3]
    assert len({c["headers"]["webhook-id"] for c in receiver.calls}) == 1
    assert [c["code"] for c in receiver.calls] == [503, 503, 200]
    receiver.close()


def test_a_killed_run_ends_failed_and_a_retry_finishes_without_redoing_work(stack, image_server, image_root):
    receiver = WebhookReceiver()
    fast, slow_file = images(image_root, image_server, 2)
    slow = slow_file.replace("/img/", "/slow/10/")  # under the 15 s read timeout, so the retry gets it
    stack.drop("doomed.json", json.dumps({"webhook_url": receiver.url()}))
    stack.drop("doomed.csv", product_csv([[fast, slow], [fast]]))
    request_id = stack.request_for("doomed.csv", 30).request_id
    assert wait_for(lambda: stack.store.counts(request_id)["compressed"] == 2, 60), stack.log_tail()

    workers = run_workers(stack)
    assert workers, "no run worker found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)

    request = stack.wait_terminal(request_id, 90)
    assert request.status == "failed" and request.error
    assert wait_for(lambda: receiver.calls, 30)
    payload = json.loads(receiver.calls[0]["body"])
    assert payload["type"] == "request.failed" and payload["request_id"] == request_id
    assert (stack.home / "public" / "outputs" / f"{request_id}.csv").exists()

    retried = subprocess.run([str(BIN / "imgpipe"), "retry", request_id, "--wait"], env=stack.env, cwd=REPO,
                             capture_output=True, text=True, timeout=120)

    assert retried.returncode == 0, retried.stderr
    images_rows = stack.store.images(request_id)
    assert stack.store.get_request(request_id).status == "completed", [(i.status, i.error) for i in images_rows]
    assert len(images_rows) == 3 and {i.status for i in images_rows} == {"compressed"}
    assert len(stack.store.products(request_id)) == 2
    path_of = lambda url: url.split(str(image_server.port), 1)[1]  # noqa: E731
    assert image_server.hits_for(path_of(fast)) == 1  # compressed once, before the kill, and kept
    assert wait_for(lambda: len(receiver.calls) == 2, 30)
    time.sleep(2)
    assert [json.loads(c["body"])["type"] for c in receiver.calls] == ["request.failed", "request.completed"]
    receiver.close()


def test_retry_against_the_running_daemon_redoes_only_failed_images(stack, image_server, image_root):
    receiver = WebhookReceiver()
    good, first, second = images(image_root, image_server, 3)
    flaky = [u.replace("/img/", "/flaky/1/") for u in (first, second)]
    stack.drop("flaky.json", json.dumps({"webhook_url": receiver.url()}))
    stack.drop("flaky.csv", product_csv([[good, flaky[0]], [flaky[1]]]))
    request_id = stack.request_for("flaky.csv", 30).request_id
    assert stack.wait_terminal(request_id, 60).status == "completed_with_errors"

    retried = subprocess.run([str(BIN / "imgpipe"), "retry", request_id, "--wait"], env=stack.env, cwd=REPO,
                             capture_output=True, text=True, timeout=120)

    assert retried.returncode == 0, retried.stderr
    assert stack.store.get_request(request_id).status == "completed"
    path_of = lambda url: url.split(str(image_server.port), 1)[1]  # noqa: E731
    assert image_server.hits_for(path_of(good)) == 1
    assert [image_server.hits_for(path_of(u)) for u in flaky] == [2, 2]
    assert wait_for(lambda: len(receiver.calls) == 2, 30)
    assert [json.loads(c["body"])["status"] for c in receiver.calls] == ["completed_with_errors", "completed"]
    assert receiver.calls[0]["headers"]["webhook-id"] != receiver.calls[1]["headers"]["webhook-id"]
    with open(stack.home / "public" / "outputs" / f"{request_id}.csv", newline="") as f:
        assert all(u.strip() for row in list(csv.reader(f))[1:] for u in row[3].split(","))
    receiver.close()


# The daemon goes round its sensor loop every 5 s whatever a sensor asks (IMGPIPE_SENSOR_INTERVAL is 1 here).
SENSOR_LOOP_SECONDS = 5


def test_a_poisoned_sidecar_stops_nothing_but_its_own_upload(stack, image_server, image_root):
    """Safety round 2, item 1: JSON nested 5,000 deep once stopped every inbox tick, REST uploads included."""
    warm_up, poisoned_url, dropped_url, posted_url = images(image_root, image_server, 4)
    stack.drop("warm-up.csv", product_csv([[warm_up]]))  # the daemon is going round its loop
    stack.request_for("warm-up.csv", 60)
    stack.drop("poisoned.json", "[" * 5000 + "]" * 5000)
    stack.drop("poisoned.csv", product_csv([[poisoned_url]]))
    stack.drop("beside.csv", product_csv([[dropped_url]]))
    started = time.monotonic()
    posted = requests.post(f"{stack.api}/requests", data=product_csv([[posted_url]]),
                           headers={"Content-Type": "text/csv"}, timeout=30)
    assert posted.status_code == 202, posted.text
    ids = [stack.request_for("beside.csv", 2 * SENSOR_LOOP_SECONDS).request_id, posted.json()["request_id"]]

    # Both have their run within two sensor loops of the drop (plus the second tick's own few seconds of work: it
    # takes the files in and asks for the runs).
    with instance_at(stack.dagster_home) as instance:
        def launched() -> bool:
            return all(instance.get_run_records(RunsFilter(tags={request_tag(i): "true"}), limit=1)
                       for i in ids)

        assert wait_for(launched, 2 * SENSOR_LOOP_SECONDS + 3 - (time.monotonic() - started), step=0.1), \
            stack.log_tail()
    launched_after = time.monotonic() - started
    for request_id in ids:
        assert stack.wait_terminal(request_id, 60).status == "completed"
    poisoned = stack.request_for("poisoned.csv", 1)
    assert poisoned.status == "rejected"
    assert poisoned.errors == [{"row": None, "column": None,
                                "message": "sidecar poisoned.json is not valid JSON: nested too deeply"}]
    print(f"beside a poisoned sidecar, a dropped CSV and a REST upload had their runs {launched_after:.1f} s "
          "after the drop")


def test_a_retry_while_processing_is_refused_and_nothing_is_done_twice(stack, image_server, image_root):
    """Safety round 2, item 4: a second, overlapping run fetched every image twice and sent two webhooks."""
    receiver = WebhookReceiver()
    fast, slow_file = images(image_root, image_server, 2)
    slow = slow_file.replace("/img/", "/slow/6/")
    stack.drop("busy.json", json.dumps({"webhook_url": receiver.url()}))
    stack.drop("busy.csv", product_csv([[fast, slow]]))
    request_id = stack.request_for("busy.csv", 30).request_id
    assert wait_for(lambda: stack.store.get_request(request_id).status == "processing", 30), stack.log_tail()

    retried = subprocess.run([str(BIN / "imgpipe"), "retry", request_id], env=stack.env, cwd=REPO,
                             capture_output=True, text=True, timeout=60)

    assert retried.returncode == 2
    assert f"request {request_id} is processing; retry it once it has ended" in retried.stderr
    assert stack.wait_terminal(request_id, 60).status == "completed"
    path_of = lambda url: url.split(str(image_server.port), 1)[1]  # noqa: E731
    assert [image_server.hits_for(path_of(u)) for u in (fast, slow)] == [1, 1]
    assert wait_for(lambda: receiver.calls, 30)
    time.sleep(3)  # no second webhook follows
    assert [json.loads(c["body"])["status"] for c in receiver.calls] == ["completed"]
    receiver.close()


def test_six_small_requests_dropped_together_share_a_run_and_each_ends_on_its_own(stack, image_server, image_root):
    """A marketplace's shape: many small CSVs at once. They are processed in a shared run, each request with its
    own output CSV, webhook and partition materialization; one whose every image fails touches no other."""
    from dagster import AssetKey

    receiver = WebhookReceiver()
    urls = images(image_root, image_server, 10)
    dead = [image_server.url(f"status/404/{uuid.uuid4().hex[:6]}.jpg") for _ in range(2)]
    rows = {f"seller-{i}.csv": [urls[2 * i:2 * i + 2]] for i in range(5)} | {"seller-dead.csv": [dead]}
    for name in rows:  # sidecars first, then every CSV at once
        stack.drop(name.replace(".csv", ".json"), json.dumps({"webhook_url": receiver.url(name)}))
    for name, product_rows in rows.items():
        stack.drop(name, product_csv(product_rows))
    requests_by_name = {name: stack.wait_terminal(stack.request_for(name, 30).request_id, 90) for name in rows}

    assert {name: r.status for name, r in requests_by_name.items()} == {
        **{f"seller-{i}.csv": "completed" for i in range(5)}, "seller-dead.csv": "failed"}
    for name, request in requests_by_name.items():
        assert (stack.home / "public" / "outputs" / f"{request.request_id}.csv").exists()
        assert wait_for(lambda: receiver.calls_to(name), 30), name
        [call] = receiver.calls_to(name)
        assert json.loads(call["body"])["request_id"] == request.request_id
    with instance_at(stack.dagster_home) as instance:
        shared = {r.dagster_run.run_id for request in requests_by_name.values()
                  for r in instance.get_run_records(RunsFilter(tags={request_tag(request.request_id): "true"}))}
        assert len(shared) < len(rows)  # not a run each
        ids = {r.request_id for r in requests_by_name.values()}
        for asset in ("upload_manifest", "compressed_images", "output_csv", "webhook"):
            # Recorded once the request's end is, moments after its terminal status.
            assert wait_for(lambda: ids <= instance.get_materialized_partitions(AssetKey(asset)), 30), asset

    hits_before = {u: image_server.hits_for(u.split(str(image_server.port), 1)[1]) for u in urls + dead}
    dead_id = requests_by_name["seller-dead.csv"].request_id
    retried = subprocess.run([str(BIN / "imgpipe"), "retry", dead_id, "--wait"], env=stack.env, cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert retried.returncode == 1  # still failed: its images are still dead
    hits_after = {u: image_server.hits_for(u.split(str(image_server.port), 1)[1]) for u in urls + dead}
    assert {u for u in hits_after if hits_after[u] != hits_before[u]} == set(dead)  # only its images again
    assert wait_for(lambda: len(receiver.calls_to("seller-dead.csv")) == 2, 30)
    receiver.close()
