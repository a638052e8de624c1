"""What a batch costs per image must not grow with its size, nor with what earlier requests kept.

- `BatchRunner.run` hands each finished image to its loop through a queue: it reports every image exactly once,
  in groups on its timer, whatever the count (it used to wait on all pending futures at every wake-up, a cost
  per image that grew with the request: 36 ms a wake-up with 20,000 pending).
- `reuse_for` lists the kept outputs once per batch: a new image whose bytes were never kept costs no status
  store session of its own (a DuckDB session per image cost more CPU than the image's encode).
"""
from __future__ import annotations

import threading
import time

from imgpipe.backends import Backends
from imgpipe.images.batch import BatchRunner, WorkItem
from imgpipe.images.image_policy import POLICY_VERSION
from imgpipe.processing import reuse_for
from imgpipe.settings import Settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.models import ImageResult, ImageStatus, Obtained
from imgpipe.storage.local import LocalStorage


def runner(tmp_path) -> BatchRunner:
    settings = Settings.from_env({"IMGPIPE_HOME": str(tmp_path)})
    return BatchRunner(settings, LocalStorage(settings.home_dir, settings.public_base_url), "r1")


def test_every_image_of_a_large_batch_is_reported_once_in_groups_on_the_timer(tmp_path, monkeypatch):
    count = 20_000
    batch = runner(tmp_path)
    monkeypatch.setattr(batch, "process", lambda item, download_over: (
        time.sleep(0.0002), ImageResult(item.input_url, ImageStatus.COMPRESSED))[1])
    reports: list[tuple[float, int]] = []
    reported: list[str] = []

    def report(done):
        reports.append((time.monotonic(), len(done)))
        reported.extend(r.input_url for r in done)

    started, cpu = time.monotonic(), time.thread_time()
    results = batch.run([WorkItem(f"https://x.example/{i}.jpg", f"r{i}-p1") for i in range(count)], report,
                        report_interval=0.2)

    assert len(results) == count
    assert sorted(reported) == sorted(r.input_url for r in results) and len(set(reported)) == count
    assert len(reports) >= 2  # in groups, not once at the end ...
    gaps = [later - earlier for (earlier, _), (later, _) in zip(reports, reports[1:])]
    assert all(gap >= 0.19 for gap in gaps[:-1])  # ... and not more often than the timer allows
    assert time.thread_time() - cpu < 0.5 * (time.monotonic() - started) + 1  # the loop itself is not busy


def test_a_new_image_costs_no_store_session_and_a_kept_one_is_still_found(tmp_path, monkeypatch):
    settings = Settings.from_env({"IMGPIPE_HOME": str(tmp_path)})
    store = DuckDBStatusStore(tmp_path / "imgpipe.duckdb")
    kept = "a" * 64
    store.record_results("earlier", [ImageResult(
        "https://x.example/kept.jpg", ImageStatus.COMPRESSED, output_path="/x", output_url="http://x", bytes_in=10,
        bytes_out=5, quality_in=80, quality_out=40, format_out="JPEG", obtained=Obtained.FETCHED, input_sha256=kept,
        kept_extension=".jpg")], POLICY_VERSION)
    backends = Backends(settings, store, LocalStorage(settings.home_dir, settings.public_base_url))
    reuse = reuse_for(backends, store.get_request("r1"), [WorkItem("https://x.example/new.jpg", "r1-p1")])
    sessions = []
    original = store._transact
    monkeypatch.setattr(store, "_transact", lambda work: (sessions.append(threading.get_ident()), original(work))[1])

    misses = [reuse.find_output(f"{i:064x}") for i in range(20)]
    hit = reuse.find_output(kept)

    assert misses == [None] * 20
    assert hit is not None and hit.input_sha256 == kept and hit.extension == ".jpg"
    assert len(sessions) == 2  # the list of kept outputs once, and the one that was found
