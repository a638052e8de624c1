"""Batch planning (pure) and the batch runner's reporting, against a real image server."""
from __future__ import annotations

import os
import time
import uuid

from imgpipe.images.batch import BatchRunner, WorkItem, split_into_batches, work_items
from imgpipe.settings import Settings
from imgpipe.status.store import ImageSlot
from imgpipe.storage import LocalStorage
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
