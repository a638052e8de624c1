"""`imgpipe api` in a process of its own, for tests that need the API as it is deployed: measured from outside, or
several of them sharing one status store."""
from __future__ import annotations

import contextlib
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import requests

from imgpipe_tests.servers import REPO, free_port


@contextlib.contextmanager
def api_process(env: dict[str, str], log_path: Path, start_timeout: float = 60,
                file_limit: int | None = None) -> Iterator[tuple[str, int]]:
    """`imgpipe api` on a free port with exactly `env` (IMGPIPE_PUBLIC_BASE_URL set to its own URL unless given),
    its output in `log_path`, started with a soft limit of `file_limit` open files if given (as systemd would);
    yields (URL, pid) once /healthz answers, and stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"IMGPIPE_PUBLIC_BASE_URL": url, **env}
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "imgpipe.cli", "api", "--port", str(port)], env=env,
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=None if file_limit is None else lambda: resource.setrlimit(
                                       resource.RLIMIT_NOFILE, (file_limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            assert process.poll() is None, (f"the API process exited with {process.returncode}: "
                                            f"{log_path.read_text(errors='replace')[-3000:]}")
            assert time.monotonic() < deadline, f"the API process did not answer /healthz within {start_timeout} s"
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
