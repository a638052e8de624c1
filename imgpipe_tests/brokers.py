"""Celery brokers of their own for the distributed tests, on this machine's Redis and RabbitMQ.

Redis: a database of its own (1-15), emptied before and after. RabbitMQ: a virtual host of its own where
`rabbitmqctl` may create one (root), removed afterwards with its queues; otherwise the default virtual host,
its `dagster` queue purged before and after. A broker that does not answer skips the test, or fails it as root
(`imgpipe_tests/services.py`).
"""
from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import redis
from kombu import Connection

from imgpipe_tests.services import RABBITMQ, REDIS, unavailable

REDIS_URL = "redis://127.0.0.1:6379"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672"
KINDS = ("redis", "amqp")


@contextlib.contextmanager
def broker(kind: str) -> Iterator[str]:
    """The URL of a fresh broker of `kind` (`redis` or `amqp`) for as long as the block runs."""
    with (redis_broker() if kind == "redis" else rabbitmq_broker()) as url:
        yield url


@contextlib.contextmanager
def redis_broker() -> Iterator[str]:
    db = random.randrange(1, 16)
    client = redis.Redis.from_url(f"{REDIS_URL}/{db}", socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        unavailable(REDIS, str(exc))
    try:
        yield f"{REDIS_URL}/{db}"
    finally:
        client.flushdb()


@contextlib.contextmanager
def rabbitmq_broker() -> Iterator[str]:
    try:
        with Connection(f"{RABBITMQ_URL}//", connect_timeout=5) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:  # kombu wraps the socket's error in its own
        unavailable(RABBITMQ, str(exc))
    vhost = f"imgpipe-test-{uuid.uuid4().hex[:8]}"
    if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"):
        try:
            yield f"{RABBITMQ_URL}/{vhost}"
        finally:
            _rabbitmqctl("delete_vhost", vhost)
        return
    _purge(f"{RABBITMQ_URL}//")
    try:
        yield f"{RABBITMQ_URL}//"
    finally:
        _purge(f"{RABBITMQ_URL}//")


def _rabbitmqctl(*args: str) -> bool:
    if not shutil.which("rabbitmqctl"):
        return False
    try:
        done = subprocess.run(["rabbitmqctl", "-q", *args], check=False, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _purge(url: str) -> None:
    with Connection(url, connect_timeout=5) as connection, contextlib.suppress(Exception):
        connection.default_channel.queue_purge("dagster")
