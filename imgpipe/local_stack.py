"""`imgpipe up`: the whole embedded stack in one command (what `make run` starts), speaking to a person.

Starts a server for the bundled sample images, the REST API and `dg dev` (webserver + daemon, so the
sensors run), drops the sample CSV into the inbox, and keeps everything up until interrupted. The console shows
imgpipe's own lines only: the addresses, each request as it is accepted or rejected (with its `errors.json`),
a progress bar per running request, and each terminal status with its output CSV's URL and report URL.
Dagster's and uvicorn's logs go to `$IMGPIPE_HOME/logs/dagster.log` and `api.log`, named in the first lines.

Requests are seen in the status store, whichever way they came (inbox, `POST /requests`, `imgpipe submit`,
the Launchpad, `imgpipe retry`): every second the requests changed since the last look are read
(`StatusStore.requests_updated_since`) with the image counts of those still running (`image_counts_of`, grouped
in SQL). With IMGPIPE_LOG_FORMAT=json each console line is a JSON object (logger `imgpipe.up`) with its
`request_id` and `event`.

Ctrl-C (or SIGTERM) stops everything within 10 s: `dg dev` and the API are asked to stop, and whatever of
their process groups is left after 7 s is killed.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TextIO

from imgpipe.backends import Backends, open_backends
from imgpipe.files import write_atomically
from imgpipe.lifetime import die_with_parent
from imgpipe.logs import configure_logging
from imgpipe.progress import ProgressBoard, tenth
from imgpipe.report import duration, percent_saved
from imgpipe.runs.tags import CODE_LOCATION_NAME
from imgpipe.settings import Settings, dagster_home_dir, process_environment
from imgpipe.status.document import request_links
from imgpipe.status.models import RequestRow, RequestStatus, utcnow
from imgpipe.status.store import StoreBusy
from imgpipe.storage.keys import errors_key

# Found in the package wherever it is installed, the checkout (make run) or site-packages (`pip install .`).
PACKAGE_DATA = resources.files("imgpipe") / "package_data"
INSTANCE_CONFIG = PACKAGE_DATA / "dagster.yaml"
SAMPLES = PACKAGE_DATA / "samples"
SAMPLE_PORT_IN_CSV = 8001  # samples/products.csv names its images on 127.0.0.1:8001
POLL_SECONDS = 1.0
# Requests are looked for again this far back: each process writes its own clock's time into updated_at.
LOOK_BACK = timedelta(seconds=3)
STOP_SECONDS = 7.0  # then the process groups are killed: within the 10 s a person waits after Ctrl-C
READY_TIMEOUT = 180.0
# Warnings Dagster prints on every start of a child that tell a person nothing they can act on: the beta markers
# name APIs imgpipe chose. Filtered by message in the children only (PYTHONWARNINGS); any other warning still
# reaches the log files.
QUIET_WARNINGS = (
    "ignore:Function `pandera_schema_to_dagster_type` is currently in beta",
    "ignore:Parameter `owners` of initializer `SensorDefinition.__init__` is currently in beta",
)


def serve_samples(port: int, images: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_QuietHandler, directory=str(images))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def stack_settings(settings: Settings, samples_port: int, api_port: int) -> Settings:
    """The stack's settings: the API's own port as the public base URL unless one was set, and the sample
    server allowed although it is on 127.0.0.1."""
    update = {"allow_private_hosts": ",".join(
        [h for h in settings.allow_private_hosts.split(",") if h.strip()] + [f"127.0.0.1:{samples_port}"])}
    if "public_base_url" not in settings.model_fields_set:
        update["public_base_url"] = f"http://127.0.0.1:{api_port}"
    return settings.model_copy(update=update)


def prepare_dagster_home(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_bytes(INSTANCE_CONFIG.read_bytes())


def sample_csv(samples_port: int) -> bytes:
    """The sample CSV, its image URLs on the port the sample server listens on."""
    text = (SAMPLES / "products.csv").read_text()
    return text.replace(f"127.0.0.1:{SAMPLE_PORT_IN_CSV}/", f"127.0.0.1:{samples_port}/").encode()


def logs_dir(settings: Settings) -> Path:
    return settings.home_dir / "logs"


def children_environment(settings: Settings, dagster_home: Path) -> dict[str, str]:
    inherited = process_environment().get("PYTHONWARNINGS", "")
    warnings = ",".join(filter(None, [inherited, *QUIET_WARNINGS]))
    return process_environment(**settings.as_env(), DAGSTER_HOME=str(dagster_home), PYTHONWARNINGS=warnings)


# ---------------------------------------------------------------------- the console


class Console:
    """The lines of `imgpipe up`: for a person (text, progress bars) or, with IMGPIPE_LOG_FORMAT=json, one JSON
    object per line from the logger `imgpipe.up`."""

    def __init__(self, settings: Settings, stream: TextIO):
        self.json = settings.log_format == "json"
        self.board = ProgressBoard(stream)
        self.log = logging.getLogger("imgpipe.up")
        if self.json:
            configure_logging(settings, stream, loggers=(self.log.name,))

    def say(self, text: str, *details: str, event: str = "info", request_id: str | None = None, **fields) -> None:
        """A line (and indented detail lines); in JSON one object, the details as `details`."""
        if self.json:
            extra = {"event": event, "request_id": request_id, **fields}
            if details:
                extra["details"] = list(details)
            self.log.info(text, extra={k: v for k, v in extra.items() if v is not None})
            return
        self.board.say(text)
        for detail in details:
            self.board.say(f"    {detail}")

    def progress(self, request_id: str, counts: dict) -> None:
        if self.json:
            reached = tenth(counts)
            if self.board.tenths.get(request_id) != reached:
                self.board.tenths[request_id] = reached
                self.say(f"request {request_id}: {counts['compressed'] + counts['failed']}/{counts['total']} "
                         f"images done ({counts['failed']} failed)", event="progress", request_id=request_id,
                         counts=counts)
            return
        self.board.draw(request_id, counts)

    def finished(self, request_id: str) -> None:
        self.board.remove(request_id)


class Watcher:
    """Shows each request of the status store as it comes, runs and ends."""

    def __init__(self, backends: Backends, console: Console, since: datetime):
        self.backends, self.console = backends, console
        self.started = since
        self.cursor = since
        self.statuses: dict[str, RequestStatus] = {}

    def poll(self) -> None:
        looked_at = utcnow()
        try:
            changed = self.backends.store.requests_updated_since(self.cursor - LOOK_BACK)
            running = {r.request_id for r in changed if not r.status.terminal} | {
                request_id for request_id, status in self.statuses.items() if not status.terminal}
            counts = self.backends.store.image_counts_of(sorted(running))
        except StoreBusy:
            return  # the pipeline holds the store for longer than usual; look again next time
        self.cursor = looked_at
        for row in changed:
            self._see(row)
        for request_id in sorted(running):
            if not self.statuses.get(request_id, RequestStatus.QUEUED).terminal and request_id in counts:
                self.console.progress(request_id, counts[request_id])

    def _see(self, row: RequestRow) -> None:
        before = self.statuses.get(row.request_id)
        if before == row.status or (before is not None and before.terminal and row.status.terminal):
            return
        self.statuses[row.request_id] = row.status
        request_id, name = row.request_id, row.file_name or "upload.csv"
        if before is None and row.status is RequestStatus.REJECTED:
            where = self.backends.storage.location(errors_key(request_id))
            problems = [f"{_where(e)}{e['message']}" for e in row.errors[:3]]
            more = [f"... and {len(row.errors) - 3} more"] if len(row.errors) > 3 else []
            self.console.say(f"request {request_id} rejected: {name} ({row.source}) has {len(row.errors)} "
                             f"problem(s); see {where}", *problems, *more, event="rejected", request_id=request_id,
                             errors_json=where)
            return
        if before is None and row.created_at >= self.started - LOOK_BACK:
            self.console.say(f"request {request_id} accepted: {name} ({row.source}), {row.total_images} images",
                             event="accepted", request_id=request_id, file_name=name, images=row.total_images)
        elif before is not None and before.terminal:
            self.console.say(f"request {request_id} queued again (retry)", event="retried", request_id=request_id)
        elif before is None and not row.status.terminal:
            self.console.say(f"request {request_id} ({name}) is {row.status}", event=str(row.status),
                             request_id=request_id)
        if row.status.terminal:
            self._ended(row)

    def _ended(self, row: RequestRow) -> None:
        request_id = row.request_id
        try:
            view = self.backends.store.request_view(request_id, with_products=False)
        except StoreBusy:  # the ended line without the sizes, rather than no line (or a stopped stack)
            view = None
        counts = view.counts if view else {"total": row.total_images or 0, "compressed": 0, "failed": 0}
        if view and row.status is not RequestStatus.REJECTED:
            self.console.progress(request_id, counts)  # the bar's last state, full unless images were left
        self.console.finished(request_id)
        saved = percent_saved(view.compressed_total("bytes_in"), view.compressed_total("bytes_out")) if view else None
        took = f" in {duration((row.completed_at - row.created_at).total_seconds())}" if row.completed_at else ""
        summary = f"{counts['compressed']} of {counts['total']} images compressed"
        if counts["failed"]:
            summary += f", {counts['failed']} failed"
        if saved:
            summary += f", {saved} saved"
        links = request_links(self.backends, request_id, terminal=True)
        details = ([f"output CSV  {links['output_csv_url']}"] if "output_csv_url" in links else []) + [
            f"report      {links['report_url']}"]
        reason = f" ({row.error})" if row.status is RequestStatus.FAILED and row.error else ""
        self.console.say(f"request {request_id} {row.status}{reason}: {summary}{took}", *details,
                         event=str(row.status), request_id=request_id, output_csv_url=links.get("output_csv_url"),
                         report_url=links["report_url"],
                         counts=counts)


def _where(error: dict) -> str:
    place = ([f"row {error['row']}"] if error.get("row") is not None else []) + (
        [str(error["column"])] if error.get("column") else [])
    return f"{', '.join(place)}: " if place else ""


# ---------------------------------------------------------------------- the processes


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_stack(settings: Settings, samples_port: int = 8001, api_port: int = 8000, ui_port: int = 3000,
              submit_sample: bool = True) -> int:
    # Ctrl-C, SIGINT and a plain `kill` all stop the stack, however it was started (a shell's background job
    # starts with SIGINT ignored, which its children would inherit, and `dg dev` then ignores SIGTERM too).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up also when piped to a file
    settings = stack_settings(settings, samples_port, api_port)
    console = Console(settings, sys.stdout)
    dagster_home = dagster_home_dir(settings)
    prepare_dagster_home(dagster_home)
    settings.ensure_folders()
    logs = logs_dir(settings)
    logs.mkdir(parents=True, exist_ok=True)
    dagster_log, api_log = logs / "dagster.log", logs / "api.log"
    console.say(f"imgpipe: data in {settings.home}", event="starting", home=settings.home)
    console.say(f"logs: Dagster {dagster_log}  REST API {api_log}", event="logs", dagster_log=str(dagster_log),
                api_log=str(api_log))
    env = children_environment(settings, dagster_home)
    started_at = utcnow()
    with resources.as_file(SAMPLES / "images") as sample_images:
        samples = serve_samples(samples_port, sample_images)
        children: list[subprocess.Popen] = []
        try:
            # Both from DAGSTER_HOME: `python -m` puts its working folder first on sys.path, so no `imgpipe`
            # folder where the person stands shadows the installed package, and `dg dev` finds no other
            # dagster.yaml there to warn about. `-m`: Dagster names the code location after its module, the name
            # runs launched by the API give it (CODE_LOCATION_NAME); and given a module, `dg dev` needs no project
            # configuration (pyproject.toml's [tool.dg]), which an installed wheel does not have.
            children.append(_start([sys.executable, "-m", "imgpipe.cli", "api", "--port", str(api_port)], env,
                                   api_log, cwd=dagster_home))
            children.append(_start([str(Path(sys.executable).parent / "dg"), "dev", "-m", CODE_LOCATION_NAME,
                                    "-h", "127.0.0.1", "-p", str(ui_port)], env, dagster_log, cwd=dagster_home))
            return _serve(settings, console, children, samples_port, api_port, ui_port, submit_sample, started_at)
        except KeyboardInterrupt:
            return 0
        finally:
            stopping = time.monotonic()
            if children:
                console.say("stopping...", event="stopping")
            _stop(children)
            samples.shutdown()
            if children:
                console.say(f"stopped in {time.monotonic() - stopping:.1f} s", event="stopped")


def _start(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} imgpipe up: {' '.join(command)}\n".encode())
        out.flush()
        # A group of its own, so that Ctrl-C reaches `imgpipe up` alone and it stops the children in order; and
        # the same stop signal when `imgpipe up` dies outright (kill -9 of it or of `make run`), so that the
        # stack stops all the same (`dg dev` then stops its webserver, daemon and code servers itself).
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=functools.partial(die_with_parent, os.getpid(), _stop_signal(command)))


def _serve(settings: Settings, console: Console, children: list[subprocess.Popen], samples_port: int,
           api_port: int, ui_port: int, submit_sample: bool, started_at: datetime) -> int:
    ui, api, samples = (f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{api_port}",
                        f"http://127.0.0.1:{samples_port}")
    watcher = Watcher(open_backends(settings), console, started_at)
    if submit_sample:
        name = f"sample-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        write_atomically(settings.inbox / name, sample_csv(samples_port))
        console.say(f"dropped the sample CSV into {settings.inbox / name}", event="sample_dropped",
                    path=str(settings.inbox / name))
    announced, api_up = False, False
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        for child, what, log in zip(children, ("the REST API", "Dagster"), ("api.log", "dagster.log")):
            if child.poll() is not None:
                console.say(f"{what} stopped unexpectedly (exit status {child.returncode}); see "
                            f"{logs_dir(settings) / log}", event="child_exited")
                return 1
        api_up = api_up or (not announced and _answers(f"{api}/healthz"))
        if not announced and api_up and _answers(f"{ui}/server_info"):
            announced = True
            console.say("ready:", f"Dagster UI     {ui}", f"REST API       {api}  (GET /openapi.json, /metrics)",
                        f"sample images  {samples}", f"inbox          {settings.inbox}  (or: imgpipe submit FILE.csv)",
                        "Ctrl-C stops everything", event="ready", ui_url=ui, api_url=api)
        elif not announced and time.monotonic() > deadline:
            announced = True
            console.say(f"still starting after {READY_TIMEOUT:.0f} s; see {logs_dir(settings)}", event="slow_start")
        watcher.poll()
        time.sleep(POLL_SECONDS)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _stop_signal(command: list[str]) -> int:
    """`dg dev` shuts its webserver, daemon and code servers down on SIGINT; the API stops on SIGTERM."""
    return signal.SIGINT if "dev" in command else signal.SIGTERM


def _stop(children: list[subprocess.Popen]) -> None:
    """Each child leads a process group of its own: asked to stop (`dg dev` shuts its webserver, daemon and
    code servers down on SIGINT), then whatever of the groups is left after STOP_SECONDS is killed, so no
    webserver, daemon, code server or run worker outlives `imgpipe up`."""
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(_stop_signal(child.args))
    deadline = time.monotonic() + STOP_SECONDS
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
