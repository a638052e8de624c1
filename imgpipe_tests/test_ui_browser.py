"""The Dagster UI in a real browser: Debian's Chromium driven by Playwright against a `dagster dev` started here.

A folder drop is processed by the real daemon, then the browser checks that the `output_csv` asset page shows
the request's partition materialized with its metadata, and launches `submit_csv_job` from the Launchpad as
the README tells an operator to. Screenshots land in `test-artifacts/` at the repository root.

Chromium comes from the system packages (`make test-system-deps` installs `chromium` and `chromium-driver`
when it runs as root); Playwright only drives it (`executable_path`), it never downloads a browser. Without
/usr/bin/chromium or the playwright package the test is skipped and says why.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import requests

from imgpipe.backends import Backends
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.storage.local import LocalStorage
from imgpipe_tests.images import illustration, save_jpeg
from imgpipe_tests.pipeline import process_here
from imgpipe_tests.servers import (
    REPO,
    CatalogServer,
    IsolatedHome,
    drop_into_inbox,
    free_port,
    product_csv,
    wait_for,
)

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: install the Debian packages chromium and chromium-driver "
                "(make test-system-deps does, as root)", allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright Python package is missing: pip install -e '.[dev]'")
expect = playwright_api.expect

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 60_000
WORKSPACE_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename } } } } }"""
TERMINAL = {"completed", "completed_with_errors", "failed", "rejected"}


class DagsterDev:
    """`dagster dev` (webserver, daemon and code server) over an IMGPIPE_HOME and DAGSTER_HOME of its own."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.public_base_url = f"http://127.0.0.1:{free_port()}"  # only written into metadata, never fetched
        isolated = IsolatedHome.create(root, public_base_url=self.public_base_url)
        self.home, self.dagster_home, self.env = isolated.home, isolated.dagster_home, isolated.env
        self.store = DuckDBStatusStore(self.home / "imgpipe.duckdb")
        self.log = root / "dagster-dev.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        assert wait_for(self._serving, 120, step=0.5), f"the Dagster webserver did not come up: {self.log_tail()}"
        assert wait_for(self._location_loaded, 120, step=0.5), f"the code location did not load: {self.log_tail()}"
        # What the "Skip" of the UI's one-time "Join the Dagster community" dialog does; it would cover the page.
        seen = requests.post(f"{self.url}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30)
        assert seen.status_code == 200 and seen.json()["data"]["setNuxSeen"] is True, seen.text

    def _serving(self) -> bool:
        assert self.proc.poll() is None, f"dagster dev exited with {self.proc.returncode}: {self.log_tail()}"
        try:
            return requests.get(f"{self.url}/server_info", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _location_loaded(self) -> bool:
        """The webserver has imported the code location (until then an asset page shows an "External Asset")."""
        try:
            answer = requests.post(f"{self.url}/graphql", json={"query": WORKSPACE_QUERY}, timeout=30).json()
            entries = answer["data"]["workspaceOrError"].get("locationEntries") or []
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return False
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries) and all(
            (e["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation" for e in entries)

    def stop(self) -> None:
        """Ctrl-C for `dagster dev` (it shuts its webserver, daemon and code servers down), then SIGKILL for
        whatever of its process group is left after 30 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def drop(self, name: str, text: str) -> None:
        drop_into_inbox(self.home, name, text)

    def terminal_request_for(self, file_name: str, timeout: float) -> dict:
        request = wait_for(lambda: (r := self.store.latest_request_for_file(file_name)) and r.status in TERMINAL
                           and r, timeout, step=0.5)
        assert request, (f"no terminal request for {file_name}: {self.store.latest_request_for_file(file_name)}; "
                         f"{self.log_tail()}")
        return request

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    dev = DagsterDev(tmp_path_factory.mktemp("dagster-dev"))
    try:
        dev.start()
        yield dev
    finally:
        dev.stop()


@pytest.fixture
def page():
    ARTIFACTS.mkdir(exist_ok=True)
    for stale in ("asset-page.png", "launchpad-run.png", "ui-failure.png", "report-renditions.png"):
        (ARTIFACTS / stale).unlink(missing_ok=True)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1200})
            page.set_default_timeout(UI_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def metadata_value(page, key: str):
    """The value cell of one row of the metadata table."""
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True))
    return row.get_by_role("cell").nth(1)


def save_screenshot(page, name: str) -> Path:
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_asset_page_shows_the_partition_and_the_launchpad_launches_a_request(dagster_dev, page, image_server,
                                                                              image_root):
    folder = uuid.uuid4().hex[:8]
    for i in range(2):
        save_jpeg(image_root / folder / f"{i}.jpg", quality=85, seed=i)
    good = [image_server.url(f"img/{folder}/{i}.jpg") for i in range(2)]
    broken = image_server.url(f"status/500/{folder}.jpg")
    csv_text = product_csv([[good[0], broken], [good[1]]])
    dagster_dev.drop("ui-products.csv", csv_text)
    request = dagster_dev.terminal_request_for("ui-products.csv", 90)
    request_id = request.request_id
    assert request.status == "completed_with_errors", request
    images = dagster_dev.store.images(request_id)
    done = [i for i in images if i.status == "compressed"]
    bytes_in, bytes_out = sum(i.bytes_in for i in done), sum(i.bytes_out for i in done)
    [failed] = [i for i in images if i.status == "failed"]

    try:
        # Assets -> output_csv -> Partitions, the request's partition selected.
        page.goto(f"{dagster_dev.url}/assets/output_csv?view=partitions&partition={request_id}")
        expect(page.get_by_text(request_id, exact=True).first).to_be_visible()
        expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()
        expect(metadata_value(page, "status")).to_have_text("completed_with_errors")
        expect(metadata_value(page, "images_compressed")).to_have_text("2")
        expect(metadata_value(page, "images_failed")).to_have_text("1")
        expect(metadata_value(page, "images_total")).to_have_text("3")
        expect(metadata_value(page, "bytes_in")).to_have_text(str(bytes_in))
        expect(metadata_value(page, "bytes_out")).to_have_text(str(bytes_out))
        shown_saved = float(metadata_value(page, "percent_saved").inner_text())
        assert shown_saved == pytest.approx(round(100 * (1 - bytes_out / bytes_in), 1)) and shown_saved > 0
        expect(metadata_value(page, "output_csv_url")).to_have_text(
            f"{dagster_dev.public_base_url}/requests/{request_id}/output.csv")
        failed_cell = metadata_value(page, "failed_images")
        expect(failed_cell).to_contain_text(broken)
        expect(failed_cell).to_contain_text("HTTP 500")
        assert failed.error and "HTTP 500" in failed.error
        save_screenshot(page, "asset-page.png")

        # Jobs -> submit_csv_job -> Launchpad, the README's config, Launch Run.
        upload = dagster_dev.home / "uploads" / "ui-launchpad.csv"
        upload.parent.mkdir(parents=True, exist_ok=True)
        upload.write_text(csv_text)
        page.goto(f"{dagster_dev.url}/jobs")
        # Only a visible match: clicking a hidden one waits out the timeout (seen once, on a rendered Jobs page).
        page.get_by_role("link", name=re.compile(r"(^|\s)submit_csv_job$")).filter(visible=True).first.click()
        page.get_by_role("tab", name="Launchpad").click()
        # The config editor is CodeMirror (no accessible role of its own): focus it, replace everything.
        editor = page.locator(".CodeMirror")
        editor.click()
        page.keyboard.press("Control+A")
        page.keyboard.insert_text("ops:\n  submit_csv:\n    config:\n      csv: ui-launchpad.csv\n")
        expect(editor).to_contain_text("csv: ui-launchpad.csv")
        expect(page.get_by_text("No errors", exact=True)).to_be_visible()
        page.get_by_role("button", name="Launch Run").click()

        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
        run_id = page.url.rsplit("/runs/", 1)[1].split("?")[0]
        expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=120_000)
        launched = dagster_dev.store.latest_request_for_file("ui-launchpad.csv")
        assert launched, "the Launchpad run created no request"
        # The submit_csv step's output metadata names the new request.
        expect(page.get_by_text(launched.request_id, exact=True).first).to_be_visible()
        save_screenshot(page, "launchpad-run.png")
    except BaseException:
        with contextlib.suppress(Exception):  # the page as it was, for whoever reads the CI failure
            save_screenshot(page, "ui-failure.png")
        raise

    # The inbox sensor launches its run, as for any queued request, and it is processed to the end.
    processed = dagster_dev.terminal_request_for("ui-launchpad.csv", 90)
    assert processed.request_id == launched.request_id
    assert processed.status == "completed_with_errors" and processed.source == "folder", processed
    assert processed.run_id and processed.run_id != run_id
    assert dagster_dev.store.counts(processed.request_id)["compressed"] == 2
    assert (dagster_dev.home / "public" / "outputs" / f"{processed.request_id}.csv").exists()


def test_the_report_of_a_request_with_renditions_gets_avif_in_chromium_and_jpeg_without_accept(api_server, page,
                                                                                              tmp_path):
    """A request made with `webp,avif` and widths: Chromium, which names AVIF in its Accept, receives AVIFs from the
    very URLs that a client naming nothing (urllib sends no Accept; curl and requests send */*) gets JPEGs from."""
    (tmp_path / "cdn").mkdir()
    for index in range(2):  # pictures whose AVIF is the smallest of their files, at every width
        illustration(1200, 800, seed=30 + index).save(tmp_path / "cdn" / f"p{index}.jpg", quality=85)
    host = CatalogServer(tmp_path / "cdn")
    server = api_server(IMGPIPE_ALLOW_PRIVATE_HOSTS="127.0.0.1")  # the image host is this machine
    try:
        backends = Backends(server.settings, server.store, LocalStorage(server.settings.home_dir, server.url))
        request_id = process_here(backends, [[host.url("p0.jpg"), host.url("p1.jpg")]], "renditions.csv",
                                  renditions="webp,avif", widths="480,960")
    finally:
        host.close()
    assert server.store.get_request(request_id).status == "completed"
    for files in server.store.renditions_of(request_id).values():
        at_480 = {row.format: row.bytes for row in files if row.width == 480}
        assert at_480["AVIF"] < min(at_480["WEBP"], at_480["JPEG"]), f"the fixture's AVIF is not the smallest: {at_480}"
    received = []
    page.on("response", lambda response: received.append(response) if "/images/" in response.url else None)

    page.goto(f"{server.url}/requests/{request_id}/report")
    served = page.locator("img.served")
    expect(served).to_have_count(2)
    page.wait_for_function("() => [...document.querySelectorAll('img.served')].every(i => i.complete)")
    save_screenshot(page, "report-renditions.png")

    # The report's width (160 px) takes the 480 w candidate of each srcset: the AVIF of that width, decoded.
    assert sorted(r.url.removeprefix(server.url) for r in received) == [
        f"/images/{request_id}/r1-p{position}.jpg?w=480" for position in (1, 2)]
    assert {(r.status, r.headers["content-type"], r.headers["vary"]) for r in received} == {
        (200, "image/avif", "Accept")}
    shown = served.evaluate_all("images => images.map(i => [i.currentSrc, i.naturalWidth])")
    assert [(source.removeprefix(server.url), width > 0) for source, width in shown] == [
        (f"/images/{request_id}/r1-p{position}.jpg?w=480", True) for position in (1, 2)]  # decoded
    for response in received:
        main = response.url.split("?")[0]
        with urllib.request.urlopen(main, timeout=10) as plain:  # no Accept header at all
            assert plain.headers["Content-Type"] == "image/jpeg" and plain.read()[:3] == b"\xff\xd8\xff"
        as_curl = requests.get(main, timeout=10)  # Accept: */*
        assert as_curl.headers["content-type"] == "image/jpeg" and as_curl.content[:3] == b"\xff\xd8\xff"
        assert requests.get(response.url, timeout=10).headers["content-type"] == "image/jpeg"  # ?w=480 alone
