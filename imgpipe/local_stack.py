"""`imgpipe up`: the whole embedded stack in one command (what `make run` starts).

Starts a server for the bundled sample images, the REST API and `dagster dev` (webserver + daemon, so the
sensors run), drops the sample CSV into the inbox, prints where its output CSV is, and keeps everything up
until interrupted.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from imgpipe.backends import open_status_store, open_storage
from imgpipe.files import write_atomically
from imgpipe.progress import wait_until_terminal
from imgpipe.settings import Settings, dagster_home_dir, process_environment
from imgpipe.status.document import request_document
from imgpipe.status.store import StatusStore

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "data" / "samples"


def serve_samples(port: int) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_QuietHandler, directory=str(SAMPLES / "images"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
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
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")


def wait_for_request(store: StatusStore, file_name: str, timeout: float) -> str | None:
    """The ID the inbox sensor gave the dropped file, once it has taken it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = store.latest_request_for_file(file_name)
        if found:
            return found.request_id
        time.sleep(1)
    return None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_stack(settings: Settings, samples_port: int = 8001, api_port: int = 8000, ui_port: int = 3000,
              submit_sample: bool = True) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # stop the children on a plain `kill` too
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up also when piped to a file
    settings = stack_settings(settings, samples_port, api_port)
    dagster_home = dagster_home_dir(settings)
    prepare_dagster_home(dagster_home)
    env = process_environment(**settings.as_env(), DAGSTER_HOME=str(dagster_home))
    settings.ensure_folders()
    samples = serve_samples(samples_port)
    bin_dir = Path(sys.executable).parent
    children = [
        subprocess.Popen([sys.executable, "-m", "imgpipe.cli", "api", "--port", str(api_port)], env=env,
                         cwd=REPO_ROOT, start_new_session=True),
    ]
    try:
        children.append(subprocess.Popen([str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-p",
                                          str(ui_port)], env=env, cwd=REPO_ROOT, start_new_session=True))
        return _report_and_wait(settings, children, samples_port, api_port, ui_port, submit_sample)
    finally:
        _stop(children)
        samples.shutdown()


def _report_and_wait(settings: Settings, children: list[subprocess.Popen], samples_port: int, api_port: int,
                     ui_port: int, submit_sample: bool) -> int:
    print(f"imgpipe is starting: UI http://127.0.0.1:{ui_port}  API http://127.0.0.1:{api_port}  "
          f"sample images http://127.0.0.1:{samples_port}  data {settings.home}")
    try:
        if submit_sample:
            name = f"sample-{time.strftime('%Y%m%d-%H%M%S')}.csv"
            write_atomically(settings.inbox / name, (SAMPLES / "products.csv").read_bytes())
            print(f"dropped the sample CSV into {settings.inbox / name}; waiting for the daemon...")
            store = open_status_store(settings)
            request_id = wait_for_request(store, name, timeout=120)
            if request_id is None:
                print("the daemon did not take the sample within 120 s; see the Dagster UI for why")
            else:
                storage = open_storage(settings)
                document = wait_until_terminal(
                    lambda: request_document(store, storage, settings, request_id).model_dump(mode="json"),
                    sys.stdout)
                print(f"request {request_id}: {document['status']}")
                print(f"output CSV: {settings.outputs_dir / (request_id + '.csv')}")
                print(f"       URL: {settings.output_csv_url(request_id)}")
        print("running until interrupted (Ctrl-C)")
        while all(child.poll() is None for child in children):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0


def _stop(children: list[subprocess.Popen]) -> None:
    """Each child leads a process group of its own: asked to stop first, then the whole group killed, so no
    webserver, daemon or code server outlives `imgpipe up`."""
    for child in children:
        if child.poll() is None:
            # dagster dev shuts its webserver and daemon down cleanly on SIGINT.
            child.send_signal(signal.SIGINT if "dev" in child.args else signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
