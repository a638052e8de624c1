"""Schemathesis against the live REST API: every phase (stateful too, through the OpenAPI links of
`POST /requests`) and every check that applies (configuration and reasons: schemathesis.toml at the repository
root). The run must find no server error and no answer that breaks the served OpenAPI document."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from imgpipe.backends import Backends, open_storage
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.status.models import ImageResult, ImageStatus, RequestStatus, Source
from imgpipe_tests.test_api import CSV

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG = PROJECT_ROOT / "schemathesis.toml"
TOKEN = "schemathesis-token"
# The request the configuration's dictionaries name, so that the GETs can answer 200 too.
SEEDED_REQUEST = "st-completed"
RUN_TIMEOUT = 120
# The suite gates every landing, so its fuzzing is reproducible: the same cases each run, from this seed, unless
# IMGPIPE_SCHEMATHESIS_SEED names another ("random": a new one each run, printed in the report, for exploring).
# A random run once found a 413 the configuration did not count as a rejection (schemathesis.toml).
DEFAULT_SEED = "290541419685872612381549202265578771041"


def seed_arguments() -> list[str]:
    seed = os.environ.get("IMGPIPE_SCHEMATHESIS_SEED", DEFAULT_SEED)
    return [] if seed == "random" else ["--seed", seed]


def seed_a_finished_request(server) -> None:
    storage = open_storage(server.settings)
    csv = CSV.replace(b"https://e.com/a.jpg", b'"https://e.com/a.jpg, https://e.com/b.png"')
    result = take_upload(Backends(server.settings, server.store, storage),
                         Upload(content=csv, file_name="seed.csv", source=Source.API), request_id=SEEDED_REQUEST)
    assert result.accepted, result.errors
    images = [storage.write_image(SEEDED_REQUEST, "a.jpg", b"\xff\xd8\xff\xe0 jpeg"),
              storage.write_image(SEEDED_REQUEST, "b.webp", b"RIFF\x00\x00\x00\x00WEBP")]
    server.store.start_processing(SEEDED_REQUEST, "run-st")
    server.store.record_results(SEEDED_REQUEST, [
        ImageResult(url, ImageStatus.COMPRESSED, output_path=image.path, output_url=image.url)
        for url, image in zip(("https://e.com/a.jpg", "https://e.com/b.png"), images)])
    storage.write_output_csv(SEEDED_REQUEST, b"S. No.,Product Name,Input Image Urls,Output Image Urls\r\n")
    server.store.finish_request(SEEDED_REQUEST, RequestStatus.COMPLETED)


def run_schemathesis(url: str, workdir: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """`st run` with the repository's configuration; returns the process and its JSON report."""
    # /openapi.json wants the token too; schemathesis itself sends it only to the operations (the configuration's
    # `auth`), so that it can also check that they refuse a request without it.
    document = requests.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    document.raise_for_status()
    (workdir / "openapi.json").write_bytes(document.content)
    command = [sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(CONFIG), "run",
               str(workdir / "openapi.json"), "--url", url, "--report", "json", "--report-dir", str(workdir),
               *seed_arguments()]
    env = {**os.environ, "IMGPIPE_API_TOKEN": TOKEN}
    started = time.monotonic()
    # The working directory is the test's own: schemathesis writes nothing into the repository.
    process = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                             check=False)
    print(process.stdout[-6000:], process.stderr[-3000:], f"\nschemathesis took {time.monotonic() - started:.1f} s")
    reports = sorted(workdir.glob("json-*.json"))
    assert reports, f"no JSON report in {workdir}: {process.stdout[-2000:]}"
    return process, json.loads(reports[-1].read_text())


def test_schemathesis_finds_no_server_error_and_no_schema_violation(api_server, tmp_path):
    server = api_server(IMGPIPE_API_TOKEN=TOKEN)
    seed_a_finished_request(server)
    process, report = run_schemathesis(server.url, tmp_path)
    assert process.returncode == 0, process.stdout[-6000:]
    assert "failures" not in report or not report["failures"], json.dumps(report, indent=1)[:6000]
