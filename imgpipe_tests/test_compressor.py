"""Compression in a child process per image: same result as in-process, and every failure stays in the child.

A hang or a crash inside a decoder is staged by naming a stand-in from `imgpipe_tests.faults` as the work
the child runs.
"""
from __future__ import annotations

import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from imgpipe.images.compressor import compress_isolated
from imgpipe.images.image_policy import compress_image
from imgpipe.settings import MIB
from imgpipe_tests import faults

LIMITS = {"max_pixels": 50_000_000, "max_frames": 1000}
GENEROUS = {"timeout": 60.0, "memory_bytes": 2048 * MIB}


def jpeg(size: tuple[int, int] = (320, 240), quality: int = 80, seed: int = 0) -> bytes:
    image = Image.merge(
        "RGB",
        (Image.linear_gradient("L").resize(size), Image.effect_noise(size, 30 + seed), Image.new("L", size, seed)),
    )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def assert_reaped(pid: int) -> None:
    assert not Path(f"/proc/{pid}").exists(), f"child {pid} is still there (a zombie?)"
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_result_is_the_in_process_result_made_in_another_process():
    data = jpeg()

    outcome = compress_isolated(data, **LIMITS, **GENEROUS)

    assert (outcome.ok, outcome.error) == (True, None)
    assert outcome.image == compress_image(data, **LIMITS)
    assert outcome.pid != os.getpid()
    assert_reaped(outcome.pid)


def test_rejected_image_comes_back_with_its_reason():
    outcome = compress_isolated(b"not an image at all", **LIMITS, **GENEROUS)

    assert (outcome.ok, outcome.image) == (False, None)
    assert outcome.error == "not an image (unrecognised format)"


def test_unexpected_error_in_the_child_is_reported():
    outcome = compress_isolated(jpeg(), **LIMITS, **GENEROUS, work=faults.RAISE)

    assert (outcome.ok, outcome.error) == (False, "compression failed: RuntimeError: decoder bug")
    assert_reaped(outcome.pid)


def test_hung_child_is_killed_at_the_timeout():
    started = time.monotonic()
    outcome = compress_isolated(jpeg(), **LIMITS, timeout=0.5, memory_bytes=2048 * MIB, work=faults.HANG)

    assert time.monotonic() - started < 5
    assert (outcome.ok, outcome.error) == (False, "compression took longer than 0.5 s")
    assert_reaped(outcome.pid)


@pytest.mark.parametrize(
    ("work", "error"),
    [(faults.KILLED, "compression process died (signal 9)"), (faults.EXITED, "compression process died (exit code 3)")],
    ids=["killed", "exited"],
)
def test_child_that_ends_without_answering_fails_only_its_image(work, error):
    outcome = compress_isolated(jpeg(), **LIMITS, **GENEROUS, work=work)

    assert (outcome.ok, outcome.error) == (False, error)
    assert_reaped(outcome.pid)


def test_memory_cap_fails_a_large_image_and_not_the_parent():
    # 40 megapixels decode to 160 MB: far beyond the allowance, even with what the child inherits as free heap.
    buffer = io.BytesIO()
    Image.new("RGB", (8000, 5000), (40, 120, 200)).save(buffer, "JPEG", quality=50)

    outcome = compress_isolated(buffer.getvalue(), **LIMITS, timeout=60.0, memory_bytes=8 * MIB)

    assert not outcome.ok
    assert outcome.error == "out of memory: the image needs more than 8 MiB"
    assert_reaped(outcome.pid)
    assert compress_isolated(jpeg(), **LIMITS, **GENEROUS).ok  # the parent carries on


def test_concurrent_calls_from_eight_threads_all_succeed():
    images = [jpeg(seed=seed) for seed in range(16)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda data: compress_isolated(data, **LIMITS, **GENEROUS), images))

    assert [outcome.error for outcome in outcomes] == [None] * len(images)
    assert [outcome.image for outcome in outcomes] == [compress_image(data, **LIMITS) for data in images]
    assert len({outcome.pid for outcome in outcomes}) == len(images)
    for outcome in outcomes:
        assert_reaped(outcome.pid)


@pytest.mark.timeout(90)  # a wedge would otherwise hold the suite for its whole default timeout
def test_requests_and_answers_larger_than_a_pipe_from_many_threads_do_not_wedge():
    # Each request and answer is several times a pipe's 64 KiB, so the caller and the server both block on
    # writes; the reader thread must keep answers flowing while another thread is still sending.
    payloads = [bytes([seed]) * (256 * 1024 + seed) for seed in range(24)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(compress_isolated, data, **LIMITS, **GENEROUS, work=faults.ECHO_LARGE)
                   for data in payloads]
        outcomes = [future.result(timeout=60) for future in futures]

    assert [len(outcome.error) for outcome in outcomes] == [4 * len(data) for data in payloads]
