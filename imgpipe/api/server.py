"""How `imgpipe api` serves the app: uvicorn, with what it lacks against slow clients.

uvicorn (0.30 to 0.55 at least) times a connection out only once it has had an answer (`timeout_keep_alive`
starts in `on_response_complete`, and stops at the next byte received): a connection that never finishes its
first request's headers, or that sends one byte of a second request, stays open for good, and 20,000 of them
exhaust the process's open files. Its `limit_concurrency` counts those connections too and then answers 503 to
everyone, `/healthz` included, so it is no defence. So each connection here gets:

- a header deadline (IMGPIPE_API_HEADER_TIMEOUT): a request's headers must be complete that many seconds after
  the connection opened (the first request) or after the request's first byte (a later one), however slowly
  they trickle; else the connection is closed (with a 408 when part of a request had come);
- the keep-alive timeout (IMGPIPE_API_KEEPALIVE_TIMEOUT, uvicorn's `timeout_keep_alive`) for a connection idle
  after an answer, until the next request's first byte;
- a bound on request headers (64 KiB, as h11's and most servers' are of that order; httptools has none): past
  it, 431 and closed;
- a bound on open connections (IMGPIPE_API_MAX_CONNECTIONS): past it, the connection that has waited longest for
  a request (idle, or its headers still incomplete) is closed to make room, so a new client's request, which
  completes in milliseconds, always gets in, and slow clients push out each other, not the others. Connections
  whose request is being answered are never closed for room. The process's soft limit of open files is raised
  to hold the bound (up to the hard limit; when even that is short, the bound is lowered to fit and a warning
  says so).

Whatever closes a connection here is counted and logged as one warning a minute at most, never a line per
connection. Works over uvicorn's httptools and h11 protocols alike (the one uvicorn would pick).
"""
from __future__ import annotations

import asyncio
import logging
import resource
import time

from imgpipe.settings import Settings

log = logging.getLogger("imgpipe.api")

MAX_HEAD_BYTES = 64 * 1024
# Open files the API needs besides its connections: the listening socket, the status store, the storage's and
# the database's connection pools, logs, the thread pool's work.
RESERVED_FILES = 128
LOG_EVERY = 60.0


def _answer(status: str, message: str) -> bytes:
    body = message.encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class ConnectionGuard:
    """The deadlines and the bound, shared by every connection of one server."""

    def __init__(self, header_timeout: float, max_connections: int):
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        # Connections waiting for a request's headers (idle ones included), the longest-waiting first.
        self.waiting: dict[GuardedConnection, None] = {}
        self.open: set[GuardedConnection] = set()
        self.closed = {"header timeout": 0, "headers too large": 0, "room for newer": 0}
        self._logged_at = float("-inf")

    def opened(self, connection: GuardedConnection) -> None:
        self.open.add(connection)
        self.waiting[connection] = None
        while len(self.open) > self.max_connections and self.waiting:
            oldest = next(iter(self.waiting))  # the new connection itself when every other one is busy
            self.drop(oldest, "room for newer")

    def waits(self, connection: GuardedConnection) -> None:
        self.waiting.pop(connection, None)
        self.waiting[connection] = None  # newest: it has just been answered

    def busy(self, connection: GuardedConnection) -> None:
        self.waiting.pop(connection, None)

    def gone(self, connection: GuardedConnection) -> None:
        self.open.discard(connection)
        self.waiting.pop(connection, None)

    def drop(self, connection: GuardedConnection, reason: str, answer: bytes = b"") -> None:
        self.gone(connection)
        connection.close(answer)
        self.closed[reason] += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.warning("closed slow or idle connections (so far: %s); %d open, at most %d, header timeout %g s",
                        ", ".join(f"{count} {why}" for why, count in self.closed.items() if count),
                        len(self.open), self.max_connections, self.header_timeout)


class GuardedConnection:
    """Mixed in before uvicorn's HTTP protocol class (see `guarded_protocol`)."""

    guard: ConnectionGuard  # set on the class `guarded_protocol` makes

    def connection_made(self, transport) -> None:
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        super().connection_made(transport)
        self._start_header_timer()  # the first request: from the opening, a byte sent or not
        self.guard.opened(self)

    def data_received(self, data: bytes) -> None:
        waiting = not self._in_request()
        if waiting and self._header_timer is None:
            self._start_header_timer()  # a later request: from its first byte (idle until then: keep-alive)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_request():
            self._head_bytes = 0
            self._stop_header_timer()
            self.guard.busy(self)
        elif waiting:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.guard.drop(self, "headers too large", _answer(
                    "431 Request Header Fields Too Large", f"request headers are over {MAX_HEAD_BYTES} bytes"))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self._in_request():
            self._stop_header_timer()
            self._head_bytes = 0
            self.guard.waits(self)

    def connection_lost(self, exc) -> None:
        self._stop_header_timer()
        self.guard.gone(self)
        super().connection_lost(exc)

    def close(self, answer: bytes) -> None:
        self._stop_header_timer()
        if self.transport.is_closing():
            return
        if answer:
            self.transport.write(answer)
        self.transport.close()

    def _in_request(self) -> bool:
        """A request whose headers have come is being answered (uvicorn's `cycle`)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        self._head_bytes = 0
        self._header_timer = self.loop.call_later(self.guard.header_timeout, self._header_timeout)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self._in_request():
            return
        # A 408 to a client that has started a request; one that sent nothing (a browser's preconnect) is just
        # closed, as the keep-alive timeout closes an idle one.
        answer = _answer("408 Request Timeout", f"the request's headers did not come within "
                                                f"{self.guard.header_timeout:g} s") if self._head_bytes else b""
        self.guard.drop(self, "header timeout", answer)


def guarded_protocol(guard: ConnectionGuard) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (httptools when installed, else h11: what its `auto` picks) with `guard`."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type(f"Guarded{base.__name__}", (GuardedConnection, base), {"guard": guard})


def file_limit_for(connections: int) -> int:
    """Raises this process's soft limit of open files towards what `connections` need (up to the hard limit);
    returns how many connections it holds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft == resource.RLIM_INFINITY:
        return connections
    return max(1, min(connections, soft - RESERVED_FILES))


def serve(app, settings: Settings, host: str, port: int, log_config: dict) -> bool:
    """Serves `app` on host:port under the settings' connection bound and timeouts, until stopped; False when it
    could not start (the port taken, say), as `uvicorn.run` tells."""
    import uvicorn

    connections = file_limit_for(settings.api_max_connections)
    guard = ConnectionGuard(settings.api_header_timeout, connections)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", log_config=log_config,
                            http=guarded_protocol(guard), ws="none",
                            timeout_keep_alive=settings.api_keepalive_timeout,
                            backlog=max(2048, min(connections, 65535)))
    if connections < settings.api_max_connections:
        log.warning("the open-file limit holds %d connections, fewer than IMGPIPE_API_MAX_CONNECTIONS=%d; raise "
                    "the limit (ulimit -n, LimitNOFILE= in systemd) to hold them all", connections,
                    settings.api_max_connections)
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return server.started
