"""`imgpipe up` (what `make run` runs) as a person meets it: a real process on free ports over a home of its own,
its console captured. It shows imgpipe's own lines only (addresses, each request accepted or rejected, progress,
each end with its output CSV and report links), Dagster's and uvicorn's logs go to files under
`$IMGPIPE_HOME/logs/`, no warning on a clean start, and SIGINT stops everything within 10 s."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from imgpipe.backends import open_backends
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.local_stack import Console, Watcher, sample_csv
from imgpipe.settings import Settings
from imgpipe.status.models import ImageResult, ImageStatus, RequestStatus, Source, utcnow
from imgpipe_tests.servers import IsolatedHome, drop_into_inbox, free_port, wait_for
from imgpipe_tests.stack import processes_with

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
TOKEN = "up-token"
# What Dagster's and uvicorn's loggers print (`... - dagster - INFO - ...`, `INFO:     Started server process`,
# `2026-... INFO uvicorn.access: ...`), and any warning.
FOREIGN = re.compile(r" - dagster|dagster\.daemon|dagster-webserver|uvicorn|^(INFO|DEBUG|WARNING|ERROR):|"
                     r"\b(DEBUG|INFO|WARNING)\b|Warning|RUN_START|STEP_")


class Captured:
    """A process's stdout, line by line, as it comes."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def find(self, pattern: str) -> re.Match | None:
        return next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)


def processes_over(home: Path) -> list[int]:
    """Processes whose environment names this IMGPIPE_HOME: what `imgpipe up` started, at any depth."""
    return processes_with("IMGPIPE_HOME", home)


def test_imgpipe_up_speaks_to_a_person_logs_to_files_and_stops_within_10_s(tmp_path):
    api_port, ui_port, samples_port = free_port(), free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    isolated = IsolatedHome.create(tmp_path, public_base_url=api)
    home = isolated.home
    env = {**isolated.env, "IMGPIPE_API_TOKEN": TOKEN}
    proc = subprocess.Popen([str(BIN / "imgpipe"), "up", "--api-port", str(api_port), "--ui-port", str(ui_port),
                             "--samples-port", str(samples_port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = Captured(proc.stdout), Captured(proc.stderr)
    try:
        accepted = wait_for(lambda: out.find(r"^request (\S+) accepted: (sample-\S+\.csv) \(folder\), 9 images$"),
                            150, step=0.5)
        assert accepted, "\n".join(out.lines + err.lines)
        request_id = accepted.group(1)
        # A file that breaks the rules, dropped meanwhile: its line names its errors.json.
        drop_into_inbox(home, "broken.csv", "S. No.,Product Name,Input Image Urls\n1,,https://e.com/a.jpg\n")
        ended = wait_for(lambda: out.find(rf"^request {request_id} completed: 9 of 9 images compressed"), 120,
                         step=0.5)
        assert ended, "\n".join(out.lines + err.lines)
        rejected = wait_for(lambda: out.find(r"^request (\S+) rejected: broken\.csv \(folder\) has 1 problem\(s\); "
                                             r"see (\S+)$"), 30, step=0.5)
        assert rejected, "\n".join(out.lines)
        # The report link printed opens in a browser without the token (signed), while the stack runs.
        printed = wait_for(lambda: out.find(rf"^    report      ({re.escape(api)}/requests/{request_id}/report\S+)$"),
                           10, step=0.2)
        assert printed, "\n".join(out.lines)
        page = requests.get(printed.group(1), timeout=10)
        assert page.status_code == 200 and request_id in page.text and 'id="count-compressed">9<' in page.text
        assert requests.get(f"{api}/requests/{request_id}/report", timeout=10).status_code == 401
    finally:
        stop_asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        finally:
            stop_took = time.monotonic() - stop_asked
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        out.thread.join(5)
        err.thread.join(5)
        print("\n".join(out.lines))

    lines = out.lines
    assert code == 0 and stop_took < 10, (code, stop_took)
    assert wait_for(lambda: not processes_over(home), 5), f"left running: {processes_over(home)}"
    # Only imgpipe's own lines, and no warning anywhere on the console.
    assert not [line for line in lines if FOREIGN.search(line)], lines
    assert err.lines == []
    logs = home / "logs"
    assert lines[0] == f"imgpipe: data in {home}"
    assert lines[1] == f"logs: Dagster {logs / 'dagster.log'}  REST API {logs / 'api.log'}"
    assert f"    REST API       {api}  (GET /openapi.json, /metrics)" in lines
    assert f"    Dagster UI     http://127.0.0.1:{ui_port}" in lines
    # The end of the sample: its output CSV and its report, the report a signed link that opens without the token.
    at = lines.index(ended.string)
    assert lines[at + 1] == f"    output CSV  {api}/requests/{request_id}/output.csv"
    report = re.fullmatch(rf"    report      ({re.escape(api)}/requests/{request_id}/report\?expires=\d+"
                          rf"&signature=[\w-]+)", lines[at + 2])
    assert report, lines[at:at + 3]
    assert any(re.fullmatch(rf"  {request_id}  \[#+\] 9/9 images \(0 failed\)", line) for line in lines), lines
    # The rejected file's errors.json, where the line says.
    errors = json.loads(Path(rejected.group(2)).read_text())
    assert Path(rejected.group(2)) == home / "rejected" / rejected.group(1) / "errors.json"
    assert errors["errors"][0]["column"] == "Product Name"
    assert lines[-2:] == ["stopping...", lines[-1]] and re.fullmatch(r"stopped in \d+\.\d s", lines[-1])
    # Dagster's and uvicorn's lines are in the files the first lines named.
    dagster_log = (logs / "dagster.log").read_text()
    assert "dagster - INFO - __repository__ - inbox_sensor" in dagster_log and "RUN_START" in dagster_log
    assert "Serving dagster-webserver" in dagster_log
    api_log = (logs / "api.log").read_text()
    assert "uvicorn.access" in api_log and "GET /healthz" in api_log
    # A clean start warns nowhere: not about `dagster dev`, the dagster.yaml in the working folder or beta APIs.
    for text in (dagster_log, api_log):
        assert "Warning" not in text and "WARNING" not in text, [l for l in text.splitlines() if "arning" in l]

    assert (home / "public" / "outputs" / f"{request_id}.csv").is_file()


def test_the_sample_names_the_port_its_images_are_served_on():
    text = sample_csv(18123).decode()
    assert "127.0.0.1:18123/chair-front.jpg" in text and "127.0.0.1:8001" not in text


def test_the_console_in_json_is_one_object_per_line_with_the_request_id(tmp_path):
    """IMGPIPE_LOG_FORMAT=json: what `imgpipe up` would print, from a real store and storage, each line a JSON
    object carrying its request's ID."""
    settings = Settings(home=str(tmp_path / "home"), log_format="json", api_token=TOKEN)
    settings.ensure_folders()
    backends = open_backends(settings)
    store = backends.store
    stream = _Lines()
    watcher = Watcher(backends, Console(settings, stream), utcnow())
    good = b"S. No.,Product Name,Input Image Urls\n1,Shoe,\"https://e.com/a.jpg, https://e.com/b.jpg\"\n"
    accepted = take_upload(backends, Upload(good, "good.csv", Source.API)).request_id
    rejected = take_upload(backends, Upload(b"S. No.,Product Name\n1,Shoe\n", "bad.csv", Source.FOLDER)).request_id
    watcher.poll()
    store.start_processing(accepted, "run-1")
    store.record_results(accepted, [ImageResult("https://e.com/a.jpg", ImageStatus.COMPRESSED, bytes_in=1000,
                                                bytes_out=400, output_url="x/r1-p1.jpg")])
    watcher.poll()
    store.record_results(accepted, [ImageResult("https://e.com/b.jpg", ImageStatus.FAILED, error="HTTP 404")])
    backends.storage.write_output_csv(accepted, b"S. No.\n")
    store.finish_request(accepted, RequestStatus.COMPLETED_WITH_ERRORS)
    watcher.poll()

    objects = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(o["event"], o["request_id"]) for o in objects] == [
        ("accepted", accepted), ("rejected", rejected), ("progress", accepted), ("progress", accepted),
        ("progress", accepted), ("completed_with_errors", accepted)]
    assert all(o["logger"] == "imgpipe.up" and o["level"] == "info" and o["time"].endswith("Z") for o in objects)
    assert objects[1]["errors_json"] == str(settings.rejected_dir / rejected / "errors.json")
    assert [o["counts"] for o in objects[2:5]] == [
        {"total": 2, "pending": 2, "processing": 0, "compressed": 0, "failed": 0},
        {"total": 2, "pending": 1, "processing": 0, "compressed": 1, "failed": 0},
        {"total": 2, "pending": 0, "processing": 0, "compressed": 1, "failed": 1}]
    end = objects[-1]
    assert end["output_csv_url"] == settings.output_csv_url(accepted)
    assert re.fullmatch(rf"{settings.public_base_url}/requests/{accepted}/report\?expires=\d+&signature=[\w-]+",
                        end["report_url"])
    assert end["message"].startswith(f"request {accepted} completed_with_errors: 1 of 2 images compressed, "
                                     "1 failed, 60.0% saved")


class _Lines:
    def __init__(self):
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def getvalue(self) -> str:
        return "".join(self.parts)
