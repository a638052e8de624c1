"""imgpipe's stack under the benchmarks: `dagster-daemon run` beside a code server of its own and, with `api`, the
REST API, on a fresh IMGPIPE_HOME and DAGSTER_HOME; the CSVs dropped into its inbox and the figures of each request.

Started as the README's "Configuration" section tells a user to start it headless."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import requests
from corpus import REPO, RESULTS
from procstat import TreeMonitor, tree

from imgpipe.status.duckdb_store import DuckDBStatusStore

BIN = Path(sys.executable).parent
TERMINAL = {"completed", "completed_with_errors", "failed"}
# 1 s unless IMGPIPE_SENSOR_INTERVAL says otherwise; Dagster's sensor daemon loops every 5 s in any case.
SENSOR_INTERVAL = int(os.environ.get("IMGPIPE_SENSOR_INTERVAL") or 1)
URLS_PER_PRODUCT = 10
CODE_SERVER_WORKSPACE = """load_from:
  - grpc_server:
      host: 127.0.0.1
      port: {port}
      location_name: imgpipe.definitions
"""


def load() -> float:
    return round(os.getloadavg()[0], 2)


def utc_epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def catalogue(urls: list[str], per_product: int = URLS_PER_PRODUCT) -> bytes:
    """A catalogue CSV of `urls`, `per_product` of them to a product."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for row, start in enumerate(range(0, len(urls), per_product), 1):
        writer.writerow([row, f"Product {row}", ", ".join(urls[start:start + per_product])])
    return out.getvalue().encode()


class Daemon:
    """`dagster-daemon run` on a fresh IMGPIPE_HOME and DAGSTER_HOME, in a process group of its own; with `api`,
    `imgpipe api` beside it on the same home.

    Dagster is imported only here, so that the baseline's forked workers do not carry it. `name` tells its log
    files (daemon-<name>.log, code-server-daemon-<name>.log) from other daemons'; the isolation mode by default."""

    def __init__(self, work: Path, isolation: str, api: bool = False, env: dict[str, str] | None = None,
                 name: str | None = None):
        self.home, self.dagster_home = work / "imgpipe_home", work / "dagster_home"
        self.dagster_home.mkdir(parents=True)
        shutil.copy(REPO / "imgpipe" / "package_data" / "dagster.yaml", self.dagster_home / "dagster.yaml")
        self.inbox = self.home / "inbox"
        self.store = DuckDBStatusStore(self.home / "imgpipe.duckdb")
        self.log = RESULTS / f"daemon-{name or isolation}.log"
        self.with_api = api
        self.api_port = free_port() if api else None
        # Other IMGPIPE_* settings (IMGPIPE_EXECUTOR, IMGPIPE_COMPRESS_WORKERS, ...) pass through.
        self.env = {**os.environ, "IMGPIPE_HOME": str(self.home), "DAGSTER_HOME": str(self.dagster_home),
                    "IMGPIPE_ALLOW_PRIVATE_HOSTS": "127.0.0.1", "IMGPIPE_SENSOR_INTERVAL": str(SENSOR_INTERVAL),
                    "IMGPIPE_ISOLATION": isolation}
        self.api_url = f"http://127.0.0.1:{self.api_port}" if api else None
        if api:
            self.env["IMGPIPE_PUBLIC_BASE_URL"] = self.api_url
        self.env.update(env or {})
        self.proc = self.api = None
        self.code_server_port = free_port()
        self.workspace = work / "workspace.yaml"
        self.workspace.write_text(CODE_SERVER_WORKSPACE.format(port=self.code_server_port))

    def __enter__(self) -> "Daemon":
        from imgpipe.instance import configured_instance
        # The instance's SQLite files first: two processes creating them at once can both stamp the schema
        # (alembic then finds two heads and the code location fails to load).
        self.instance = configured_instance(self.dagster_home)  # dagster.yaml copied in by __init__
        # A code server of its own, as `dagster dev` (`make run`) and the README's headless commands run one:
        # a daemon left to manage its own replaces it every 60 s, 5-6 s of CPU each time, and keeps the old one
        # alive while a run it launched goes on.
        self.code_server = subprocess.Popen(
            [str(BIN / "dagster"), "code-server", "start", "-m", "imgpipe.definitions", "-d", str(REPO),
             "-h", "127.0.0.1", "-p", str(self.code_server_port)], cwd=REPO, env=self.env,
            stdout=(RESULTS / f"code-server-{self.log.stem}.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.wait("the code server", self._code_server_up, 120)
        self.proc = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(self.workspace)], cwd=REPO,
                                     env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if self.with_api:
            self.api = subprocess.Popen([str(BIN / "imgpipe"), "api", "--port", str(self.api_port)], cwd=REPO,
                                        env=self.env, stdout=(RESULTS / "api.log").open("wb"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
            self.wait("the REST API", self._api_up, 60)
        return self

    def _code_server_up(self) -> bool:
        return subprocess.run([str(BIN / "dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p",
                               str(self.code_server_port)], capture_output=True).returncode == 0

    def processes(self) -> dict[int, int]:
        """The trees of the code server, the daemon and the API (each of the last two starts runs from a warm run
        server of its own: the daemon those of folder drops, the API those it accepts)."""
        return {pid: parent for proc in (self.code_server, self.proc, self.api) if proc is not None
                for pid, parent in tree(proc.pid).items()}

    def _api_up(self) -> bool:
        try:
            return requests.get(f"{self.api_url}/healthz", timeout=2).ok
        except requests.RequestException:
            return False

    def __exit__(self, *exc) -> None:
        self.instance.dispose()
        for proc in (self.proc, self.api, self.code_server):
            if proc is None:
                continue
            found = tree(proc.pid)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            for pid in found:  # also any descendant that left the group
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()

    def drop(self, name: str, urls: list[str], fresh: bool, per_product: int = URLS_PER_PRODUCT,
             sidecar: dict | None = None) -> float:
        """The CSV of `urls`, with `sidecar` (e.g. a webhook URL) beside it; `fresh` (a sidecar's) makes the
        request fetch and encode everything, whatever earlier ones left, so that throughput runs sharing URLs
        measure the same work."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        sidecar = {**(sidecar or {}), **({"fresh": True} if fresh else {})}
        if sidecar:
            (self.inbox / f"{Path(name).stem}.json").write_text(json.dumps(sidecar))
        temporary = self.inbox / f".{name}.tmp"
        temporary.write_bytes(catalogue(urls, per_product))
        os.replace(temporary, self.inbox / name)
        return time.time()

    def wait(self, what: str, get, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited; see {self.log}")
            if self.code_server.poll() is not None:
                raise RuntimeError(f"the code server exited; see {RESULTS}/code-server-{self.log.stem}.log")
            if found := get():
                return found
            # Each look is a DuckDB session (10-20 ms of CPU, and the file's lock): not more than once a second.
            # The times reported are the store's own (created_at, completed_at), not when this loop saw them.
            time.sleep(1.0)
        raise TimeoutError(f"{what} not within {timeout:.0f} s; see {self.log}")

    def process(self, name: str, urls: list[str], timeout: float, fresh: bool = False, monitor: TreeMonitor = None,
                per_product: int = URLS_PER_PRODUCT, while_running=None) -> dict:
        """Drop a CSV of `urls`, wait for the terminal status and the end of the run, and measure both.
        `while_running(request_id, stop_event)` runs in a thread from the request's creation to its end."""
        from dagster import RunsFilter
        if monitor:
            monitor.start_cpu()
            monitor.take_peaks()
        load_before = load()
        dropped = self.drop(name, urls, fresh, per_product)
        created = self.wait(f"request of {name}", lambda: self.store.latest_request_for_file(name), 60)
        stop, poller, polled = threading.Event(), None, {}
        if while_running:
            poller = threading.Thread(target=lambda: polled.update(while_running(created.request_id, stop)))
            poller.start()
        try:
            request = self.wait(f"terminal status of {name}", lambda: (
                (r := self.store.get_request(created.request_id)) and r.status in TERMINAL and r), timeout)
        finally:
            stop.set()
            if poller:
                poller.join()
        usage = {**monitor.take_cpu(), **monitor.take_peaks()} if monitor else {}
        request_id = request.request_id
        if request.status != "completed":  # every benchmark image is valid: anything else is a fault
            raise RuntimeError(f"request {request_id} ended {request.status}: {request.error}")
        record = self.wait(f"end of the run of {request_id}", lambda: next(
            (r for tags in ({"dagster/partition": request_id}, {"imgpipe/request_id": request_id})
             for r in self.instance.get_run_records(RunsFilter(tags=tags)) if r.end_time), None), 60)
        created_at, terminal = utc_epoch(request.created_at), utc_epoch(request.completed_at)
        images = self.store.images(request_id)
        return {
            "request_id": request_id,
            "images": len(urls),
            "status": request.status,
            "obtained": {way: sum(1 for i in images if i.obtained == way)
                         for way in ("fetched", "not_modified", "same_content")},
            "end_to_end_s": round(terminal - dropped, 3),
            "created_to_terminal_s": round(terminal - created_at, 3),
            "drop_to_request_s": round(created_at - dropped, 3),
            "request_to_run_start_s": round(record.start_time - created_at, 3),
            "run_s": round(record.end_time - record.start_time, 3),
            "run_launch_to_end_s": round(record.end_time - utc_epoch(record.create_timestamp), 3),
            **usage,
            **({"cpu_ms_per_image": round(1000 * usage["cpu_total_s"] / len(urls), 1)} if usage else {}),
            "load_1min": [load_before, load()],
            **({"status_api": polled} if while_running else {}),
            **self.timeline(record),
        }

    def timeline(self, record) -> dict:
        """Steps of the run from its event log: launch (worker starting -> step start) and work of each."""
        from dagster import DagsterEventType as T
        marks: dict[str, dict] = {}
        created = dequeued = utc_epoch(record.create_timestamp)
        for entry in self.instance.all_logs(record.dagster_run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.step_key:
                marks.setdefault(event.step_key, {}).setdefault(event.event_type, entry.timestamp)
            elif event.event_type == T.RUN_DEQUEUED:
                dequeued = entry.timestamp
        start = record.start_time
        steps = []
        for key, m in marks.items():
            if T.STEP_START not in m:
                continue
            launched = m.get(T.STEP_WORKER_STARTING, m[T.STEP_START])
            ended = m.get(T.STEP_SUCCESS, m.get(T.STEP_FAILURE, record.end_time))
            steps.append({"step": key, "launched_at_s": round(launched - start, 3),
                          "launch_s": round(m[T.STEP_START] - launched, 3),
                          "work_s": round(ended - m[T.STEP_START], 3), "ended_at_s": round(ended - start, 3)})
        steps.sort(key=lambda s: s["launched_at_s"])
        compress = [s for s in steps if "compress" in s["step"] or "process_requests" in s["step"]] or steps
        return {
            "steps": len(steps),
            "run_phases_s": {"queued": round(dequeued - created, 3),
                             "worker_start": round(start - dequeued, 3),
                             "first_step_launch": steps[0]["launched_at_s"] if steps else None,
                             "after_last_step": round(record.end_time - start - max(
                                 (s["ended_at_s"] for s in steps), default=0), 3)},
            "compress_window_s": round(max(s["ended_at_s"] for s in compress)
                                       - min(s["launched_at_s"] for s in compress), 3) if compress else None,
            "step_timeline": steps,
        }
