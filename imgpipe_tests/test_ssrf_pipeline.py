"""SSRF through the real pipeline: a canary on 127.0.0.2 hears nothing, whatever spelling of its address the job
is handed, directly or through a redirect.

conftest allows 127.0.0.1 (IMGPIPE_ALLOW_PRIVATE_HOSTS), so the image server there is the allowed server;
127.0.0.2 is loopback as well but not allowed, so each of these URLs must be refused before any connection.
"""
from __future__ import annotations

import csv
import io
import ipaddress
import socket
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster import execute_job, instance_for_test, reconstructable

from imgpipe.backends import Backends, open_storage
from imgpipe.webhooks.delivery import deliver
from imgpipe_tests.pipeline import resolved_process_request_job, submit as submit_csv
from imgpipe.settings import Settings, load_settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe_tests.images import save_jpeg
from imgpipe_tests.servers import WebhookReceiver

CANARY = ipaddress.IPv4Address("127.0.0.2")
# How a URL can name the canary: what inet_aton accepts, and IPv6 addresses that carry it in their low bits.
SPELLINGS = {
    "dotted": "127.0.0.2",
    "decimal": "2130706434",
    "hex": "0x7f000002",
    "octal": "0177.0.0.2",
    "short": "127.2",
    "hex-short": "0x7f.2",
    "ipv4-mapped-ipv6": "[::ffff:127.0.0.2]",
    "6to4": "[2002:7f00:2::]",
    "nat64": "[64:ff9b::7f00:2]",
}


class Canary(ThreadingHTTPServer):
    """Counts every connection it accepts, whether or not a request follows."""

    daemon_threads = True
    block_on_close = False

    def __init__(self):
        super().__init__((str(CANARY), 0), BaseHTTPRequestHandler)
        self.connections = 0

    def verify_request(self, request, client_address) -> bool:
        self.connections += 1
        return True

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.server_address[1]}/{path}"


@pytest.fixture(scope="module")
def canary():
    server = Canary()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def ipv4_named_by(host: str) -> ipaddress.IPv4Address:
    if host.startswith("["):
        ip = ipaddress.IPv6Address(host.strip("[]"))
        return ip.ipv4_mapped or ip.sixtofour or ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return ipaddress.IPv4Address(socket.inet_aton(host))


def submit(settings: Settings, urls: list[str], webhook_url: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    writer.writerows([serial, f"Product {serial}", url] for serial, url in enumerate(urls, 1))
    return submit_csv(settings, out.getvalue(), f"ssrf-{uuid.uuid4().hex[:8]}.csv", webhook_url=webhook_url)


def test_every_spelling_names_the_canary():
    assert {name: ipv4_named_by(host) for name, host in SPELLINGS.items()} == dict.fromkeys(SPELLINGS, CANARY)


def test_pipeline_never_reaches_the_canary(image_server, image_root, canary):
    settings = load_settings()
    folder = uuid.uuid4().hex[:8]
    save_jpeg(image_root / folder / "good.jpg", quality=80)
    good = image_server.url(f"img/{folder}/good.jpg")
    direct = [canary.url(host, f"{name}.jpg") for name, host in SPELLINGS.items()]
    redirected = [image_server.url("redirect?to=" + urllib.parse.quote(url, safe="")) for url in direct]
    redirects_before = image_server.hits_for("redirect")
    request_id = submit(settings, [good, *direct, *redirected], webhook_url=canary.url(str(CANARY), "hook"))

    with instance_for_test() as instance:
        instance.add_dynamic_partitions("requests", [request_id])
        with execute_job(reconstructable(resolved_process_request_job), instance=instance,
                         tags={"dagster/partition": request_id}) as result:
            assert result.success

    assert canary.connections == 0
    assert image_server.hits_for("redirect") - redirects_before == len(redirected)  # the allowed hop was taken
    store = DuckDBStatusStore(settings.db_path)
    images = {image.input_url: image for image in store.images(request_id)}
    assert images[good].status == "compressed"
    for url in direct + redirected:
        assert images[url].status == "failed", url
        assert "blocked" in images[url].error and str(CANARY) in images[url].error, images[url].error
    assert store.get_request(request_id).status == "completed_with_errors"
    [delivery] = store.webhook_deliveries(request_id)
    assert delivery.status_code is None
    assert "blocked" in delivery.error and str(CANARY) in delivery.error


def deliver_once(url: str) -> tuple[str, dict]:
    """Queue a webhook to `url` and make every attempt the run's last step would make."""
    settings = load_settings()
    store = DuckDBStatusStore(settings.db_path)
    request_id = f"ssrf-hook-{uuid.uuid4().hex[:8]}"
    webhook_id = f"msg_{request_id}"
    store.enqueue_webhook(webhook_id=webhook_id, request_id=request_id, url=url, event_type="request.completed",
                          payload=b"{}")
    state = deliver(Backends(settings, store, open_storage(settings)), webhook_id, inline=True)
    [attempt] = store.webhook_deliveries(request_id)
    return state, attempt


@pytest.mark.parametrize("host", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_webhook_to_any_spelling_of_the_canary_is_blocked(canary, host):
    state, attempt = deliver_once(canary.url(host, "hook"))

    assert state == "blocked"
    assert attempt.status_code is None and "blocked" in attempt.error
    assert canary.connections == 0


def test_webhook_redirect_to_the_canary_is_not_followed(canary):
    receiver = WebhookReceiver([(307, {"Location": canary.url(str(CANARY), "hook")})])
    try:
        state, attempt = deliver_once(receiver.url("moved"))
    finally:
        receiver.close()

    assert state == "rejected"
    assert attempt.status_code == 307 and "not followed" in attempt.error
    assert len(receiver.calls) == 1
    assert canary.connections == 0
