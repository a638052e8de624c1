"""`imgpipe api` against slow clients, as deployed: a real `imgpipe api` process on loopback, sockets opened to it
from here. A connection whose request headers never end is closed within IMGPIPE_API_HEADER_TIMEOUT of opening
(or of a later request's first byte), an idle kept-alive one after IMGPIPE_API_KEEPALIVE_TIMEOUT, and past
IMGPIPE_API_MAX_CONNECTIONS the connection that has waited longest for its request goes first, so `/healthz` and
authorised calls keep answering however many connections a client leaves open."""
from __future__ import annotations

import contextlib
import os
import resource
import selectors
import socket
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from imgpipe.api.server import RESERVED_FILES
from imgpipe.settings import Settings
from imgpipe_tests.api_processes import api_process

TOKEN = "slow-client-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# A request whose headers never end: the blank line never comes.
HALF_OPEN = b"GET /requests/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never-Ends: "


def raise_file_limit(needed: int) -> None:
    """The soft RLIMIT_NOFILE of this process (and so of the API it starts) up to `needed`, within the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"the test needs {needed} open files; the hard limit is {hard}", pytrace=False)
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@contextlib.contextmanager
def running_api(tmp_path: Path, file_limit: int | None = None, **env: str):
    """`imgpipe api` over a fresh home with the token set and `env` (IMGPIPE_* overrides); yields (URL, pid)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMGPIPE_API_")}
    base.pop("IMGPIPE_PUBLIC_BASE_URL", None)
    with api_process({**base, "IMGPIPE_HOME": str(tmp_path / "home"), "IMGPIPE_API_TOKEN": TOKEN, **env},
                     tmp_path / "api.log", file_limit=file_limit) as (url, pid):
        yield url, pid


def open_half(url: str, count: int, payload: bytes = HALF_OPEN) -> list[tuple[socket.socket, float]]:
    """`count` connections, each sending `payload` and nothing more; (socket, when it was opened)."""
    parts = urlsplit(url)
    opened = []
    for _ in range(count):
        sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        sock.sendall(payload)
        sock.setblocking(False)
        opened.append((sock, time.monotonic()))
    return opened


def wait_closed(opened: list[tuple[socket.socket, float]], within: float) -> tuple[list[float], int, list[bytes]]:
    """Reads every socket until the server closes it or `within` seconds have passed: how long each closed one
    stayed open, how many are still open, and what the server sent on each it closed (usually nothing)."""
    selector = selectors.DefaultSelector()
    for sock, at in opened:
        selector.register(sock, selectors.EVENT_READ, [at, b""])
    lasted, answers = [], []
    deadline = time.monotonic() + within
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            sock, state = key.fileobj, key.data
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if data:
                state[1] += data
                continue
            lasted.append(time.monotonic() - state[0])
            answers.append(state[1])
            selector.unregister(sock)
            sock.close()
    still_open = len(selector.get_map())
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    selector.close()
    return lasted, still_open, answers


class Prober:
    """GET /healthz and an authorised call, each on a new connection, every `interval` seconds in a thread:
    (seconds, status) of each; a connection refused or timed out is status 0."""

    def __init__(self, url: str, interval: float = 0.25):
        self.url, self.interval = url, interval
        self.health: list[tuple[float, int]] = []
        self.authorised: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.health.append(self._get("/healthz", {}))
            self.authorised.append(self._get("/requests/unknown", AUTH))
            self._stop.wait(self.interval)

    def _get(self, path: str, headers: dict) -> tuple[float, int]:
        start = time.monotonic()
        try:
            # A new connection each time (no keep-alive): every probe has to get in past the slow ones.
            answer = requests.get(f"{self.url}{path}", headers={**headers, "Connection": "close"}, timeout=5)
            status = answer.status_code
        except requests.RequestException:
            status = 0
        return time.monotonic() - start, status



def ask_health(connection: socket.socket) -> float:
    """GET /healthz on a kept-alive connection, read to its end; when its answer was in."""
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status":"ok"}'):
        answer += connection.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200 ")
    return time.monotonic()

def test_2000_half_open_connections_are_closed_within_30_s_and_healthz_answers_throughout(tmp_path):
    raise_file_limit(4096)
    with running_api(tmp_path) as (url, _), Prober(url) as prober:
        started = time.monotonic()
        opened = open_half(url, 2000)
        print(f"\n2000 connections opened in {time.monotonic() - started:.2f} s")
        lasted, still_open, _ = wait_closed(opened, within=40)
        time.sleep(1)  # a last probe or two with every slow connection gone

    assert still_open == 0, f"{still_open} of 2000 connections still open 40 s after the last was opened"
    print(f"open for: min {min(lasted):.1f} s, median {statistics.median(lasted):.1f} s, max {max(lasted):.1f} s")
    assert max(lasted) <= 30
    for name, probes in (("/healthz", prober.health), ("GET /requests/unknown with the token", prober.authorised)):
        latencies = sorted(seconds for seconds, _ in probes)
        print(f"{name}: {len(probes)} calls, median {statistics.median(latencies) * 1000:.0f} ms, "
              f"max {latencies[-1] * 1000:.0f} ms")
        # Every call answered (within the prober's 5 s), all along: a probe every 0.25 s plus its own time.
        assert len(probes) >= 10
        expected = 200 if name == "/healthz" else 404
        assert [status for _, status in probes if status != expected] == [], (name, probes)


def test_a_slow_or_idle_client_is_closed_by_the_header_and_keep_alive_timeouts(tmp_path):
    with running_api(tmp_path, IMGPIPE_API_HEADER_TIMEOUT="2", IMGPIPE_API_KEEPALIVE_TIMEOUT="1") as (url, _):
        parts = urlsplit(url)
        # Headers that trickle in, a byte a second: the deadline counts from the opening, not from the last byte.
        trickle = socket.create_connection((parts.hostname, parts.port), timeout=10)
        opened = time.monotonic()
        closed_after = None
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20:
            try:
                trickle.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - opened
                break
            time.sleep(0.5)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := trickle.recv(4096):
                answer += chunk
        closed_after = closed_after or time.monotonic() - opened
        trickle.close()
        assert closed_after < 5, closed_after
        assert answer.startswith(b"HTTP/1.1 408 "), answer

        # A kept-alive connection: its first request answered, then idle: closed after the keep-alive timeout.
        idle = socket.create_connection((parts.hostname, parts.port), timeout=10)
        answered = ask_health(idle)
        idle.settimeout(10)
        assert idle.recv(4096) == b""
        assert time.monotonic() - answered < 3
        idle.close()

        # Kept alive, then the start of a second request that never ends: the header deadline again, counted
        # from that request's first byte (which stops the keep-alive timer).
        again = socket.create_connection((parts.hostname, parts.port), timeout=10)
        answered = ask_health(again)
        again.sendall(b"GET /healthz HTTP/1.1\r\n")
        again.settimeout(10)
        rest = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := again.recv(4096):
                rest += chunk
        assert 1.5 < time.monotonic() - answered < 5
        assert rest.startswith(b"HTTP/1.1 408 "), rest
        again.close()


def test_a_kept_alive_connection_idles_for_its_keep_alive_timeout_even_past_the_header_timeout(tmp_path):
    with running_api(tmp_path, IMGPIPE_API_HEADER_TIMEOUT="1", IMGPIPE_API_KEEPALIVE_TIMEOUT="4") as (url, _):
        parts = urlsplit(url)
        idle = socket.create_connection((parts.hostname, parts.port), timeout=10)
        for _ in range(2):  # two requests, the second after 2.5 s of idling
            answered = ask_health(idle)
            time.sleep(2.5)
        assert idle.recv(4096) == b""
        assert 3.5 < time.monotonic() - answered < 6
        idle.close()


def test_past_the_connection_bound_the_longest_waiting_connection_goes_first(tmp_path):
    with running_api(tmp_path, IMGPIPE_API_MAX_CONNECTIONS="50", IMGPIPE_API_HEADER_TIMEOUT="60") as (url, _):
        first = open_half(url, 50)
        time.sleep(0.5)
        later = open_half(url, 150)
        # /healthz gets in: the connection that has waited longest makes room.
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{url}/requests/unknown", headers=AUTH, timeout=5).status_code == 404
        # Well before the header timeout: all of the first 50 are gone, closed without a word, and of the later
        # ones no more than the bound (less the one that made room for /healthz) are open.
        _, still_open, answers = wait_closed(first, within=3)
        assert still_open == 0 and answers == [b""] * 50
        _, still_open, answers = wait_closed(later, within=1)
        assert still_open <= 49 and answers == [b""] * (150 - still_open)


def test_request_headers_over_64_kib_are_refused_with_431(tmp_path):
    with running_api(tmp_path) as (url, _):
        parts = urlsplit(url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            while sent < 4 * 1024 * 1024:  # 4 MiB of headers that never end
                sock.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
                sent += 1012
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                answer += chunk
        sock.close()
        # 431 (a header timeout would be a 408): refused once past the bound, not read to the end.
        assert answer.startswith(b"HTTP/1.1 431 "), (sent, answer[:200])
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200


def test_an_api_started_under_a_low_file_limit_raises_it_to_hold_its_connections(tmp_path):
    """systemd starts services with a soft limit of 1024 open files: below the default bound plus what the API
    needs besides. The API raises its soft limit (up to the hard one) at start."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit ({hard}) leaves no room to raise")
    with running_api(tmp_path, file_limit=512) as (url, pid):
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert int(line.split()[3]) >= Settings.model_fields["api_max_connections"].default + RESERVED_FILES, line
