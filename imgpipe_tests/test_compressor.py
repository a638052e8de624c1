"""Compression in a process of its own: same result as in-process, and every failure stays in that process.

Every case runs under both isolation modes (IMGPIPE_ISOLATION): `process`, a fresh process per image, and
`pool`, long-lived workers recycled every few images. A hang or a crash inside a decoder is staged by naming a
stand-in from `imgpipe_tests.faults` as the work the child runs; `imgpipe_tests.compressor_work` has stand-ins
that tell when and where they ran.
"""
from __future__ import annotations

import collections
import io
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from imgpipe.images import compressor
from imgpipe.images.compressor import compress_isolated as compress_in_process_of_its_own
from imgpipe.images.image_policy import compress_image
from imgpipe.images.renditions import RenditionSpec
from imgpipe.settings import MIB
from imgpipe_tests import compressor_work, faults

LIMITS = {"max_pixels": 50_000_000, "max_frames": 1000}
GENEROUS = {"timeout": 60.0, "memory_bytes": 2048 * MIB}
RECYCLE = 5  # images a pool worker does here before it is replaced


@pytest.fixture(params=["process", "pool"], autouse=True)
def isolation(request, monkeypatch) -> str:
    """`compress_isolated` below runs in this mode."""
    return request.param


@pytest.fixture
def compress_isolated(isolation):
    def compress(data, **kwargs):
        return compress_in_process_of_its_own(data, isolation=isolation, recycle=RECYCLE, **kwargs)
    return compress


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


def test_result_is_the_in_process_result_made_in_another_process(compress_isolated, isolation):
    data = jpeg()

    outcome = compress_isolated(data, **LIMITS, **GENEROUS)

    assert (outcome.ok, outcome.error) == (True, None)
    assert outcome.image == compress_image(data, **LIMITS)
    assert outcome.pid not in (0, os.getpid(), compressor._client.server_pid())
    if isolation == "process":
        assert_reaped(outcome.pid)


def test_renditions_are_made_in_the_images_process_and_come_back_with_it(compress_isolated):
    data = jpeg((640, 480))
    spec = RenditionSpec.parse("webp,avif", "320")

    outcome = compress_isolated(data, **LIMITS, **GENEROUS, renditions=spec)

    assert outcome.ok, outcome.error
    assert outcome.image == compress_image(data, **LIMITS, renditions=spec)
    assert ("JPEG", 320) in {(r.format, r.width) for r in outcome.image.renditions}  # a fallback is always kept
    # The next image of the same process asks for none, and gets none.
    assert compress_isolated(data, **LIMITS, **GENEROUS).image.renditions == ()


def test_rejected_image_comes_back_with_its_reason(compress_isolated):
    outcome = compress_isolated(b"not an image at all", **LIMITS, **GENEROUS)

    assert (outcome.ok, outcome.image) == (False, None)
    assert outcome.error == "not an image (unrecognised format)"


def test_unexpected_error_in_the_child_is_reported(compress_isolated):
    outcome = compress_isolated(jpeg(), **LIMITS, **GENEROUS, work=faults.RAISE)

    assert (outcome.ok, outcome.error) == (False, "compression failed: RuntimeError: decoder bug")
    assert_reaped(outcome.pid)


def test_hung_child_is_killed_at_the_timeout(compress_isolated):
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
def test_child_that_ends_without_answering_fails_only_its_image(compress_isolated, work, error):
    outcome = compress_isolated(jpeg(), **LIMITS, **GENEROUS, work=work)

    assert (outcome.ok, outcome.error) == (False, error)
    assert_reaped(outcome.pid)


def test_a_server_started_where_sigchld_is_ignored_still_learns_how_its_child_died(isolation):
    """As the warm run server starts the fork server its next run worker adopts: with SIGCHLD ignored, which exec
    keeps."""
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        server = compressor.start_server()
    finally:
        signal.signal(signal.SIGCHLD, previous)
    client = compressor.ForkServerClient()
    client.adopt(server.pid, server.stdin, server.stdout)
    try:
        outcome = client.compress(jpeg(), **LIMITS, **GENEROUS, work=faults.KILLED,
                                  recycle=RECYCLE if isolation == "pool" else 1)
    finally:
        server.stdin.close()  # the server's end of file: it exits
        assert server.wait(10) == 0

    assert (outcome.ok, outcome.error) == (False, "compression process died (signal 9)")
    assert_reaped(outcome.pid)


def test_memory_cap_fails_a_large_image_and_not_the_parent(compress_isolated):
    # 40 megapixels decode to 160 MB: far beyond the allowance, even with what the child inherits as free heap.
    buffer = io.BytesIO()
    Image.new("RGB", (8000, 5000), (40, 120, 200)).save(buffer, "JPEG", quality=50)

    outcome = compress_isolated(buffer.getvalue(), **LIMITS, timeout=60.0, memory_bytes=8 * MIB)

    assert not outcome.ok
    assert outcome.error == "out of memory: the image needs more than 8 MiB"
    assert_reaped(outcome.pid)
    assert compress_isolated(jpeg(), **LIMITS, **GENEROUS).ok  # the parent carries on


def test_concurrent_calls_from_eight_threads_all_succeed(compress_isolated, isolation):
    images = [jpeg(seed=seed) for seed in range(16)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda data: compress_isolated(data, **LIMITS, **GENEROUS), images))

    assert [outcome.error for outcome in outcomes] == [None] * len(images)
    assert [outcome.image for outcome in outcomes] == [compress_image(data, **LIMITS) for data in images]
    pids = collections.Counter(outcome.pid for outcome in outcomes)
    if isolation == "process":
        assert len(pids) == len(images)  # a fresh process for every image
        for outcome in outcomes:
            assert_reaped(outcome.pid)
    else:
        assert len(pids) < len(images) and max(pids.values()) <= RECYCLE  # reused, and replaced in time


@pytest.mark.timeout(90)  # a wedge would otherwise hold the suite for its whole default timeout
def test_requests_and_answers_larger_than_a_pipe_from_many_threads_do_not_wedge(compress_isolated):
    # Each request and answer is several times a pipe's 64 KiB, so the caller and the server both block on
    # writes; the reader thread must keep answers flowing while another thread is still sending.
    payloads = [bytes([seed]) * (256 * 1024 + seed) for seed in range(24)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(compress_isolated, data, **LIMITS, **GENEROUS, work=faults.ECHO_LARGE)
                   for data in payloads]
        outcomes = [future.result(timeout=60) for future in futures]

    assert [len(outcome.error) for outcome in outcomes] == [4 * len(data) for data in payloads]


# ---------------------------------------------------------------------------------- scheduling in the server

def timed(seconds: float) -> bytes:
    return str(seconds).encode()


def spans(outcomes) -> list[tuple[int, float, float]]:
    return [(int(pid), float(start), float(end)) for pid, start, end in (o.error.split() for o in outcomes)]


def test_at_most_slots_images_run_at_once_and_the_rest_wait_in_the_queue(compress_isolated):
    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(lambda _: compress_isolated(timed(0.3), **LIMITS, **GENEROUS, slots=2,
                                                             work=compressor_work.TIMED), range(6)))

    runs = spans(outcomes)
    for _, start, _ in runs:
        assert sum(1 for _, s, e in runs if s <= start < e) <= 2
    assert max(e for _, _, e in runs) - min(s for _, s, _ in runs) >= 0.85  # three rounds of two


def test_the_timeout_counts_from_the_start_of_the_work_not_from_the_wait_in_the_queue(compress_isolated):
    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(lambda _: compress_isolated(timed(0.4), **LIMITS, timeout=1.0, memory_bytes=64 * MIB,
                                                             slots=1, work=compressor_work.TIMED), range(3)))

    assert all(o.pid for o in outcomes) and not any("longer" in o.error for o in outcomes)
    assert all(0.35 < o.seconds < 1.0 for o in outcomes)  # its own work, not the queue


def test_at_its_deadline_an_image_under_way_is_cut_short_and_one_still_waiting_never_starts(compress_isolated):
    not_after = time.monotonic() + 1.0
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = pool.map(lambda _: compress_isolated(
            timed(3), **LIMITS, timeout=30.0, memory_bytes=64 * MIB, slots=1, work=compressor_work.TIMED,
            not_after=not_after), range(2))
    under_way, waiting = sorted(outcomes, key=lambda outcome: not outcome.pid)  # whichever the server took first
    assert time.monotonic() - not_after < 1.0
    assert not under_way.ok and under_way.pid and under_way.seconds < 1.5
    assert not waiting.ok and not waiting.pid and "did not start before its deadline" in waiting.error


def test_a_process_per_image_or_a_worker_per_few_images(compress_isolated, isolation):
    compressor._client.close()  # a new server: no worker left half-used by an earlier test
    outcomes = [compress_isolated(timed(0), **LIMITS, **GENEROUS, work=compressor_work.TIMED) for _ in range(12)]

    pids = [pid for pid, _, _ in spans(outcomes)]
    if isolation == "process":
        assert len(set(pids)) == 12
    else:  # each worker does its RECYCLE images in a row, then the next one takes over
        assert [pids.count(pid) for pid in dict.fromkeys(pids)] == [RECYCLE, RECYCLE, 2]


def test_spares_are_forked_ahead_and_none_outlives_a_killed_server(compress_isolated, isolation):
    assert compress_isolated(jpeg(), **LIMITS, **GENEROUS).ok
    server = compressor._client.server_pid()
    deadline = time.monotonic() + 5
    while not (children := server_children(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children  # process mode: spares waiting for their image; pool mode: the worker, idle

    os.kill(server, signal.SIGKILL)

    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() and not is_zombie(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and not is_zombie(pid)]
    time.sleep(0.2)  # the reader thread sees the server's end
    assert compress_isolated(jpeg(), **LIMITS, **GENEROUS).ok  # a new server takes over


def test_a_pool_worker_carries_its_memory_from_image_to_image_under_the_same_cap(compress_isolated, isolation):
    outcomes = [compress_isolated(b"40", **LIMITS, timeout=30.0, memory_bytes=100 * MIB, work=compressor_work.GROW)
                for _ in range(4)]

    if isolation == "process":  # a fresh process each time: each holds its own 40 MiB only
        assert [o.error for o in outcomes] == ["holding 40 MiB"] * 4
    else:  # the third 40 MiB of one worker is over its 100 MiB: that image fails, and a new worker does the next
        assert [o.error for o in outcomes] == ["holding 40 MiB", "holding 80 MiB",
                                               "out of memory: the image needs more than 100 MiB", "holding 40 MiB"]
        assert outcomes[0].pid == outcomes[2].pid != outcomes[3].pid
        assert_reaped(outcomes[2].pid)


def server_children(server: int) -> list[int]:
    try:
        return [int(pid) for pid in Path(f"/proc/{server}/task/{server}/children").read_text().split()]
    except OSError:
        return []


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
