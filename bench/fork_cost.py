"""What a process per image costs: compression alone, without downloads, Dagster or the status store.

    .venv/bin/python bench/fork_cost.py [--images 120] [--rounds 3]

Three ways to compress the same 1632x1224 JPEGs (photographs, or `--corpus synthetic`) on every core:
1. pool: a persistent process per core (the throughput benchmark's baseline, without its downloads);
2. fork server: `imgpipe.images.compressor.compress_isolated`, each image in a child of the lean fork server;
3. fork from caller: each image in a child forked from this process, as imgpipe did before the fork server.
The caller first imports the code location, so that it is as large as a Dagster step process. Each round runs
all three, so that load from elsewhere hits them alike; images/s and the ratios to the pool are printed.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import MAKERS  # noqa: E402

from imgpipe.definitions import defs  # noqa: E402
from imgpipe.images.compressor import compress_isolated  # noqa: E402
from imgpipe.images.image_policy import compress_image  # noqa: E402

CPUS = os.cpu_count() or 2
LIMITS = {"max_pixels": 50_000_000, "max_frames": 1000}
_images: list[bytes] = []
_FORK_LOCK = threading.Lock()


def _pool_work(index: int) -> int:
    return len(compress_image(_images[index % len(_images)], **LIMITS).data)


def _fork_from_caller(data: bytes) -> int:
    # As imgpipe did: no other thread forks while this pipe's write end is open here, or its child would keep
    # the pipe open too.
    with _FORK_LOCK:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            os.write(write_end, pickle.dumps(len(compress_image(data, **LIMITS).data)))
            os._exit(0)
        os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        size = pickle.loads(answer.read())
    os.waitpid(pid, 0)
    return size


def _fork_server(data: bytes) -> int:
    outcome = compress_isolated(data, timeout=60, memory_bytes=2 << 30, **LIMITS)
    assert outcome.ok, outcome.error
    return len(outcome.image.data)


def _threads(count: int, compress) -> float:
    """Images/s with a thread per core calling `compress` (as the batch runner does), timed after a warm-up."""
    slots = threading.Semaphore(CPUS)

    def one(index: int) -> int:
        with slots:
            return compress(_images[index % len(_images)])

    with ThreadPoolExecutor(max_workers=2 * CPUS) as threads:
        list(threads.map(one, range(CPUS)))
        started = time.perf_counter()
        list(threads.map(one, range(count)))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", default="photo", choices=sorted(MAKERS))
    args = parser.parse_args()
    defs()  # the code location loaded: the caller's size, as in a step process
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(8):
            MAKERS[args.corpus](Path(folder) / f"{seed}.jpg", seed)
            _images.append((Path(folder) / f"{seed}.jpg").read_bytes())
    rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024
    print(f"{CPUS} cores, caller RSS {rss} MiB, {args.images} images per measurement")
    with multiprocessing.get_context("fork").Pool(CPUS) as pool:
        for round_number in range(1, args.rounds + 1):
            pool.map(_pool_work, range(CPUS))
            started = time.perf_counter()
            pool.map(_pool_work, range(args.images), chunksize=1)
            baseline = args.images / (time.perf_counter() - started)
            server = _threads(args.images, _fork_server)
            caller = _threads(args.images, _fork_from_caller)
            print(f"round {round_number}: pool {baseline:6.1f} img/s | fork server {server:6.1f} img/s "
                  f"(ratio {server / baseline:.2f}) | fork from caller {caller:6.1f} img/s "
                  f"(ratio {caller / baseline:.2f})")


if __name__ == "__main__":
    main()
