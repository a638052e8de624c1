"""Session-wide settings for tests that run the pipeline.

Step processes start from a forkserver that inherits the environment of the moment it starts, and the code
location reads its settings once per process, when first loaded; so the environment is fixed here, before
anything is imported or started, and every pipeline test shares one IMGPIPE_HOME (requests are isolated by their
IDs).
"""
from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import uvicorn

from imgpipe.settings import Settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe_tests.servers import ImageServer, WebhookReceiver

PIPELINE_HOME = Path(tempfile.mkdtemp(prefix="imgpipe-test-home-"))
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"imgpipe-test-secret-0123456789ab").decode()

os.environ.update({
    "IMGPIPE_HOME": str(PIPELINE_HOME),
    "IMGPIPE_PUBLIC_BASE_URL": "http://127.0.0.1:8000",
    "IMGPIPE_ALLOW_PRIVATE_HOSTS": "127.0.0.1",
    "IMGPIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "IMGPIPE_WEBHOOK_RETRY_DELAYS": "0.5,1,2,4",
    "IMGPIPE_SENSOR_INTERVAL": "1",
    # execute_job runs here exercise the multiprocess executor; the daemon tests run the default, in-process.
    "IMGPIPE_EXECUTOR": "multiprocess",
})
for name in ("IMGPIPE_API_TOKEN", "IMGPIPE_WEBHOOK_URL", "IMGPIPE_PROFILE"):
    os.environ.pop(name, None)


def pytest_configure(config):
    # A shell's background job (`make test`'s restart pytest) starts with SIGINT ignored: let Ctrl-C stop it.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(PIPELINE_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("served-images")


@pytest.fixture(scope="session")
def image_server(image_root):
    server = ImageServer(image_root)
    yield server
    server.close()


@pytest.fixture
def webhook_receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def api_server(tmp_path):
    """Start the REST API on a free port, in a thread, over an IMGPIPE_HOME of its own; extra IMGPIPE_* variables
    as keyword arguments. Returns `.url`, `.settings` and `.store`."""
    from imgpipe.api.app import create_app  # the API's own imports only where it is served

    running = []

    def start(**env: str) -> SimpleNamespace:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # bound before the server starts, so no other process can take the port
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings.from_env({"IMGPIPE_HOME": str(tmp_path / f"home{len(running)}"),
                                      "IMGPIPE_PUBLIC_BASE_URL": url, **env})
        settings.ensure_folders()  # as the daemon beside it would have (the API itself writes only the store)
        server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, sock))
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
            time.sleep(0.01)
        return SimpleNamespace(url=url, settings=settings, store=DuckDBStatusStore(settings.db_path))

    yield start
    for server, thread, sock in running:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def s3_storage_env():
    """moto's S3 server on a free port with a fresh bucket, the AWS_* variables (AWS_ENDPOINT_URL pointing at
    it) set while the module's tests run; yields them with S3_BUCKET and IMGPIPE_STORAGE_URL."""
    from imgpipe_tests.s3 import moto_server

    with moto_server() as env:
        yield env


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database on 127.0.0.1:5432 (user postgres), dropped after the test; fails (never
    skips) when the server is not running, saying how to start it."""
    from contextlib import ExitStack

    from imgpipe_tests.postgres import PostgresUnavailable, fresh_database

    with ExitStack() as stack:
        try:
            url = stack.enter_context(fresh_database())
        except PostgresUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield url


@pytest.fixture(params=["embedded", "distributed"])
def backends(request, tmp_path):
    """The `Backends` of one profile, public base URL http://127.0.0.1:8000; the distributed one over PostgreSQL
    and moto's S3 server."""
    from imgpipe.backends import open_backends

    settings = Settings(home=tmp_path / "home", public_base_url="http://127.0.0.1:8000",
                        allow_private_hosts="127.0.0.1")
    if request.param == "distributed":
        s3 = request.getfixturevalue("s3_storage_env")
        settings = settings.model_copy(update={
            "profile": "distributed", "database_url": request.getfixturevalue("postgres_url"),
            "storage_url": f"s3://{s3['S3_BUCKET']}/t-{secrets.token_hex(4)}", "broker_url": "redis://127.0.0.1",
            "webhook_secret": "whsec_c2VjcmV0"})
    return open_backends(settings)


@pytest.fixture(params=["duckdb", "postgres"])
def store_factory(request, tmp_path):
    """A picklable callable (keyword `lock_timeout` optional) opening the same status store, for this process and
    for spawned ones, once on each backend; `.backend` and `.target` (the file or URL) say which."""
    import functools

    from imgpipe.status.postgres_store import PostgresStatusStore

    if request.param == "duckdb":
        target = str(tmp_path / "s.duckdb")
        factory = functools.partial(DuckDBStatusStore, target)
    else:
        target = request.getfixturevalue("postgres_url")
        factory = functools.partial(PostgresStatusStore, target)
    factory.backend, factory.target = request.param, target  # partial objects take attributes
    return factory


@pytest.fixture
def store(store_factory):
    """An empty status store, once on each backend."""
    return store_factory()
