"""Hostile input, table by table: every case fails on its own, with a reason that names what was wrong.

Images go through `BatchRunner.process` (download, then decode and encode in a child process) against real
servers on loopback; uploads through `parse_upload`, the inbox intake and the output CSV writer. Only loopback
servers are started, and a guard refuses any connection to an address other than 127.0.0.1 before a packet is
sent, so a URL the fetcher should have blocked cannot reach the network even when the fetcher is wrong.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from functools import cache, partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3.util.connection
from PIL import Image

from imgpipe.backends import Backends
from imgpipe.images import batch
from imgpipe.images.batch import BatchRunner, WorkItem
from imgpipe.images.compressor import compress_isolated
from imgpipe.intake.csv_schema import UploadRejected, parse_upload
from imgpipe.intake.inbox import Inbox
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.output.output_csv import OutputRow, render_output_csv
from imgpipe.settings import MIB, Limits, Settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.storage.local import LocalStorage
from imgpipe.net.url_safety import AllowList
from imgpipe.status.models import Source
from imgpipe.webhooks.attempt import attempt_delivery
from imgpipe_tests import faults
from imgpipe_tests.images import photo_like

DOWNLOAD_CAP = Limits().max_download_bytes


# ---------------------------------------------------------------------------------------------- payloads

def _png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height, all black: its pixel data compresses about 1000 to 1."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    scanline = 1 + (width + 7) // 8  # filter byte, then a bit per pixel
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(scanline * height), 9))
        + chunk(b"IEND", b"")
    )


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def _gif(frame_count: int) -> bytes:
    frames = [Image.new("L", (8, 8), shade * 40) for shade in range(frame_count)]  # distinct, so none is merged
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def _truncated_jpeg() -> bytes:
    whole = _jpeg(photo_like(640, 480, seed=3))
    return whole[: len(whole) // 2]


def _gzip(data_mib: int) -> bytes:
    """`data_mib` MiB of zeros, gzip-compressed about 1000 to 1."""
    gzip = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(gzip.compress(bytes(MIB)) for _ in range(data_mib)) + gzip.flush()


PAYLOADS = {
    "photo.jpg": lambda: _jpeg(photo_like(320, 240, seed=1)),
    "page.html": lambda: b"<!doctype html><title>Not found</title><p>Sorry.",
    "bomb.png": lambda: _png(20_000, 20_000),  # 48 KB declaring 400 megapixels
    "64-megapixels.png": lambda: _png(8_000, 8_000),
    "truncated.jpg": _truncated_jpeg,
    "4-frames.gif": lambda: _gif(4),
    "40-megapixels.jpg": lambda: _jpeg(Image.new("RGB", (8_000, 5_000), (40, 120, 200))),  # 160 MB decoded
    "64-mib.gz": lambda: _gzip(64),
}


@cache
def payload(name: str) -> bytes:
    return PAYLOADS[name]()


# ----------------------------------------------------------------------------------------------- servers

class HostileHandler(BaseHTTPRequestHandler):
    """An image server that misbehaves in every way the tests name by path."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        try:
            if parts[0] == "status":
                self.reply(int(parts[1]), b"nothing here")
            elif parts[0] == "file":
                self.reply(200, payload(parts[1]))
            elif parts[0] == "redirect":
                self.reply(302, b"", Location=urllib.parse.parse_qs(url.query)["to"][0])
            elif parts[0] == "overlong-redirect":
                self.reply(302, b"", Location="/" + "a" * 9000)
            elif parts[0] == "hops" and parts[1] != "0":  # /hops/<n>: n redirects, then an image
                self.reply(302, b"", Location=f"/hops/{int(parts[1]) - 1}")
            elif parts[0] == "hops":
                self.reply(200, payload("photo.jpg"))
            elif parts[0] == "endless":  # no Content-Length: the body ends when the connection does
                self.headers_only(200)
                self.endless()
            elif parts[0] == "4-gb":
                self.headers_only(200, **{"Content-Length": str(4 * 1024**3)})
                self.endless()
            elif parts[0] == "5000-digit-length":  # more digits than Python's int() will read
                self.reply(200, b"", **{"Content-Length": "9" * 5000})
            elif parts[0] == "gzip-bomb":  # although the request asked for identity encoding
                self.reply(200, payload("64-mib.gz"), **{"Content-Encoding": "gzip"})
            elif parts[0] == "trickle":  # a byte every 0.2 s: never silent long enough for a read timeout
                self.headers_only(200, **{"Content-Length": "1000"})
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif parts[0] == "silent":
                self.headers_only(200, **{"Content-Length": "1000"})
                time.sleep(3)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up, as it should

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path == "/redirect":
            self.reply(302, b"", Location=urllib.parse.parse_qs(url.query)["to"][0])
        elif url.path == "/busy-until-year-9999999999":
            self.reply(503, b"", **{"Retry-After": "Wed, 21 Oct 9999999999 07:28:00 GMT"})

    def headers_only(self, status: int, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def reply(self, status: int, body: bytes, **headers: str) -> None:
        self.headers_only(status, **{"Content-Length": str(len(body)), **headers})
        self.wfile.write(body)

    def endless(self) -> None:
        chunk = b"\xff" * 65536
        while True:
            self.wfile.write(chunk)


class CanaryServer(ThreadingHTTPServer):
    """Counts every connection it accepts, whether or not a request follows."""

    daemon_threads = True
    block_on_close = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), BaseHTTPRequestHandler)
        self.connections = 0

    def verify_request(self, request, client_address) -> bool:
        self.connections += 1
        return True


def serve(server: ThreadingHTTPServer) -> ThreadingHTTPServer:
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def hostile():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileHandler)
    server.daemon_threads, server.block_on_close = True, False
    yield serve(server)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def canary():
    server = serve(CanaryServer())
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def refused_port():
    """A port bound but never listening: every connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def backlogged_port():
    """A port whose accept queue is full, so the kernel drops every further connection attempt unanswered."""
    with socket.socket() as listener, contextlib.ExitStack() as fillers:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(8):
            filler = fillers.enter_context(socket.socket())
            filler.settimeout(0.2)
            try:
                filler.connect(address)
            except TimeoutError:
                break
        else:
            pytest.fail("the accept queue never filled up")
        yield address[1]


@pytest.fixture(autouse=True)
def connections(monkeypatch):
    """Every address the fetcher opens a connection to; anything but 127.0.0.1 is refused unsent."""
    opened = []
    connect = urllib3.util.connection.create_connection

    def guarded(address, *args, **kwargs):
        opened.append(address)
        if address[0] != "127.0.0.1":
            raise OSError(f"test guard: no connection to {address[0]} allowed")
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded)
    return opened


@pytest.fixture
def ports(hostile, canary, refused_port, backlogged_port) -> dict[str, int]:
    canary.connections = 0
    return {"hostile": hostile.server_address[1], "canary": canary.server_address[1], "refused": refused_port,
            "backlogged": backlogged_port}


@pytest.fixture(params=["process", "pool"])
def isolation(request) -> str:
    """Every image case under both IMGPIPE_ISOLATION modes: a fresh process per image, and recycled workers."""
    return request.param


def runner_for(tmp_path: Path, ports: dict[str, int], isolation: str, **env: str) -> BatchRunner:
    """127.0.0.1 is allowed on the ports of the misbehaving servers, and on no other (the canary's) port."""
    allowed = ",".join(f"127.0.0.1:{ports[name]}" for name in ("hostile", "refused", "backlogged"))
    settings = Settings.from_env({"IMGPIPE_HOME": str(tmp_path), "IMGPIPE_ALLOW_PRIVATE_HOSTS": allowed,
                                  "IMGPIPE_ISOLATION": isolation, **env})
    return BatchRunner(settings, LocalStorage(settings.home_dir, "http://127.0.0.1:8000"), "r1")


def fill(template: str, ports: dict[str, int]) -> str:
    """`template` with {hostile}, {canary}... as base URLs and {hostile_port}, {canary_port}... as ports."""
    return template.format(**{name: f"http://127.0.0.1:{port}" for name, port in ports.items()},
                           **{f"{name}_port": port for name, port in ports.items()})


def process(runner: BatchRunner, url_template: str, ports: dict[str, int]):
    return runner.process(WorkItem(fill(url_template, ports), "r1-p1"))


# ------------------------------------------------------------------------------------------------ images

def test_the_hostile_server_serves_a_good_image_through_five_redirects(tmp_path, ports, isolation):
    result = process(runner_for(tmp_path, ports, isolation), "{hostile}/hops/5", ports)

    assert (result.status, result.error) == ("compressed", None)
    assert Path(result.output_path).is_file()


@pytest.mark.parametrize("url, env, reason", [
    pytest.param("{hostile}/status/404", {}, "HTTP 404 from", id="dead-url-404"),
    pytest.param("{hostile}/status/500", {}, "HTTP 500 from", id="server-error-500"),
    pytest.param("{refused}/x.jpg", {}, "Connection refused", id="connection-refused"),
    pytest.param("{backlogged}/x.jpg", {"IMGPIPE_CONNECT_TIMEOUT": "1"},
                 "connecting to 127.0.0.1:{backlogged_port} took longer than 1 s", id="connection-never-answered"),
    pytest.param("{hostile}/file/page.html", {}, "not an image (unrecognised format)", id="html-not-an-image"),
    pytest.param("{hostile}/endless", {}, f"download exceeded {DOWNLOAD_CAP} bytes", id="endless-body-no-length"),
    pytest.param("{hostile}/4-gb", {}, f"download exceeded {DOWNLOAD_CAP} bytes", id="content-length-4-gb"),
    pytest.param("{hostile}/5000-digit-length", {}, f"download exceeded {DOWNLOAD_CAP} bytes",
                 id="content-length-5000-digits"),
    pytest.param("{hostile}/gzip-bomb", {}, f"download exceeded {DOWNLOAD_CAP} bytes", id="gzip-bomb"),
    pytest.param("{hostile}/trickle", {"IMGPIPE_DOWNLOAD_DEADLINE": "2"}, "download took longer than 2 s",
                 id="trickling-server"),
    pytest.param("{hostile}/silent", {"IMGPIPE_READ_TIMEOUT": "1"}, "sent nothing for 1 s", id="silent-server"),
    pytest.param("{hostile}/file/bomb.png", {}, "image is over 179.0 megapixels, the limit is 50",
                 id="decompression-bomb"),
    pytest.param("{hostile}/file/64-megapixels.png", {}, "image is 64.0 megapixels, the limit is 50",
                 id="pixels-above-cap"),
    pytest.param("{hostile}/file/truncated.jpg", {}, "corrupt or truncated image", id="truncated-jpeg"),
    pytest.param("{hostile}/file/4-frames.gif", {"IMGPIPE_MAX_FRAMES": "3"}, "animation has 4 frames, the limit is 3",
                 id="frames-above-cap"),
    pytest.param("{hostile}/file/40-megapixels.jpg", {"IMGPIPE_PROCESS_MEMORY_MB": "8"},
                 "out of memory: the image needs more than 8 MiB", id="memory-cap"),
    pytest.param("{hostile}/hops/6", {}, "more than 5 redirects", id="six-redirects"),
    pytest.param("{hostile}/redirect?to=http://[::1", {}, "redirect to an invalid URL", id="redirect-to-malformed-url"),
])
def test_hostile_image_fails_promptly_with_its_reason(tmp_path, ports, isolation, url, env, reason):
    started = time.monotonic()

    result = process(runner_for(tmp_path, ports, isolation, **env), url, ports)

    assert result.status == "failed"
    assert fill(reason, ports) in result.error
    assert result.output_path is None
    assert time.monotonic() - started < 10


def test_image_whose_decoding_hangs_fails_at_the_time_cap(tmp_path, ports, isolation, monkeypatch):
    # No small file reliably takes long to decode, so the child runs a stand-in decoder that hangs.
    monkeypatch.setattr(batch, "compress_isolated", partial(compress_isolated, work=faults.HANG))

    result = process(runner_for(tmp_path, ports, isolation, IMGPIPE_IMAGE_TIMEOUT="1"), "{hostile}/file/photo.jpg",
                     ports)

    assert (result.status, result.error) == ("failed", "compression took longer than 1 s")


# Each would reach a server on this machine, or the network, if it were not refused.
BLOCKED_URLS = [
    pytest.param("{canary}/x.jpg", "127.0.0.1 is a loopback address", id="loopback-port-not-allowed"),
    pytest.param("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address",
                 id="cloud-metadata"),
    pytest.param("http://2130706433:{canary_port}/x.jpg", "127.0.0.1 is a loopback address", id="decimal"),
    pytest.param("http://0x7f.1:{canary_port}/x.jpg", "127.0.0.1 is a loopback address", id="hex-short"),
    pytest.param("http://0177.0.0.1:{canary_port}/x.jpg", "127.0.0.1 is a loopback address", id="octal"),
    pytest.param("http://[::ffff:127.0.0.1]:{canary_port}/x.jpg", "an IPv6 form of 127.0.0.1, a loopback address",
                 id="ipv4-mapped-ipv6"),
    pytest.param("http://[::ffff:127.0.0.1]:{hostile_port}/file/photo.jpg",
                 "an IPv6 form of 127.0.0.1, a loopback address", id="ipv6-form-of-an-allowed-address"),
    pytest.param("http://[2002:7f00:1::]:{canary_port}/x.jpg", "an IPv6 form of 127.0.0.1, a loopback address",
                 id="6to4"),
    pytest.param("http://[64:ff9b::7f00:1]:{canary_port}/x.jpg", "an IPv6 form of 127.0.0.1, a loopback address",
                 id="nat64"),
    pytest.param("http://[::1]:{canary_port}/x.jpg", "::1 is a loopback address", id="ipv6-loopback"),
    pytest.param("http://0.0.0.0:{canary_port}/x.jpg", "0.0.0.0 is the unspecified address", id="unspecified"),
    pytest.param("http://10.0.0.1/x.jpg", "10.0.0.1 is a private address", id="private-10"),
    pytest.param("http://192.168.1.1/x.jpg", "192.168.1.1 is a private address", id="private-192-168"),
    pytest.param("http://100.64.0.1/x.jpg", "100.64.0.1 is a carrier-grade NAT address", id="cgnat"),
    pytest.param("http://224.0.0.1/x.jpg", "224.0.0.1 is a multicast address", id="multicast"),
    pytest.param("http://[fe80::1]/x.jpg", "fe80::1 is a link-local address", id="ipv6-link-local"),
    pytest.param("file:///etc/passwd", "scheme 'file' is not http or https", id="file-scheme"),
    pytest.param("http://user:pw@127.0.0.1:{hostile_port}/file/photo.jpg", "URL has user info", id="user-info"),
]

BLOCKED_REDIRECTS = [
    pytest.param("{hostile}/redirect?to={canary}/x.jpg", "127.0.0.1 is a loopback address", id="redirect-to-loopback"),
    pytest.param("{hostile}/redirect?to=http://2130706433:{canary_port}/x.jpg", "127.0.0.1 is a loopback address",
                 id="redirect-to-decimal"),
    pytest.param("{hostile}/redirect?to=http://[::ffff:127.0.0.1]:{canary_port}/x.jpg",
                 "an IPv6 form of 127.0.0.1, a loopback address", id="redirect-to-ipv4-mapped-ipv6"),
    pytest.param("{hostile}/redirect?to=http://169.254.169.254/latest/meta-data/",
                 "169.254.169.254 is a link-local address", id="redirect-to-cloud-metadata"),
    pytest.param("{hostile}/overlong-redirect", "URL is longer than 8192 characters", id="redirect-to-overlong-url"),
]


@pytest.mark.parametrize("url, reason", BLOCKED_URLS)
def test_blocked_image_url_is_refused_before_any_connection(tmp_path, ports, isolation, canary, connections, url,
                                                           reason):
    result = process(runner_for(tmp_path, ports, isolation), url, ports)

    assert result.status == "failed"
    assert result.error.startswith("download failed: blocked: ") and reason in result.error
    assert connections == []
    assert canary.connections == 0


@pytest.mark.parametrize("url, reason", BLOCKED_REDIRECTS)
def test_redirect_to_a_blocked_address_is_refused_before_connecting_to_it(tmp_path, ports, isolation, canary,
                                                                          connections, url, reason):
    result = process(runner_for(tmp_path, ports, isolation), url, ports)

    assert result.status == "failed"
    assert result.error.startswith("download failed: blocked: ") and reason in result.error
    assert connections == [("127.0.0.1", ports["hostile"])]
    assert canary.connections == 0


# ---------------------------------------------------------------------------------------------- webhooks

def attempt_webhook(url_template: str, ports: dict[str, int]):
    allow = AllowList.parse(f"127.0.0.1:{ports['hostile']}")
    return attempt_delivery(fill(url_template, ports), b"{}", {}, allow=allow, connect_timeout=1, read_timeout=1)


@pytest.mark.parametrize("url, reason", BLOCKED_URLS)
def test_blocked_webhook_url_is_never_attempted(ports, canary, connections, url, reason):
    result = attempt_webhook(url, ports)

    assert (result.outcome, result.status_code) == ("blocked", None)
    assert result.error.startswith("blocked: ") and reason in result.error
    assert connections == []
    assert canary.connections == 0


def test_webhook_redirect_is_not_followed(ports, canary, connections):
    result = attempt_webhook("{hostile}/redirect?to={canary}/hook", ports)

    assert (result.outcome, result.status_code) == ("rejected", 302)
    assert "not followed" in result.error
    assert connections == [("127.0.0.1", ports["hostile"])]
    assert canary.connections == 0


def test_webhook_retry_after_beyond_any_date_is_ignored(ports):
    result = attempt_webhook("{hostile}/busy-until-year-9999999999", ports)

    assert (result.outcome, result.status_code, result.retry_after) == ("retry", 503, None)


# ------------------------------------------------------------------------------------------ uploaded CSVs

HEADER = b"S. No.,Product Name,Input Image Urls\n"
URLS = "Input Image Urls"
GARBAGE = b"\x7fELF\x02\x01\x01\x00" + bytes(56)
LONG_URL = "https://img.example/" + "a" * 2_100


def _rows(count: int, urls_per_row: int = 1) -> bytes:
    return HEADER + b"".join(
        _record(str(row), f"Chair {row}", ", ".join(f"https://img.example/{row}/{n}.jpg" for n in range(urls_per_row)))
        for row in range(1, count + 1)
    )


def _record(*cells: str) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue().encode()


def _row(serial: str = "1", name: str = "Chair", urls: str = "https://img.example/a.jpg") -> bytes:
    return HEADER + _record(serial, name, urls)


@pytest.mark.parametrize("data, row, column, message", [
    pytest.param(b"1," * (5 * MIB + 1), None, None, "file is 10,485,762 bytes, more than the limit of 10,485,760",
                 id="file-over-10-mib"),
    pytest.param(_rows(10_001), None, None, "file has more than 10,000 data rows", id="rows-over-10000"),
    pytest.param(_row(urls=", ".join(f"https://img.example/{n}.jpg" for n in range(101))), 2, URLS,
                 "row has 101 image URLs, more than the limit of 100", id="urls-in-a-row-over-100"),
    pytest.param(_rows(501, urls_per_row=100), None, URLS, "file has more than 50,000 image URLs",
                 id="urls-in-file-over-50000"),
    pytest.param(GARBAGE, None, None, "file contains a NUL character (line 1); it looks binary, not CSV",
                 id="binary-garbage"),
    pytest.param(payload("photo.jpg"), None, None, "file is not UTF-8 text: byte 0xFF at offset 0 (line 1)",
                 id="an-image-not-a-csv"),
    pytest.param(_row(name="Café").decode().encode("latin-1"), None, None,
                 "file is not UTF-8 text: byte 0xE9 at offset 42 (line 2); save it as 'CSV UTF-8'", id="latin-1"),
    pytest.param(_row(name="x" * 200_000), None, None,
                 "file is not valid CSV near line 2: field larger than field limit", id="giant-cell"),
    pytest.param(b"<!doctype html><title>Sign in</title>\n", None, "S. No.", "column 'S. No.' is missing",
                 id="html-not-a-csv"),
    pytest.param(_row(name="Lamp\x1b[2J"), 2, "Product Name", "contains a control character",
                 id="control-character-in-name"),
    pytest.param(_row(serial="1\x00"), None, None, "file contains a NUL character (line 2)", id="nul-in-serial"),
    pytest.param(_row(serial="1\x07"), 2, "S. No.", "contains a control character", id="bell-in-serial"),
    pytest.param(_row(urls=LONG_URL), 2, URLS, "is longer than 2,048 characters", id="url-over-2048"),
    pytest.param(_row(urls=LONG_URL * 5), 2, URLS, "is longer than 8,192 characters", id="url-over-8192"),
    pytest.param(_row(urls="javascript:alert(1)"), 2, URLS, "is not an absolute http(s) URL", id="javascript-url"),
    pytest.param(_row(urls="file:///etc/passwd"), 2, URLS, "is not an absolute http(s) URL", id="file-url"),
    pytest.param(_row(urls="https://img.example/a b.jpg"), 2, URLS, "contains whitespace or a control character",
                 id="url-with-space"),
])
def test_hostile_csv_is_rejected_with_row_column_and_reason(data, row, column, message):
    with pytest.raises(UploadRejected) as rejected:
        parse_upload(data, limits=Limits())

    assert any((e.row, e.column) == (row, column) and message in e.message for e in rejected.value.errors), \
        rejected.value.errors


@pytest.fixture
def inbox(tmp_path) -> Inbox:
    settings = Settings(home=tmp_path / "home")
    settings.ensure_folders()
    return Inbox(Backends(settings, DuckDBStatusStore(settings.db_path),
                          LocalStorage(settings.home_dir, settings.public_base_url)))


def assert_kept_byte_for_byte(tmp_path, inbox: Inbox, result, kept_name: str, data: bytes, error: str) -> None:
    folder = inbox.backends.settings.rejected_dir / result.request_id
    assert not result.accepted
    assert sorted(p.name for p in folder.iterdir()) == sorted([kept_name, "errors.json"])
    assert (folder / kept_name).read_bytes() == data
    errors = json.loads((folder / "errors.json").read_text())["errors"]
    assert any(error in e["message"] for e in errors), errors
    assert inbox.backends.store.get_request(result.request_id).status == "rejected"
    assert os.listdir(tmp_path) == ["home"]  # nothing written beside IMGPIPE_HOME


@pytest.mark.parametrize("name, sidecar, data, kept_name, error", [
    pytest.param(b"garbage.csv", None, GARBAGE, "garbage.csv", "NUL character", id="binary-garbage"),
    pytest.param(b"big.csv", None, b"1," * (5 * MIB + 1), "big.csv", "more than the limit of 10,485,760",
                 id="file-over-10-mib"),
    pytest.param(b"evil\x1b[31m\r\n.csv", None, GARBAGE, "evil_[31m__.csv", "NUL character",
                 id="control-characters-in-name"),
    pytest.param(b"caf\xe9.csv", None, GARBAGE, "caf\ufffd.csv", "NUL character", id="name-not-utf-8"),
    pytest.param(b"up.csv", {"webhook_url": 5}, _rows(1), "up.csv", "webhook_url must be a string",
                 id="webhook-not-a-string"),
    pytest.param(b"up.csv", '{"webhook_url": "https://hooks.example/\\udce9"}', _rows(1), "up.csv",
                 "surrogates not allowed", id="sidecar-lone-surrogate"),
    pytest.param(b"up.csv", "[" * 5000 + "]" * 5000, _rows(1), "up.csv", "nested too deeply",
                 id="sidecar-nested-5000-deep"),
    pytest.param(b"up.csv", "x" * (64 * 1024 + 1), _rows(1), "up.csv", "larger than 65536 bytes",
                 id="sidecar-over-64-kib"),
])
def test_rejected_drop_is_kept_byte_for_byte_inside_its_rejected_folder(tmp_path, inbox, name, sidecar, data,
                                                                        kept_name, error):
    folder = bytes(inbox.backends.settings.inbox)
    if sidecar is not None:
        text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
        Path(os.fsdecode(os.path.join(folder, name))).with_suffix(".json").write_text(text)
    with open(os.path.join(folder, name), "wb") as dropped:
        dropped.write(data)

    [result] = inbox.take()

    assert_kept_byte_for_byte(tmp_path, inbox, result, kept_name, data, error)
    assert os.listdir(folder) == [b".claimed"] and os.listdir(inbox.claims) == []
    assert inbox.take() == []  # and nothing left behind that a later pass would trip over


@pytest.mark.parametrize("name, kept_name", [
    pytest.param("../../../outside.csv", "outside.csv", id="dot-dot-slash-name"),
    pytest.param("..\\..\\outside.csv", "outside.csv", id="dot-dot-backslash-name"),
    pytest.param("..", "upload.csv", id="name-is-dot-dot"),
    pytest.param("errors.json", "upload-errors.json.csv", id="name-is-errors-json"),
    pytest.param("x" * 5000, "x" * 200, id="name-too-long"),
    pytest.param("a\x00b\x1b[2J.csv", "a_b_[2J.csv", id="control-characters"),
])
def test_an_uploaded_name_is_made_harmless_and_nothing_leaves_the_rejected_folder(tmp_path, inbox, name, kept_name):
    result = take_upload(inbox.backends, Upload(GARBAGE, name, Source.API))
    assert_kept_byte_for_byte(tmp_path, inbox, result, kept_name, GARBAGE, "NUL character")


def test_symlink_in_the_inbox_is_never_taken(tmp_path, inbox):
    secret = tmp_path / "secret.csv"
    secret.write_bytes(_rows(1))
    (inbox.backends.settings.inbox / "link.csv").symlink_to(secret)

    assert inbox.take() == []
    assert (inbox.backends.settings.inbox / "link.csv").is_symlink()
    assert secret.read_bytes() == _rows(1)


# --------------------------------------------------------------------------------------------- output CSV

@pytest.mark.parametrize("text, written", [
    pytest.param('=HYPERLINK("https://evil.example","Click")', '\'=HYPERLINK("https://evil.example","Click")',
                 id="equals"),
    pytest.param("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0", id="plus"),
    pytest.param("-2+3", "'-2+3", id="minus"),
    pytest.param("@SUM(A1:A9)", "'@SUM(A1:A9)", id="at"),
    pytest.param("\t=1+1", "'\t=1+1", id="tab"),
    pytest.param("\r=1+1", "'\r=1+1", id="carriage-return"),
    pytest.param("Oak chair = best", "Oak chair = best", id="harmless-equals-inside"),
    pytest.param("../../etc/passwd", "../../etc/passwd", id="dot-dot-is-just-text"),
])
def test_formula_in_serial_or_name_is_written_as_text(text, written):
    rendered = render_output_csv([OutputRow(text, text, ("https://img.example/a.jpg",), (None,))])

    [_, row] = list(csv.reader(io.StringIO(rendered.decode("utf-8"), newline="")))
    assert row[:2] == [written, written]
