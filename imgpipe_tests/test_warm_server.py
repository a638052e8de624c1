"""The warm run server's fork server started ahead of need: a forked run worker adopts it and compresses through it,
and it ends with that worker."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

from imgpipe.images import compressor
from imgpipe.runs.warm_server import SpareCompressor
from imgpipe.settings import MIB
from imgpipe_tests.images import save_jpeg


def test_a_forked_worker_adopts_the_spare_fork_server_and_the_server_ends_with_it(tmp_path):
    data = save_jpeg(tmp_path / "in.jpg", quality=90).read_bytes()
    spares = SpareCompressor(wanted=True)
    spares.refill()
    spare = spares.take()
    assert spare is not None and spares.take() is None  # one spare, handed over once
    context = multiprocessing.get_context("fork")
    answers, answer = context.Pipe(duplex=False)

    def worker() -> None:  # what the warm server's forked run worker does with it
        compressor.adopt_server(spare.pid, os.dup(spare.stdin.fileno()), os.dup(spare.stdout.fileno()))
        outcome = compressor.compress_isolated(data, max_pixels=50_000_000, max_frames=1000, timeout=60.0,
                                               memory_bytes=1024 * MIB)
        answer.send((outcome.ok, outcome.image.quality_out if outcome.ok else outcome.error,
                     compressor._client.server_pid(), outcome.pid))

    process = context.Process(target=worker)
    process.start()
    spare.stdin.close()  # as the warm server does once the worker is forked: the worker's ends are the only ones
    spare.stdout.close()
    ok, quality_out, server_used, image_pid = answers.recv()
    process.join(30)
    assert (ok, quality_out) == (True, 45)
    assert server_used == spare.pid  # no fork server of its own was started
    assert image_pid not in (spare.pid, process.pid)  # the image still had a process of its own
    assert spare.wait(10) == 0  # the worker gone, its requests ended: the adopted server exited


def test_no_spare_where_runs_compress_elsewhere():
    spares = SpareCompressor(wanted=False)
    spares.refill()
    assert spares.take() is None


def test_warm_up_leaves_the_status_schema_made_for_the_workers_it_forks(tmp_path):
    """A worker forked after `warm_up` finds the status store's schema checked (no session of its own for it) and
    DuckDB imported."""
    script = (
        "import os, sys\n"
        "from imgpipe.runs.warm_server import warm_up\n"
        "from imgpipe.status.store import StatusStore\n"
        "settings = warm_up()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    from imgpipe.backends import open_status_store\n"
        "    key = open_status_store(settings)._schema_key()\n"
        "    os._exit(0 if key in StatusStore._schema_ready and 'duckdb' in sys.modules else 1)\n"
        "sys.exit(os.waitpid(pid, 0)[1] >> 8)\n"
    )
    env = {**os.environ, "IMGPIPE_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "home" / "imgpipe.duckdb").is_file()
