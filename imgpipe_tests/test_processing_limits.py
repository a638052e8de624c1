"""A request's processing bounded (safety round 3, item 3): a host that accepts connections and never answers
holds up no other host's images and fails its own fast, and IMGPIPE_REQUEST_DEADLINE ends what is not done in
time. Real servers on 127.0.0.1, real DuckDB, and for the deadline the real job in a real Dagster instance."""
from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest
from dagster import instance_for_test

from imgpipe import processing
from imgpipe.backends import open_backends
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.settings import Settings, load_settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.models import Source, utcnow
from imgpipe_tests.images import save_jpeg
from imgpipe_tests.pipeline import csv_for, read_output, run, slots_of, submit
from imgpipe_tests.servers import ImageServer


class BlackHole:
    """A host that accepts every connection on 127.0.0.1 and never sends a byte, holding each one open until
    `close`: a TCP handshake answered by the kernel, then silence."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.base = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.netloc = self.base.removeprefix("http://")
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.held.append(connection)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way, which close() alone does not
        self.listener.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def black_hole():
    hole = BlackHole()
    yield hole
    hole.close()


def test_a_black_holed_host_holds_up_no_other_host_and_fails_its_images_fast(tmp_path, black_hole, image_server,
                                                                             image_root):
    settings = Settings(home=tmp_path / "home", allow_private_hosts="127.0.0.1", connect_timeout=1, read_timeout=2,
                        image_timeout=10, request_deadline=30)
    backends = open_backends(settings)
    store = backends.store
    folder = uuid.uuid4().hex[:8]
    for name in ("a", "b"):
        save_jpeg(image_root / folder / f"{name}.jpg", quality=80, seed=ord(name))
    dead = [f"{black_hole.base}/img/{n}.jpg" for n in range(24)]
    healthy = [image_server.url(f"img/{folder}/{name}.jpg") for name in ("a", "b")]
    upload = Upload(csv_for([[url] for url in dead + healthy]).encode(), "dead-host.csv", Source.API)
    request_id = take_upload(backends, upload).request_id
    started = utcnow()

    [ended] = processing.process_requests(backends, [request_id], "run-dead-host")

    images = {image.input_url: image for image in store.images(request_id)}
    for url in healthy:
        assert images[url].status == "compressed"
        assert (images[url].updated_at - started).total_seconds() < 10
    request = store.get_request(request_id)
    assert ended.completion.status == request.status == "completed_with_errors"
    assert (request.completed_at - started).total_seconds() < settings.request_deadline
    given_up = f"host {black_hole.netloc} did not answer 3 downloads in a row (timeouts or connection failures)"
    assert all(images[url].status == "failed" and given_up in images[url].error for url in dead)
    # Only the first downloads reached the host (their retries racing the give-up, a few more): the other images
    # failed without a connection.
    not_tried = [url for url in dead if images[url].error == f"download failed: {given_up}; not tried"]
    assert len(black_hole.held) <= 2 * settings.per_host_connections
    assert len(not_tried) >= len(dead) - 2 * settings.per_host_connections
    output = read_output(settings, request_id)
    assert [row[3] for row in output[1:]] == [""] * 24 + [images[url].output_url for url in healthy]


def test_images_not_done_within_the_request_deadline_fail_and_the_request_ends_as_usual(image_server, image_root,
                                                                                         webhook_receiver):
    """Through the real job, each step a process of its own (as a Celery worker runs it): the deadline counts
    from the run's start, and a slow host's image under way and those still waiting for it fail with the reason,
    while an image of another host is compressed."""
    settings = load_settings()
    other_host = ImageServer(image_root)
    folder = uuid.uuid4().hex[:8]
    save_jpeg(image_root / folder / "fast.jpg", quality=80)
    save_jpeg(image_root / folder / "slow.jpg", quality=80)
    slow = [image_server.url(f"slow/60/{folder}/slow.jpg?{n}") for n in range(4)]
    fast = other_host.url(f"img/{folder}/fast.jpg")
    request_id = submit(settings, csv_for([slow[:2], [fast], slow[2:]]), f"deadline-{folder}.csv",
                        webhook_url=webhook_receiver.url("deadline"))
    # The slow host stays silent past the deadline but within every other limit, so nothing else ends its download.
    config = {**{name: value for name, value in settings.model_dump().items() if value is not None},
              "request_deadline": 20, "per_host_connections": 1, "read_timeout": 60.0}
    started = time.monotonic()

    try:
        with instance_for_test() as instance:
            ok, _ = run(instance, request_id, run_config={"resources": {"imgpipe": {"config": config}}})
    finally:
        other_host.close()

    assert ok and time.monotonic() - started < 20 + 30
    store = DuckDBStatusStore(settings.db_path)
    images = {image.input_url: image for image in store.images(request_id)}
    assert images[fast].status == "compressed"
    assert {url: (images[url].status, images[url].error) for url in slow} == {
        url: ("failed", "not done within IMGPIPE_REQUEST_DEADLINE (20 s)") for url in slow}
    # One connection to the slow host at a time: the images waiting for it were never fetched.
    assert image_server.hits_for(f"slow/60/{folder}/slow.jpg") == 1
    assert store.get_request(request_id).status == "completed_with_errors"
    output = read_output(settings, request_id)
    assert [slots_of(row[3]) for row in output[1:]] == [["", ""], [images[fast].output_url], ["", ""]]
    assert len(webhook_receiver.calls_to("deadline")) == 1


def test_a_batch_that_starts_after_its_requests_deadline_fetches_nothing(tmp_path, image_server, image_root):
    """A compress_batch step that waited past the deadline (a queue of Celery workers, a step run again after a
    lost worker) counts from the request's start, not its own: its images fail at once."""
    settings = Settings(home=tmp_path / "home", allow_private_hosts="127.0.0.1", request_deadline=60)
    backends = open_backends(settings)
    store = backends.store
    folder = uuid.uuid4().hex[:8]
    save_jpeg(image_root / folder / "a.jpg", quality=80)
    url = image_server.url(f"img/{folder}/a.jpg")
    request_id = take_upload(backends, Upload(csv_for([[url]]).encode(), "late.csv", Source.API)).request_id
    store.start_processing(request_id, "run-late")

    [result] = processing.compress_images(backends, request_id, started_at=time.time() - 61)

    assert (result.status, result.error) == ("failed", "not done within IMGPIPE_REQUEST_DEADLINE (60 s)")
    assert image_server.hits_for(f"img/{folder}/a.jpg") == 0
    [image] = store.images(request_id)
    assert (image.status, image.error) == ("failed", result.error)
