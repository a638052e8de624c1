"""Connection pools aimed at the address a URL's check approved, every socket under its call's deadline."""
from __future__ import annotations

import socket

import certifi
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from imgpipe.net.deadline import thread_call
from imgpipe.net.url_safety import CheckedTarget

CA_BUNDLE = certifi.where()


class _WatchedConnection:
    """Puts each new socket under the deadline of the call that opens it."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        thread_call.deadline.watch(sock)
        return sock


class _WatchedHTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _WatchedPool:
    """Puts a kept-alive connection under the deadline of the call that takes it up again."""

    def _get_conn(self, timeout: float | None = None):
        connection = super()._get_conn(timeout)
        if connection.sock is not None:
            thread_call.deadline.watch(connection.sock)
        return connection


class _HTTPPool(_WatchedPool, HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(_WatchedPool, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def pool_for(target: CheckedTarget, kept: int = 1) -> HTTPConnectionPool:
    """A connection pool aimed at the checked address of one hop, keeping up to `kept` connections open for the
    next call."""
    ip = str(target.ip)
    if target.scheme == "https":
        # SNI and the certificate check use the host name; only the socket uses the checked address. Trusted: the
        # Mozilla roots certifi ships (what requests trusts), the same on every machine.
        return _HTTPSPool(ip, target.port, maxsize=kept, server_hostname=target.host, cert_reqs="CERT_REQUIRED",
                          ca_certs=CA_BUNDLE)
    return _HTTPPool(ip, target.port, maxsize=kept)
