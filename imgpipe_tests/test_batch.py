"""Batch planning (pure) and the batch runner's reporting, against a real image server."""
from __future__ import annotations

import errno
import os
import time
import uuid

import pandas as pd
import pytest

from imgpipe.images.batch import BatchRunner, WorkItem, split_into_batches, work_items
from imgpipe.settings import Settings
from imgpipe.status.models import ImageSlot
from imgpipe.storage.local import LocalStorage
from imgpipe_tests.images import save_jpeg


def test_a_repeated_url_is_one_item_named_after_its_first_slot():
    slots = [ImageSlot(1, 1, "http://a/x.jpg"), ImageSlot(1, 2, "http://a/y.jpg"), ImageSlot(2, 1, "http://a/x.jpg")]
    assert work_items(slots) == [WorkItem("http://a/x.jpg", "r1-p1"), WorkItem("http://a/y.jpg", "r1-p2")]


def test_batches_are_bounded_in_count_and_never_tiny():
    items = [WorkItem(f"http://a/{i}.jpg", f"r{i}-p1") for i in range(2000)]
    batches = split_into_batches(items, max_batches=8, min_batch_size=16)
    assert len(batches) == 8 and sum(map(len, batches)) == 2000
    assert [item for batch in batches for item in batch] == items
    assert len(split_into_batches(items[:20], max_batches=8, min_batch_size=16)) == 2
    assert split_into_batches([], max_batches=8, min_batch_size=16) == []


def test_a_finished_image_is_reported_while_a_slow_one_still_downloads(tmp_path, image_server, image_root):
    folder = uuid.uuid4().hex[:8]
    for name in ("fast", "slow"):
        save_jpeg(image_root / folder / f"{name}.jpg", quality=80)
    settings = Settings.from_env({**os.environ, "IMGPIPE_HOME": str(tmp_path)})
    runner = BatchRunner(settings, LocalStorage(tmp_path, "http://127.0.0.1:8000"), "req-1")
    fast = image_server.url(f"img/{folder}/fast.jpg")
    slow = image_server.url(f"slow/4/{folder}/slow.jpg")
    reports: list[tuple[float, list[str]]] = []
    started = time.monotonic()

    results = runner.run([WorkItem(fast, "r1-p1"), WorkItem(slow, "r1-p2")],
                         report=lambda done: reports.append((time.monotonic() - started, [r.input_url for r in done])),
                         report_interval=0.5)

    assert {r.status for r in results} == {"compressed"}
    assert reports[0][1] == [fast] and reports[0][0] < 3
    assert reports[-1][1] == [slow]


def runner_for(tmp_path, storage=None, runner=BatchRunner) -> BatchRunner:
    settings = Settings.from_env({**os.environ, "IMGPIPE_HOME": str(tmp_path)})
    return runner(settings, storage or LocalStorage(tmp_path, "http://127.0.0.1:8000"), "req-1")


def unprintable(text: str) -> list[str]:
    return [char for char in text if ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # The reason phrase is never quoted; its NUL and escape stay out.
        ("rawstatus/500", "download failed: HTTP 500 from {base}/rawstatus/500"),
        # The redirect's Location is echoed in the URL of the next hop's failure.
        ("rawstatus/302", "download failed: HTTP 404 from {base}/missing/\\x00\\x1b[31mred"),
        # A status line that does not parse (a code of two digits) is quoted whole, line break included.
        ("rawstatus/99",
         "download failed: network error with {netloc}: HTTP/1.1 99 bad\\x00\\x1b[31mred\\x1b[0m\\x0d\\x0a"),
    ],
    ids=["reason", "location", "status line"],
)
def test_a_status_line_with_nul_bytes_and_ansi_escapes_is_stored_printable(tmp_path, image_server, path, expected):
    url = image_server.url(path)

    [result] = runner_for(tmp_path).run([WorkItem(url, "r1-p1")], report=lambda done: None)

    assert result.status == "failed"
    assert unprintable(result.error) == []
    netloc = image_server.base.removeprefix("http://")
    assert result.error == expected.format(base=image_server.base, netloc=netloc)


def test_an_error_text_quoting_a_long_status_line_is_bounded(tmp_path, image_server):
    url = image_server.url("rawstatus/" + "9" * 1500)  # a code of 1500 digits: quoted whole

    [result] = runner_for(tmp_path).run([WorkItem(url, "r1-p1")], report=lambda done: None)

    assert result.error.startswith("download failed: network error with ")
    assert len(result.error) == 500 and result.error.endswith("…")
    assert unprintable(result.error) == []


class DiskFullFor(LocalStorage):
    """Local storage whose disk is full when one image is written."""

    def __init__(self, home, name: str):
        super().__init__(home, "http://127.0.0.1:8000")
        self.full_for = name

    def write_image(self, request_id, name, data):
        if name.startswith(self.full_for + "."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write_image(request_id, name, data)


def test_an_image_that_cannot_be_stored_fails_alone_and_every_result_is_reported(tmp_path, image_server, image_root):
    folder = uuid.uuid4().hex[:8]
    items = [WorkItem(image_server.url(f"img/{folder}/{n}.jpg"), f"r{n}-p1") for n in range(3)]
    for n in range(3):
        save_jpeg(image_root / folder / f"{n}.jpg", quality=80, seed=n)
    reported = []

    results = runner_for(tmp_path, DiskFullFor(tmp_path, "r1-p1")).run(items, report=reported.extend)

    by_url = {result.input_url: result for result in results}
    assert sorted(by_url) == sorted(item.input_url for item in items) == sorted(r.input_url for r in reported)
    failed = by_url[items[1].input_url]
    assert failed.status == "failed" and failed.bytes_in > 0
    assert failed.error == "could not store the compressed image: [Errno 28] No space left on device"
    for item in (items[0], items[2]):
        assert by_url[item.input_url].status == "compressed"
        assert os.path.getsize(by_url[item.input_url].output_path) == by_url[item.input_url].bytes_out


class BrokenFor(BatchRunner):
    """A runner with a bug that one URL meets."""

    def process(self, item, download_over):
        if item.output_stem == "r2-p1":
            raise KeyError("a bug")
        return super().process(item, download_over)


def test_a_bug_met_by_one_image_fails_that_image_and_the_batch_still_returns(tmp_path, image_server):
    items = [WorkItem(image_server.url(f"status/404?{n}"), f"r{n}-p1") for n in range(3)]
    reported = []

    results = runner_for(tmp_path, runner=BrokenFor).run(items, report=reported.extend)

    urls = sorted(item.input_url for item in items)
    assert sorted(r.input_url for r in results) == sorted(r.input_url for r in reported) == urls
    errors = {r.input_url: r.error for r in results}
    assert errors[items[2].input_url] == "processing failed: KeyError: 'a bug'"
    assert errors[items[0].input_url].startswith("download failed: HTTP 404 from ")


def test_a_hostile_status_line_beside_good_images_is_stored_in_postgresql(tmp_path, image_server, image_root,
                                                                          postgres_url):
    """The distributed profile's store refuses a NUL: a batch with such a server beside good images is recorded
    whole, every good image `compressed` and the hostile one `failed` with its reason escaped."""
    from imgpipe.status.postgres_store import PostgresStatusStore

    folder = uuid.uuid4().hex[:8]
    for name in ("a", "b"):
        save_jpeg(image_root / folder / f"{name}.jpg", quality=80)
    urls = [image_server.url(f"img/{folder}/a.jpg"), image_server.url("rawstatus/99"),
            image_server.url(f"img/{folder}/b.jpg")]
    store = PostgresStatusStore(postgres_url)
    manifest = pd.DataFrame([(1, "1", "P", position, url) for position, url in enumerate(urls, 1)],
                            columns=["row_number", "serial", "product_name", "position", "input_url"])
    store.record_accepted("r-nul", source="api", file_name="x.csv", webhook_url=None, manifest=manifest)

    runner_for(tmp_path).run(work_items(store.unfinished_slots("r-nul")),
                             report=lambda done: store.record_results("r-nul", done))

    images = store.images("r-nul")
    assert [i.status for i in images] == ["compressed", "failed", "compressed"]
    assert "\x00" not in images[1].error and "\\x00" in images[1].error and not unprintable(images[1].error)
