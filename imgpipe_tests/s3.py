"""An S3-compatible server for tests: moto's, in a thread, on 127.0.0.1 and a free port."""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator

import boto3
import requests
from moto.server import ThreadedMotoServer

from imgpipe_tests.servers import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
# Variables that would point boto3 elsewhere (a profile, a session token, real credentials' files).
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3")


@contextlib.contextmanager
def moto_server(bucket: str | None = None) -> Iterator[dict[str, str]]:
    """Start the server, create `bucket` (a fresh name by default) and set the AWS_* variables, with
    AWS_ENDPOINT_URL, for as long as the block runs. Yields those variables plus IMGPIPE_STORAGE_URL
    (`s3://<bucket>/imgpipe`) and S3_BUCKET."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per call otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = bucket or f"imgpipe-test-{secrets.token_hex(4)}"
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    saved = {name: os.environ.get(name) for name in (*env, *_CLEARED)}
    try:
        for name in _CLEARED:
            os.environ.pop(name, None)
        os.environ.update(env)
        boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
        yield {**env, "S3_BUCKET": bucket, "IMGPIPE_STORAGE_URL": f"s3://{bucket}/imgpipe"}
    finally:
        with contextlib.suppress(requests.RequestException):
            requests.post(f"{endpoint}/moto-api/reset", timeout=5)  # moto keeps its state per process
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
