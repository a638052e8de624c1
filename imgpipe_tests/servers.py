"""Real servers on 127.0.0.1 for the tests (images with misbehaviours, a webhook receiver), and what the tests
that start imgpipe's own processes share: a free port, a product CSV, an isolated home."""
from __future__ import annotations

import csv
import email.utils
import hashlib
import http.server
import io
import os
import shutil
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 (connections kept open, as real servers do), and no access log on the test's output."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


class LocalServer:
    """A threading HTTP server on `host`, port chosen by the system, served from a daemon thread; `close` ends it."""

    def _serve(self, handler: type, host: str = "127.0.0.1", poll_interval: float = 0.5) -> None:
        self.httpd = http.server.ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://{host}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": poll_interval},
                         daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ImageServer(LocalServer):
    """/img/<name> serves a file from root; /status/<code> answers that code; /flaky/<n>/<name> answers 500
    to the first n hits; /slow/<seconds>/<name> pauses first; /redirect?to=<url> answers 302;
    /rawstatus/<code> writes the raw status line `HTTP/1.1 <code> bad<NUL><ESC>[31mred`, a header holding a NUL
    and an ANSI escape, and a Location (followed when <code> is a redirect) whose path holds them too; <code> is
    written as given, so it need not be a number. Counts hits per path."""

    def __init__(self, root: Path, host: str = "127.0.0.1"):
        self.root = Path(root)
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                with server.lock:
                    server.hits[url.path] = server.hits.get(url.path, 0) + 1
                    count = server.hits[url.path]
                parts = url.path.strip("/").split("/")
                if parts[0] == "rawstatus":
                    return self._send_raw(parts[1].encode())
                if parts[0] == "status":
                    return self._send(int(parts[1]), b"no image here", "text/plain")
                if parts[0] == "redirect":
                    self.send_response(302)
                    self.send_header("Location", urllib.parse.parse_qs(url.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if parts[0] == "flaky":
                    if count <= int(parts[1]):
                        return self._send(500, b"try later", "text/plain")
                    parts = ["img", *parts[2:]]
                if parts[0] == "slow":  # /slow/<seconds>/<name>: serve the file after a pause
                    time.sleep(float(parts[1]))
                    parts = ["img", *parts[2:]]
                if parts[0] == "img":
                    path = (server.root / "/".join(parts[1:])).resolve()
                    if server.root.resolve() in path.parents and path.is_file():
                        return self._send(200, path.read_bytes(), "application/octet-stream")
                return self._send(404, b"not found", "text/plain")

            def _send_raw(self, code: bytes):
                # Raw bytes: send_response would write a status line of its own, from a number.
                self.wfile.write(b"HTTP/1.1 " + code + b" bad\x00\x1b[31mred\x1b[0m\r\n"
                                 b"X-Hostile: \x00\x1b[2J\x1b[H\r\n"
                                 b"Location: /missing/\x00\x1b[31mred\r\n"
                                 b"Content-Length: 0\r\n\r\n")

            def _send(self, code, body, content_type):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._serve(Handler, host)

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def hits_for(self, path: str) -> int:
        with self.lock:
            return self.hits.get("/" + path.lstrip("/"), 0)


@dataclass
class Served:
    """One request a CatalogServer answered."""

    path: str
    at: float  # time.monotonic() when it arrived
    headers: dict  # the request's, names in lower case
    status: int = 0
    body_bytes: int = 0  # of the answer


class CatalogServer(LocalServer):
    """A shop's image host, as CDNs are: /img/<name> serves the file `name` under root, /redirect/<name> answers
    302 to /img/<name>.

    - validators (default on): an ETag (a hash of the bytes) and Last-Modified (the file's time); a matching
      If-None-Match, or without one an If-Modified-Since not before the file's time, is answered 304, no body;
    - cache_control: sent as Cache-Control when set;
    - throttle: each path's first request is answered 429 with `Retry-After: <retry_after>`;
    - delay: seconds each answer takes, so that concurrent downloads overlap.

    Records every request in `served` and, per server (one host:port), the peak of connections open at once in
    `peak`. A connection counts from its accept until its answer is about to be written: a client can only be
    done with it after that, so `peak` never counts a connection the client has let go.
    Every answer closes its connection.
    """

    def __init__(self, root: Path, *, validators: bool = True, cache_control: str | None = None,
                 throttle: bool = False, retry_after: str = "1", delay: float = 0.0):
        self.root = Path(root)
        self.validators, self.cache_control = validators, cache_control
        self.throttle, self.retry_after, self.delay = throttle, retry_after, delay
        self.served: list[Served] = []
        self.open = self.peak = 0
        self.lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def setup(self):
                super().setup()
                self.counted = True
                with server.lock:
                    server.open += 1
                    server.peak = max(server.peak, server.open)

            def finish(self):
                self.uncount()  # a connection closed without an answer
                super().finish()

            def uncount(self):
                with server.lock:
                    if self.counted:
                        server.open -= 1
                        self.counted = False

            def do_GET(self):
                record = Served(self.path, time.monotonic(), {k.lower(): v for k, v in self.headers.items()})
                with server.lock:
                    first = not any(seen.path == self.path for seen in server.served)
                    server.served.append(record)
                time.sleep(server.delay)
                kind, _, name = self.path.lstrip("/").partition("/")
                path = (server.root / name).resolve()
                if kind == "redirect":
                    return self.answer(record, 302, b"", {"Location": f"/img/{name}"})
                if kind != "img" or server.root.resolve() not in path.parents or not path.is_file():
                    return self.answer(record, 404, b"not found", {})
                if server.throttle and first:
                    return self.answer(record, 429, b"slow down", {"Retry-After": server.retry_after})
                body = path.read_bytes()
                headers = {"Content-Type": "application/octet-stream"}
                if server.cache_control:
                    headers["Cache-Control"] = server.cache_control
                if server.validators:
                    mtime = int(path.stat().st_mtime)
                    headers["ETag"] = f'"{hashlib.sha256(body).hexdigest()[:20]}"'
                    headers["Last-Modified"] = email.utils.formatdate(mtime, usegmt=True)
                    if self.unchanged(headers["ETag"], mtime):
                        return self.answer(record, 304, b"", headers)
                return self.answer(record, 200, body, headers)

            def unchanged(self, etag: str, mtime: int) -> bool:
                # RFC 9110 13.2.2: If-None-Match, when present, decides alone.
                if_none_match = self.headers.get("If-None-Match")
                if if_none_match is not None:
                    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
                    return "*" in tags or etag in tags
                try:
                    since = email.utils.parsedate_to_datetime(self.headers.get("If-Modified-Since", ""))
                except (TypeError, ValueError):
                    return False
                return since.timestamp() >= mtime

            def answer(self, record: Served, status: int, body: bytes, headers: dict):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if status != 304:
                    self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                record.status, record.body_bytes = status, len(body)
                self.uncount()  # before anything is written: headers alone may end the exchange
                try:
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._serve(Handler, poll_interval=0.05)

    def url(self, name: str, kind: str = "img") -> str:
        return f"{self.base}/{kind}/{name}"

    def served_for(self, name: str, kind: str = "img") -> list[Served]:
        with self.lock:
            return [seen for seen in self.served if seen.path == f"/{kind}/{name}"]



class WebhookReceiver(LocalServer):
    """Records every POST; answers from a list of replies (a status code, or a status code with extra
    headers), then 200."""

    def __init__(self, codes=()):
        self.replies = [reply if isinstance(reply, tuple) else (reply, {}) for reply in codes]
        self.calls: list[dict] = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code, headers = receiver.replies.pop(0) if receiver.replies else (200, {})
                receiver.calls.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                       "body": body, "code": code, "at": time.time()})
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._serve(Handler)

    def url(self, name: str = "hook") -> str:
        return f"{self.base}/{name}"

    def calls_to(self, name: str) -> list[dict]:
        return [c for c in self.calls if c["path"] == f"/{name}"]



def wait_for(predicate, timeout: float = 30.0, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drop_into_inbox(home: Path, name: str, text: str) -> None:
    """As the contract asks a user to: written under a hidden name, then renamed in."""
    inbox = home / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / f".{name}.tmp").write_text(text)
    os.replace(inbox / f".{name}.tmp", inbox / name)


def product_csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    writer.writerows([i, f"Item {i}", ", ".join(urls)] for i, urls in enumerate(rows, 1))
    return out.getvalue()


@dataclass
class IsolatedHome:
    """An IMGPIPE_HOME and a DAGSTER_HOME (holding the project's dagster.yaml) of their own, and the environment
    for processes started over them: conftest.py's IMGPIPE_* settings are for this process, not for those."""

    home: Path
    dagster_home: Path
    env: dict

    @classmethod
    def create(cls, root: Path, public_base_url: str,
               dagster_yaml: Path = REPO / "imgpipe" / "package_data" / "dagster.yaml") -> "IsolatedHome":
        dagster_home = root / "dagster_home"
        dagster_home.mkdir(parents=True)
        shutil.copy(dagster_yaml, dagster_home / "dagster.yaml")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGPIPE_", "DAGSTER_"))}
        env.update({
            "IMGPIPE_HOME": str(root / "home"), "DAGSTER_HOME": str(dagster_home),
            "IMGPIPE_PUBLIC_BASE_URL": public_base_url, "IMGPIPE_ALLOW_PRIVATE_HOSTS": "127.0.0.1",
            "IMGPIPE_SENSOR_INTERVAL": "1", "IMGPIPE_WEBHOOK_SECRET": os.environ["IMGPIPE_WEBHOOK_SECRET"],
        })
        return cls(root / "home", dagster_home, env)
