"""Polite fetching and conditional requests (docs/operations.md#re-uploads-politeness-and-retention), against
real servers on 127.0.0.1: at most `per_host` connections to one host, retries with backoff that wait out
Retry-After within the deadline, and If-None-Match / If-Modified-Since answered 304."""
from __future__ import annotations

import dataclasses
import email.utils
import os
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imgpipe.net import download, host_slots
from imgpipe.net.download import FetchLimits, Validators, fetch
from imgpipe.net.errors import FetchError
from imgpipe.net.host_slots import UNANSWERED_IN_A_ROW, HostSlots
from imgpipe.net.post import post
from imgpipe.net.url_safety import AllowList
from imgpipe_tests.servers import CatalogServer

IMAGE = os.urandom(50_000)
LIMITS = FetchLimits(max_bytes=1_000_000, connect_timeout=2, read_timeout=5, deadline=10, attempts=3)
LOOPBACK = AllowList.parse("127.0.0.1")


# ------------------------------------------------------------------------------------ a scripted server

class ScriptedHandler(BaseHTTPRequestHandler):
    """/s/<answers>/...: the nth request for a path gets the nth of its comma-separated answers (the last one
    again after that). An answer is `ok` (200 and the image), a status code, a code with a Retry-After
    (`503+60`: delta-seconds; `503+date2`: an HTTP date 2 s ahead), `reset` (the connection reset unanswered),
    `silent` (nothing for 1 s, then closed), `trickle` (a byte of 100 every 0.2 s), `to-blocked` (302 to
    127.0.0.2, which is not allowed) or `hostile-validators` (200 with an ETag of 2 KiB and a Last-Modified
    holding an escape). Every request is recorded on the server as (path, time.monotonic(), headers)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        with self.server.lock:
            self.server.seen.append((self.path, time.monotonic(), {k.lower(): v for k, v in self.headers.items()}))
            count = sum(1 for path, _, _ in self.server.seen if path == self.path)
        answers = self.path.split("/")[2].split(",")
        answer = answers[min(count, len(answers)) - 1]
        code, _, retry_after = answer.partition("+")
        try:
            if answer == "ok":
                self.reply(200, IMAGE)
            elif answer == "reset":  # SO_LINGER 0: closing sends RST, so the client sees a reset connection
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
            elif answer == "silent":
                time.sleep(1)
                self.close_connection = True
            elif answer == "trickle":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif answer == "to-blocked":
                self.reply(302, b"", {"Location": "http://127.0.0.2/x"})
            elif answer == "hostile-validators":
                self.reply(200, IMAGE, {"ETag": '"' + "e" * 2048 + '"', "Last-Modified": "Tue,\x1b[31m 15 Nov"})
            elif retry_after.startswith("date"):
                later = email.utils.formatdate(time.time() + float(retry_after[4:]), usegmt=True)
                self.reply(int(code), b"busy", {"Retry-After": later})
            else:
                self.reply(int(code), b"nope", {"Retry-After": retry_after} if retry_after else {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up, as it should

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def reply(self, status, body, headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        # The client hangs up without reading an error's body: a keep-alive read would then meet a reset.
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
    server.daemon_threads, server.block_on_close = True, False
    server.seen, server.lock = [], threading.Lock()
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    server.netloc = server.base.removeprefix("http://")
    server.hits = lambda path: [when for seen, when, _ in server.seen if seen == path]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def fetch_error(url, limits=LIMITS, **kwargs) -> FetchError:
    with pytest.raises(FetchError) as failure:
        fetch(url, allow=LOOPBACK, limits=limits, **kwargs)
    return failure.value


@pytest.fixture
def catalog(tmp_path):
    """Start CatalogServers over tmp_path/images, holding image-<n>.bin (n from 0 to 11)."""
    root = tmp_path / "images"
    root.mkdir()
    for n in range(12):
        (root / f"image-{n}.bin").write_bytes(os.urandom(20_000 + n))
    started = []

    def start(**options) -> CatalogServer:
        started.append(CatalogServer(root, **options))
        return started[-1]

    start.root = root
    yield start
    for server in started:
        server.close()


# ------------------------------------------------------------------------------- connections per host

def test_twelve_images_from_eight_threads_keep_to_two_connections_and_wait_out_retry_after(catalog):
    server = catalog(throttle=True, retry_after="1", delay=0.1)
    hosts = HostSlots(per_host=2)
    names = [f"image-{n}.bin" for n in range(12)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda name: fetch(server.url(name), allow=LOOPBACK, limits=LIMITS, hosts=hosts),
                                names))

    assert [result.content for result in results] == [(catalog.root / name).read_bytes() for name in names]
    assert {result.attempts for result in results} == {2}
    assert server.peak == 2  # reached, and never passed
    for name in names:
        first, second = server.served_for(name)
        assert (first.status, second.status) == (429, 200)
        assert second.at - first.at >= 1.0, f"{name} was asked again before its Retry-After"


def test_without_host_slots_the_same_downloads_open_more_connections(catalog):
    # The measure's control: the server does see more than two at once when nothing holds the threads back.
    server = catalog(delay=0.2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: fetch(server.url(f"image-{n}.bin"), allow=LOOPBACK, limits=LIMITS), range(12)))
    assert server.peak > 2


def test_a_busy_host_holds_up_no_other_host_and_its_own_downloads_queue(catalog):
    slow, fast = catalog(delay=1.0), catalog()
    hosts = HostSlots(per_host=1)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(fetch, slow.url("image-0.bin"), allow=LOOPBACK, limits=LIMITS, hosts=hosts)
        while not slow.served:
            time.sleep(0.01)
        queued = pool.submit(fetch, slow.url("image-1.bin"), allow=LOOPBACK, limits=LIMITS, hosts=hosts)
        started = time.monotonic()
        fetch(fast.url("image-2.bin"), allow=LOOPBACK, limits=LIMITS, hosts=hosts)
        assert time.monotonic() - started < 0.5  # the slow host's only slot is taken, and that is no matter
        first.result(), queued.result()
    [one], [two] = slow.served_for("image-0.bin"), slow.served_for("image-1.bin")
    assert two.at - one.at >= 1.0  # the second connection waited for the first to end


def test_no_slot_is_held_while_waiting_to_try_again(catalog):
    server = catalog(throttle=True, retry_after="1")
    hosts = HostSlots(per_host=1)
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda n: fetch(server.url(f"image-{n}.bin"), allow=LOOPBACK, limits=LIMITS, hosts=hosts),
                      range(2)))
    # Both were told to wait before either tried again: the one slot was free during the wait.
    assert [seen.status for seen in sorted(server.served, key=lambda seen: seen.at)] == [429, 429, 200, 200]


def test_a_wait_for_a_slot_ends_at_the_deadline(catalog):
    server = catalog(delay=2.0)
    hosts = HostSlots(per_host=1)
    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(fetch, server.url("image-0.bin"), allow=LOOPBACK, limits=LIMITS, hosts=hosts)
        while not server.served:
            time.sleep(0.01)
        started = time.monotonic()
        error = fetch_error(server.url("image-1.bin"), hosts=hosts, deadline=time.monotonic() + 0.5)
        assert 0.4 < time.monotonic() - started < 1.0
        busy.result()
    assert (error.kind, str(error)) == (
        "timeout", f"no connection to 127.0.0.1:{server.port} came free before the deadline (at most 1 at once)")
    assert server.served_for("image-1.bin") == []


def test_a_host_is_given_up_after_three_urls_in_a_row_go_unanswered_not_after_one_url_retried(scripted):
    hosts, once = HostSlots(per_host=2), dataclasses.replace(LIMITS, attempts=1)
    # `silent`: the connection closed after 1 s without an answer.
    assert fetch_error(f"{scripted.base}/s/silent/a", hosts=hosts).attempts == 3
    fetch(f"{scripted.base}/s/ok/b", allow=LOOPBACK, limits=LIMITS, hosts=hosts)  # an answer forgives the host
    for name in ("c", "d"):
        fetch_error(f"{scripted.base}/s/silent/{name}", once, hosts=hosts)
    assert hosts.refusal(scripted.netloc) is None

    last = fetch_error(f"{scripted.base}/s/silent/e", once, hosts=hosts)
    refused = fetch_error(f"{scripted.base}/s/ok/f", hosts=hosts)

    given_up = f"host {scripted.netloc} did not answer 3 downloads in a row (timeouts or connection failures)"
    assert last.kind == "network" and hosts.refusal(scripted.netloc) == given_up
    assert (refused.kind, refused.attempts, str(refused)) == ("host_down", 1, f"{given_up}; not tried")
    assert scripted.hits("/s/ok/f") == []


# ---------------------------------------------------------------------------------------------- retries

def test_503_then_200_is_retried(scripted):
    result = fetch(f"{scripted.base}/s/503,ok", allow=LOOPBACK, limits=LIMITS)
    assert (result.content, result.attempts) == (IMAGE, 2)


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
def test_transient_statuses_are_retried(scripted, status):
    result = fetch(f"{scripted.base}/s/{status},{status},ok", allow=LOOPBACK, limits=LIMITS)
    assert (result.content, result.attempts) == (IMAGE, 3)
    assert len(scripted.hits(f"/s/{status},{status},ok")) == 3


@pytest.mark.parametrize("status", [400, 403, 404, 410, 500, 501])
def test_other_statuses_are_final_at_once(scripted, status):
    url = f"{scripted.base}/s/{status},ok"
    error = fetch_error(url)
    assert (error.kind, error.status_code, error.attempts, str(error)) == (
        "http_status", status, 1, f"HTTP {status} from {url}")
    assert len(scripted.hits(f"/s/{status},ok")) == 1


@pytest.mark.parametrize("failure", ["reset", "silent"])
def test_a_reset_connection_or_a_read_timeout_is_retried(scripted, failure):
    limits = dataclasses.replace(LIMITS, read_timeout=0.3)
    result = fetch(f"{scripted.base}/s/{failure},ok", allow=LOOPBACK, limits=limits)
    assert (result.content, result.attempts) == (IMAGE, 2)


def test_a_refused_connection_is_retried_and_every_attempt_is_listed(scripted):
    url = f"{scripted.base}/x"
    scripted.shutdown()
    scripted.server_close()
    error = fetch_error(url)
    assert (error.kind, error.attempts) == ("network", 3)
    refused = f"network error with {scripted.netloc}: [Errno 111] Connection refused"
    assert str(error) == f"after 3 attempts: {refused}; {refused}; {refused}"


def test_one_attempt_allowed_makes_no_retry(scripted):
    url = f"{scripted.base}/s/503+1,ok"
    error = fetch_error(url, dataclasses.replace(LIMITS, attempts=1))
    assert (error.kind, error.status_code, error.attempts, str(error)) == (
        "http_status", 503, 1, f"HTTP 503 from {url}")
    assert len(scripted.hits("/s/503+1,ok")) == 1


def test_the_error_lists_every_attempt(scripted):
    url = f"{scripted.base}/s/503+1,reset,502"
    error = fetch_error(url)
    assert (error.kind, error.status_code, error.attempts) == ("http_status", 502, 3)
    assert str(error) == (f"after 3 attempts: HTTP 503 (Retry-After 1 s); network error with {scripted.netloc}: "
                          f"[Errno 104] Connection reset by peer; HTTP 502 from {url}")


def test_retry_after_is_waited_out_in_seconds_or_as_an_http_date(scripted):
    for path in ("/s/429+1,ok", "/s/503+date2,ok"):
        result = fetch(f"{scripted.base}{path}", allow=LOOPBACK, limits=LIMITS)
        assert result.attempts == 2
        first, second = scripted.hits(path)
        assert second - first >= 1.0  # an HTTP date counts whole seconds: 2 s ahead is at least 1 s


def test_the_deadline_cuts_a_long_retry_after_short(scripted):
    url = f"{scripted.base}/s/503+60,ok"
    started = time.monotonic()
    error = fetch_error(url, deadline=time.monotonic() + 5)
    assert time.monotonic() - started < 1
    assert (error.kind, error.status_code, error.attempts) == ("http_status", 503, 1)
    assert str(error) == f"HTTP 503 from {url}; not retried: Retry-After 60 s is past the deadline"
    assert len(scripted.hits("/s/503+60,ok")) == 1


def test_the_deadline_stops_retries_that_would_pass_it(scripted):
    url = f"{scripted.base}/s/503+1"
    started = time.monotonic()
    error = fetch_error(url, dataclasses.replace(LIMITS, attempts=5), deadline=time.monotonic() + 1.5)
    assert time.monotonic() - started < 1.5
    assert error.attempts == 2
    assert str(error) == (f"after 2 attempts: HTTP 503 (Retry-After 1 s); HTTP 503 from {url}; "
                          "not retried: Retry-After 1 s is past the deadline")


def test_an_attempt_past_its_download_deadline_is_retried_within_the_images_deadline(scripted):
    limits = dataclasses.replace(LIMITS, deadline=1)
    result = fetch(f"{scripted.base}/s/trickle,ok", allow=LOOPBACK, limits=limits, deadline=time.monotonic() + 10)
    assert (result.content, result.attempts) == (IMAGE, 2)


def test_the_images_deadline_cuts_an_attempt_short(scripted):
    started = time.monotonic()
    error = fetch_error(f"{scripted.base}/s/trickle", deadline=time.monotonic() + 1)
    assert 0.9 < time.monotonic() - started < 1.5
    assert (error.kind, str(error), error.attempts) == ("timeout", "download stopped at the image's deadline", 1)


def test_a_blocked_url_is_never_retried(scripted):
    error = fetch_error(f"{scripted.base}/s/to-blocked")
    assert (error.kind, str(error), error.attempts) == ("blocked", "blocked: 127.0.0.2 is a loopback address", 1)
    assert len(scripted.hits("/s/to-blocked")) == 1


def test_backoff_has_full_jitter_doubling_from_half_a_second_up_to_eight():
    for failed, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        waits = [download._backoff(failed) for _ in range(2000)]
        assert 0 <= min(waits) < ceiling * 0.05 and ceiling * 0.95 < max(waits) <= ceiling


def test_post_makes_one_attempt_whatever_the_status(scripted):
    result = post(f"{scripted.base}/s/503+1,ok", b"{}", {}, allow=LOOPBACK, connect_timeout=2, read_timeout=5)
    assert (result.status_code, result.retry_after) == (503, 1.0)
    assert len(scripted.hits("/s/503+1,ok")) == 1


# --------------------------------------------------------------------------------- conditional requests

def test_a_second_fetch_with_the_first_ones_validators_gets_304_and_no_body(catalog):
    server = catalog()
    first = fetch(server.url("image-0.bin"), allow=LOOPBACK, limits=LIMITS)
    assert first.etag and first.last_modified and not first.not_modified and not first.no_store

    second = fetch(server.url("image-0.bin"), allow=LOOPBACK, limits=LIMITS,
                   validators=Validators(first.etag, first.last_modified))

    assert (second.not_modified, second.status_code, second.content, second.attempts) == (True, 304, b"", 1)
    assert (second.etag, second.last_modified) == (first.etag, first.last_modified)
    asked, answered = server.served_for("image-0.bin")
    assert "if-none-match" not in asked.headers and "if-modified-since" not in asked.headers
    assert (answered.headers["if-none-match"], answered.headers["if-modified-since"]) == (
        first.etag, first.last_modified)
    assert (answered.status, answered.body_bytes) == (304, 0)


def test_only_the_validators_given_are_sent(catalog):
    server = catalog()
    first = fetch(server.url("image-0.bin"), allow=LOOPBACK, limits=LIMITS)
    by_date = fetch(server.url("image-0.bin"), allow=LOOPBACK, limits=LIMITS,
                    validators=Validators(None, first.last_modified))
    by_tag = fetch(server.url("image-0.bin"), allow=LOOPBACK, limits=LIMITS, validators=Validators(first.etag, None))
    assert by_date.not_modified and by_tag.not_modified
    _, date_only, tag_only = server.served_for("image-0.bin")
    assert "if-none-match" not in date_only.headers and "if-modified-since" in date_only.headers
    assert "if-none-match" in tag_only.headers and "if-modified-since" not in tag_only.headers


def test_a_changed_image_comes_whole_with_its_new_validators(catalog):
    server = catalog()
    first = fetch(server.url("image-0.bin"), allow=LOOPBACK, limits=LIMITS)
    (catalog.root / "image-0.bin").write_bytes(b"changed")
    second = fetch(server.url("image-0.bin"), allow=LOOPBACK, limits=LIMITS,
                   validators=Validators(first.etag, first.last_modified))
    assert (second.not_modified, second.content) == (False, b"changed")
    assert second.etag != first.etag


@pytest.mark.parametrize("cache_control, no_store", [
    ("no-store", True),
    ("private, No-Store", True),
    ("max-age=0 , NO-STORE", True),
    ("max-age=60", False),
    ('private="x, no-store"', False),  # a quoted value, not a directive
    ("no-stored", False),
])
def test_cache_control_no_store_is_read_as_a_directive(catalog, cache_control, no_store):
    server = catalog(cache_control=cache_control)
    assert fetch(server.url("image-0.bin"), allow=LOOPBACK, limits=LIMITS).no_store is no_store


def test_a_304_to_an_unconditional_request_is_an_error(scripted):
    url = f"{scripted.base}/s/304"
    error = fetch_error(url)
    assert (error.kind, error.status_code, error.attempts, str(error)) == (
        "http_status", 304, 1, f"HTTP 304 from {url}")


def test_validators_go_only_to_the_url_they_came_from(catalog):
    server = catalog()
    first = fetch(server.url("image-0.bin", "redirect"), allow=LOOPBACK, limits=LIMITS)
    assert first.url == server.url("image-0.bin")

    # For the URL asked: sent to it, dropped on the redirect to another URL, so the image comes whole.
    again = fetch(server.url("image-0.bin", "redirect"), allow=LOOPBACK, limits=LIMITS,
                  validators=Validators(first.etag, first.last_modified))
    assert (again.not_modified, again.content) == (False, (catalog.root / "image-0.bin").read_bytes())
    assert "if-none-match" in server.served_for("image-0.bin", "redirect")[1].headers
    assert "if-none-match" not in server.served_for("image-0.bin")[1].headers

    # For the URL the redirect leads to: sent there only.
    reused = fetch(server.url("image-0.bin", "redirect"), allow=LOOPBACK, limits=LIMITS,
                   validators=Validators(first.etag, first.last_modified, url=first.url))
    assert (reused.not_modified, reused.content, reused.url) == (True, b"", first.url)
    assert "if-none-match" not in server.served_for("image-0.bin", "redirect")[2].headers
    assert server.served_for("image-0.bin")[2].headers["if-none-match"] == first.etag


def test_validators_unfit_to_send_back_are_neither_kept_nor_sent(scripted):
    result = fetch(f"{scripted.base}/s/hostile-validators", allow=LOOPBACK, limits=LIMITS)
    assert (result.content, result.etag, result.last_modified) == (IMAGE, None, None)

    fetch(f"{scripted.base}/s/ok", allow=LOOPBACK, limits=LIMITS,
          validators=Validators('"a"\r\nX-Injected: 1', "Tue, 15 Nov 1994 12:45:26 GMT"))
    _, _, headers = scripted.seen[-1]
    assert "x-injected" not in headers and "if-none-match" not in headers
    assert headers["if-modified-since"] == "Tue, 15 Nov 1994 12:45:26 GMT"


def test_a_host_given_up_is_tried_again_once_its_time_is_over(monkeypatch):
    monkeypatch.setattr(host_slots, "GIVEN_UP_SECONDS", 0.3)
    hosts = HostSlots(per_host=2)
    for index in range(UNANSWERED_IN_A_ROW):
        hosts.unanswered("dead.example", f"http://dead.example/{index}.jpg")
    assert "did not answer" in hosts.refusal("dead.example")
    time.sleep(0.4)
    assert hosts.refusal("dead.example") is None
    hosts.unanswered("dead.example", "http://dead.example/again.jpg")  # its earlier failures are forgotten
    assert hosts.refusal("dead.example") is None
