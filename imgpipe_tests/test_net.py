import email.utils
import os
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imgpipe.net import pools
from imgpipe.net.deadline import Deadline, _watchdog
from imgpipe.net.download import FetchLimits, fetch
from imgpipe.net.errors import FetchError
from imgpipe.net.host_slots import HostSlots
from imgpipe.net.post import post
from imgpipe.net.url_safety import AllowList
from imgpipe.settings import Limits

IMAGE = os.urandom(200_000)
REDIRECT_CODES = (301, 302, 303, 307, 308)


class Handler(BaseHTTPRequestHandler):
    """The endpoints the tests need; every request is recorded on the server as (method, path, headers, body)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.seen.append(("GET", self.path, dict(self.headers), b""))
        path = self.path
        try:
            if path == "/image":
                self.reply(200, IMAGE, {"Content-Type": "image/png"})
            elif path == "/host":
                self.reply(200, self.headers["Host"].encode())
            elif path.startswith("/status/"):
                self.reply(int(path.rsplit("/", 1)[1]), b"nope")
            elif path.startswith("/redirect/"):
                hops_left = int(path.rsplit("/", 1)[1])
                target = f"/redirect/{hops_left - 1}" if hops_left > 1 else "/image"
                self.reply(REDIRECT_CODES[hops_left % 5], b"", {"Location": target})
            elif path == "/to-canary":
                self.reply(302, b"", {"Location": f"http://127.0.0.2:{self.server.canary_port}/image"})
            elif path == "/endless":
                self.send_response(200)
                self.end_headers()
                while True:
                    self.wfile.write(b"x" * 65536)
            elif path == "/lying-length":  # says 1000 bytes, sends far more
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"y" * 5_000_000)
            elif path == "/huge-length":
                self.send_response(200)
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
                self.wfile.write(b"z" * 100)
            elif path == "/trickle-body":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.trickle()
            elif path == "/trickle-unsized":  # no Content-Length: the body ends when the connection does
                self.send_response(200)
                self.end_headers()
                self.trickle()
            elif path == "/trickle-headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self.trickle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up, as it should

    def trickle(self):
        for _ in range(100):
            self.wfile.write(b"X-")
            self.wfile.flush()
            time.sleep(0.5)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append(("POST", self.path, dict(self.headers), body))
        if self.path == "/hook":
            self.reply(200, b"thanks " * 20_000)  # more than is ever read
        elif self.path == "/hook/busy":
            self.reply(503, b"", {"Retry-After": "7"})
        elif self.path == "/hook/later":
            later = email.utils.formatdate(time.time() + 120, usegmt=True)
            self.reply(429, b"", {"Retry-After": later})
        elif self.path == "/hook/moved":
            self.reply(302, b"", {"Location": "/hook"})
        elif self.path == "/hook/moved-hostile":
            self.reply(302, b"", {"Location": "/hook\x00\x1b[2J\x9b31m"})

    def reply(self, status, body, headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start_server(host, handler=Handler, server_class=ThreadingHTTPServer, **attributes):
    server = server_class((host, 0), handler)
    server.daemon_threads = True
    server.seen = []
    for name, value in attributes.items():
        setattr(server, name, value)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def canary():
    server = start_server("127.0.0.2")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def server(canary):
    server = start_server("127.0.0.1", canary_port=canary.server_address[1])
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    server.allow = AllowList.parse(f"127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()


LIMITS = FetchLimits(max_bytes=1_000_000, connect_timeout=2, read_timeout=5, deadline=10)


def fetch_error(url, allow, limits=LIMITS, **kwargs) -> FetchError:
    with pytest.raises(FetchError) as failure:
        fetch(url, allow=allow, limits=limits, **kwargs)
    return failure.value


def test_image_round_trips(server):
    result = fetch(f"{server.base}/image", allow=server.allow, limits=LIMITS)
    assert result.content == IMAGE
    assert (result.status_code, result.content_type, result.url) == (200, "image/png", f"{server.base}/image")
    assert server.seen[0][2]["Host"] == server.base.removeprefix("http://")


@pytest.mark.parametrize("status", [404, 500])
def test_error_status(server, status):
    error = fetch_error(f"{server.base}/status/{status}", server.allow)
    assert (error.kind, error.status_code) == ("http_status", status)
    assert str(error) == f"HTTP {status} from {server.base}/status/{status}"


def test_five_redirects_of_every_kind_are_followed(server):
    result = fetch(f"{server.base}/redirect/5", allow=server.allow, limits=LIMITS)
    assert result.content == IMAGE
    assert result.url == f"{server.base}/image"
    assert [path for _, path, _, _ in server.seen] == [f"/redirect/{n}" for n in range(5, 0, -1)] + ["/image"]


def test_sixth_redirect_is_refused(server):
    error = fetch_error(f"{server.base}/redirect/6", server.allow)
    assert (error.kind, str(error)) == ("redirects", "more than 5 redirects")
    assert len(server.seen) == 6


def test_redirect_to_a_private_address_is_blocked_before_connecting(server, canary):
    error = fetch_error(f"{server.base}/to-canary", server.allow)
    assert error.kind == "blocked"
    assert str(error) == "blocked: 127.0.0.2 is a loopback address"
    assert canary.seen == []


def test_private_address_without_allow_entry_is_blocked_before_connecting(server):
    error = fetch_error(f"{server.base}/image", AllowList.parse(""))
    assert (error.kind, str(error)) == ("blocked", "blocked: 127.0.0.1 is a loopback address")
    other_port = AllowList.parse(f"127.0.0.1:{server.server_address[1] + 1}")
    assert fetch_error(f"{server.base}/image", other_port).kind == "blocked"
    with pytest.raises(FetchError, match="blocked") as failure:
        post(f"{server.base}/hook", b"{}", {}, allow=AllowList.parse(""), connect_timeout=2, read_timeout=5)
    assert failure.value.kind == "blocked"
    assert server.seen == []


def test_connection_goes_to_the_checked_address_with_the_host_name_kept(server):
    asked = []

    def resolve(host, port, **kwargs):
        asked.append(host)
        return [(2, 1, 6, "", ("127.0.0.1", port))]

    port = server.server_address[1]
    allow = AllowList.parse(f"images.test:{port}")
    result = fetch(f"http://images.test:{port}/host", allow=allow, limits=LIMITS, resolver=resolve)
    assert result.content == f"images.test:{port}".encode()
    assert asked == ["images.test"]  # resolved once: nothing left to rebind


@pytest.mark.parametrize("path", ["/endless", "/huge-length"])
def test_byte_cap(server, path):
    started = time.monotonic()
    error = fetch_error(f"{server.base}{path}", server.allow)
    assert (error.kind, str(error)) == ("too_large", "download exceeded 1000000 bytes")
    assert time.monotonic() - started < 5


def test_lying_content_length_lets_no_more_than_it_announced_through(server):
    result = fetch(f"{server.base}/lying-length", allow=server.allow, limits=LIMITS)
    assert result.content == b"y" * 1000


@pytest.mark.parametrize("path", ["/trickle-body", "/trickle-unsized", "/trickle-headers"])
def test_trickling_server_fails_at_the_deadline(server, path):
    limits = FetchLimits(max_bytes=1_000_000, connect_timeout=2, read_timeout=5, deadline=2)
    started = time.monotonic()
    error = fetch_error(f"{server.base}{path}", server.allow, limits)
    elapsed = time.monotonic() - started
    assert (error.kind, str(error)) == ("timeout", "download took longer than 2 s")
    assert 1.9 < elapsed < 3


def test_silent_server_trips_the_read_timeout(server):
    limits = FetchLimits(max_bytes=1_000_000, connect_timeout=2, read_timeout=0.3, deadline=10)
    error = fetch_error(f"{server.base}/trickle-body", server.allow, limits)
    assert (error.kind, str(error)) == ("timeout", f"{server.base.removeprefix('http://')} sent nothing for 0.3 s")


def test_refused_connection_is_a_network_error(server):
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    error = fetch_error(f"{server.base}/image", server.allow)
    assert error.kind == "network"
    assert f"127.0.0.1:{port}" in str(error) and "refused" in str(error)


def test_unresolvable_host_is_a_network_error():
    def unresolvable(*args, **kwargs):
        raise OSError("no such host")

    error = fetch_error("http://nowhere.test/a.jpg", AllowList.parse(""), resolver=unresolvable)
    assert (error.kind, str(error)) == ("network", "cannot resolve host 'nowhere.test'")


def test_post_delivers_body_and_headers(server):
    result = post(
        f"{server.base}/hook", b'{"a": 1}', {"Content-Type": "application/json", "webhook-id": "msg_1"},
        allow=server.allow, connect_timeout=2, read_timeout=5,
    )
    assert (result.status_code, result.retry_after, result.location) == (200, None, None)
    method, path, headers, body = server.seen[0]
    assert (method, path, body) == ("POST", "/hook", b'{"a": 1}')
    assert (headers["Content-Type"], headers["webhook-id"]) == ("application/json", "msg_1")


def test_post_returns_error_status_with_retry_after(server):
    busy = post(f"{server.base}/hook/busy", b"{}", {}, allow=server.allow, connect_timeout=2, read_timeout=5)
    assert (busy.status_code, busy.retry_after) == (503, 7.0)
    later = post(f"{server.base}/hook/later", b"{}", {}, allow=server.allow, connect_timeout=2, read_timeout=5)
    assert later.status_code == 429
    assert 110 < later.retry_after <= 120


def test_post_does_not_follow_redirects(server):
    result = post(f"{server.base}/hook/moved", b"{}", {}, allow=server.allow, connect_timeout=2, read_timeout=5)
    assert (result.status_code, result.location) == (302, "/hook")
    assert [path for _, path, _, _ in server.seen] == ["/hook/moved"]


def test_a_status_line_with_nul_bytes_and_ansi_escapes_is_reported_printable(image_server):
    # A code of two digits does not parse: http.client quotes the whole status line, line break included.
    error = fetch_error(image_server.url("rawstatus/99"), AllowList.parse("127.0.0.1"))

    assert error.kind == "network"
    netloc = image_server.base.removeprefix("http://")
    assert str(error) == f"network error with {netloc}: HTTP/1.1 99 bad\\x00\\x1b[31mred\\x1b[0m\\x0d\\x0a"


def test_post_reports_a_redirect_location_printable(server):
    result = post(f"{server.base}/hook/moved-hostile", b"{}", {}, allow=server.allow, connect_timeout=2,
                  read_timeout=5)

    assert (result.status_code, result.location) == (302, "/hook\\x00\\x1b[2J\\x9b31m")


class KeepAliveHandler(Handler):
    protocol_version = "HTTP/1.1"  # connections stay open between requests unless a side closes them


class CountingServer(ThreadingHTTPServer):
    """Counts the TCP connections it accepts."""

    accepted = 0

    def get_request(self):
        self.accepted += 1
        return super().get_request()


@pytest.fixture
def keep_alive_server():
    server = start_server("127.0.0.1", KeepAliveHandler, CountingServer)
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    server.allow = AllowList.parse(f"127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()


def test_downloads_sharing_host_slots_keep_one_connection_open_until_closed(keep_alive_server):
    server, hosts = keep_alive_server, HostSlots(per_host=2)
    for _ in range(5):
        assert fetch(f"{server.base}/image", allow=server.allow, limits=LIMITS, hosts=hosts).content == IMAGE
    assert server.accepted == 1
    hosts.close()
    fetch(f"{server.base}/image", allow=server.allow, limits=LIMITS, hosts=hosts)
    assert server.accepted == 2
    hosts.close()
    fetch(f"{server.base}/image", allow=server.allow, limits=LIMITS)  # without slots: a connection of its own
    assert server.accepted == 3


def test_a_kept_connection_is_under_the_deadline_of_each_call_that_takes_it_up(keep_alive_server):
    server, hosts = keep_alive_server, HostSlots(per_host=1)
    fetch(f"{server.base}/image", allow=server.allow, limits=LIMITS, hosts=hosts)
    limits = FetchLimits(max_bytes=1_000_000, connect_timeout=2, read_timeout=5, deadline=1.5)
    started = time.monotonic()
    error = fetch_error(f"{server.base}/trickle-body", server.allow, limits, hosts=hosts)
    assert (error.kind, str(error)) == ("timeout", "download took longer than 1.5 s")
    assert 1.4 < time.monotonic() - started < 2.5
    assert server.accepted == 1  # the trickle came over the kept connection
    assert fetch(f"{server.base}/image", allow=server.allow, limits=LIMITS, hosts=hosts).content == IMAGE
    assert server.accepted == 2  # the one cut short was not kept
    hosts.close()


def test_ended_calls_leave_no_deadline_behind_and_a_running_one_still_expires():
    watchdog = _watchdog
    for _ in range(5000):
        with Deadline(60, "download") as deadline:
            deadline.start()
    assert len(watchdog._heap) < 2200  # ended ones are dropped in bulk, not kept for their full minute
    with Deadline(0.2, "download") as deadline:
        deadline.start()
        time.sleep(0.6)
        assert deadline.expired


def test_limits_from_settings():
    limits = FetchLimits.from_settings(Limits())
    assert limits == FetchLimits(
        max_bytes=25 * 1024 * 1024, connect_timeout=5.0, read_timeout=15.0, deadline=30.0, max_redirects=5,
        attempts=3,
    )


# HTTPS: a test CA signs a certificate for images.test; the server records the name the client sent (SNI).


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=imgpipe test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=folder)
    openssl("req", *curve, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=images.test", cwd=folder)
    (folder / "leaf.ext").write_text(
        "subjectAltName=DNS:images.test\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n"
    )
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext", cwd=folder)
    return folder


@pytest.fixture
def tls_server(certificates, monkeypatch):
    server = start_server("127.0.0.1")
    server.server_names = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates / "leaf.pem", certificates / "leaf.key")
    context.sni_callback = lambda sock, name, ctx: server.server_names.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    # Trust the test CA instead of the public roots.
    monkeypatch.setattr(pools, "CA_BUNDLE", str(certificates / "ca.pem"))
    yield server
    server.shutdown()
    server.server_close()


def resolve_to_loopback(host, port, **kwargs):
    return [(2, 1, 6, "", ("127.0.0.1", port))]


def test_https_uses_the_host_name_for_sni_and_certificate(tls_server):
    port = tls_server.server_address[1]
    result = fetch(
        f"https://images.test:{port}/image",
        allow=AllowList.parse(f"images.test:{port}"), limits=LIMITS, resolver=resolve_to_loopback,
    )
    assert result.content == IMAGE
    assert tls_server.server_names == ["images.test"]


def test_https_certificate_for_another_name_is_refused(tls_server):
    port = tls_server.server_address[1]
    error = fetch_error(
        f"https://other.test:{port}/image", AllowList.parse(f"other.test:{port}"), resolver=resolve_to_loopback
    )
    assert error.kind == "network"
    assert "certificate" in str(error) and "other.test" in str(error)
    assert tls_server.seen == []
