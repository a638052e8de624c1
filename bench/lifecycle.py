"""The run lifecycle's figures: how soon a request is done, measured from the outside.

    .venv/bin/python bench/lifecycle.py [--requests 12] [--reuse 500] [--repeat 1]

The stack is started as the README tells a user to start it headless (bench/daemon.py: a code server of its own,
`dagster-daemon run` and `imgpipe api` on a fresh home), with default settings but for the webhook secret and the
bench's servers on 127.0.0.1 being allowed.

- **One image, through the REST API:** `--requests` one-image requests one after another, each timed from the
  start of its `POST /requests` to the arrival of its webhook at a receiver in this process, which checks the
  Standard Webhooks signature with the reference library. Each image is new to imgpipe (a tag of its own), so
  each request downloads, decodes and encodes. A first request, not counted, wakes the stack.
- **One image, through the inbox:** the same, each timed from the rename of its CSV into the inbox (its sidecar
  names the webhook) to the webhook. The daemon looks at the inbox every `IMGPIPE_SENSOR_INTERVAL` s (5).
- **A re-upload:** a catalogue of `--reuse` photographs POSTed twice, each upload timed from its POST to its
  terminal status (`completed_at` in the status store) and to its webhook; the image server sends ETags, so the
  second upload gets 304s and keeps the first one's outputs.

Printed, and written to bench-results/lifecycle.json.
"""
from __future__ import annotations

import argparse
import http.server
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from standardwebhooks import Webhook

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import RESULTS, ImageServer, ensure_images  # noqa: E402
from daemon import Daemon, catalogue, load, utc_epoch  # noqa: E402

SECRET = "whsec_" + "bGlmZWN5Y2xlLWJlbmNoLXNlY3JldC0zMmJ5dGVz"


class WebhookReceiver:
    """Webhooks on 127.0.0.1: each one's signature checked, and the time it arrived kept by request ID."""

    def __init__(self):
        self.arrived: dict[str, tuple[float, dict]] = {}
        self.refused = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                arrived = time.time()
                try:
                    payload = Webhook(SECRET).verify(body, dict(self.headers))
                except Exception:  # any failed check is a refusal; the count is reported
                    receiver.refused += 1
                    self.send_response(400)
                else:
                    with receiver._changed:
                        receiver.arrived.setdefault(payload["request_id"], (arrived, payload))
                        receiver._changed.notify_all()
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> "WebhookReceiver":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, request_id: str, timeout: float) -> tuple[float, dict]:
        with self._changed:
            if not self._changed.wait_for(lambda: request_id in self.arrived, timeout):
                raise TimeoutError(f"no webhook for request {request_id} within {timeout:.0f} s")
            return self.arrived[request_id]


def post(api: str, csv_bytes: bytes, webhook_url: str) -> tuple[float, str]:
    """(when the POST started, the request ID)."""
    started = time.time()
    answer = requests.post(f"{api}/requests", params={"webhook_url": webhook_url},
                           files={"file": ("catalogue.csv", csv_bytes, "text/csv")}, timeout=60)
    answer.raise_for_status()
    return started, answer.json()["request_id"]


def spread(seconds: list[float]) -> dict:
    return {"median_s": round(statistics.median(seconds), 3), "worst_s": round(max(seconds), 3),
            "best_s": round(min(seconds), 3), "each_s": [round(s, 3) for s in seconds]}


def phases(daemon: Daemon, request_id: str, started: float, arrived: float) -> dict:
    """Where a request's time went: to its row in the status store, to its Dagster run's creation, to the run's
    start (its worker running), to the terminal status, to the webhook's arrival."""
    from dagster import RunsFilter

    from imgpipe.runs.tags import request_tag
    request = daemon.store.get_request(request_id)
    record = next(iter(daemon.instance.get_run_records(RunsFilter(tags={request_tag(request_id): "true"}))))
    marks = [("accepted", utc_epoch(request.created_at)), ("run_created", utc_epoch(record.create_timestamp)),
             ("run_started", record.start_time), ("terminal", utc_epoch(request.completed_at)), ("webhook", arrived)]
    previous, spent = started, {}
    for mark, at in marks:
        spent[mark] = round(at - previous, 3)
        previous = at
    return spent


def wake(daemon: Daemon, receiver: WebhookReceiver, server: ImageServer) -> float:
    """A first one-image request, not counted: the stack's first run starts its warm run servers, which no later
    request waits for (a first upload that did would flatter the re-upload's speed-up)."""
    started, request_id = post(daemon.api_url, catalogue(server.urls("photo", 1, tag="wake"), 1), receiver.url)
    waking = receiver.wait_for(request_id, 120)[0] - started
    print(f"waking request: {waking:.2f} s from the POST to its webhook", flush=True)
    return waking


def one_image_requests(daemon: Daemon, receiver: WebhookReceiver, server: ImageServer, count: int) -> dict:
    api = daemon.api_url
    urls = server.urls("photo", 2 * count, tag="latency")
    through_api, api_phases = [], []
    for i in range(count):
        started, request_id = post(api, catalogue([urls[i]], 1), receiver.url)
        arrived, payload = receiver.wait_for(request_id, 120)
        if payload["status"] != "completed":
            raise RuntimeError(f"request {request_id} ended {payload['status']}")
        through_api.append(arrived - started)
        api_phases.append(phases(daemon, request_id, started, arrived))
        print(f"REST {i + 1}/{count}: {through_api[-1]:.2f} s from the POST to the signed webhook "
              f"{api_phases[-1]}", flush=True)
    through_inbox, inbox_phases = [], []
    for i in range(count):
        name = f"latency-{i:02d}.csv"
        dropped = daemon.drop(name, [urls[count + i]], fresh=False, sidecar={"webhook_url": receiver.url})
        request = daemon.wait(f"request of {name}", lambda n=name: daemon.store.latest_request_for_file(n), 60)
        arrived, payload = receiver.wait_for(request.request_id, 120)
        through_inbox.append(arrived - dropped)
        inbox_phases.append(phases(daemon, request.request_id, dropped, arrived))
        print(f"inbox {i + 1}/{count}: {through_inbox[-1]:.2f} s from the rename to the signed webhook "
              f"{inbox_phases[-1]}", flush=True)
    return {"rest_api": {**spread(through_api), "phases": api_phases},
            "inbox": {**spread(through_inbox), "phases": inbox_phases},
            "sensor_interval_s": int(daemon.env["IMGPIPE_SENSOR_INTERVAL"]), "refused_webhooks": receiver.refused}


def re_upload(daemon: Daemon, receiver: WebhookReceiver, server: ImageServer, count: int, tag: str) -> dict:
    api = daemon.api_url
    csv_bytes = catalogue(server.urls("photo", count, tag=tag))
    uploads = {}
    for upload in ("first", "second"):
        started, request_id = post(api, csv_bytes, receiver.url)
        arrived, payload = receiver.wait_for(request_id, 600)
        request = daemon.store.get_request(request_id)
        if request.status != "completed":
            raise RuntimeError(f"request {request_id} ended {request.status}: {request.error}")
        obtained = [image.obtained for image in daemon.store.images(request_id)]
        uploads[upload] = {"request_id": request_id,
                           "to_terminal_s": round(utc_epoch(request.completed_at) - started, 3),
                           "to_webhook_s": round(arrived - started, 3),
                           "obtained": {way: obtained.count(way) for way in sorted(set(obtained))},
                           "phases": phases(daemon, request_id, started, arrived)}
        print(f"re-upload of {count}, {upload}: {uploads[upload]['to_terminal_s']:.2f} s from the POST to its "
              f"terminal status, {uploads[upload]['to_webhook_s']:.2f} s to its webhook; {uploads[upload]['obtained']}; "
              f"{uploads[upload]['phases']}",
              flush=True)
    speedup = round(uploads["first"]["to_terminal_s"] / uploads["second"]["to_terminal_s"], 2)
    print(f"re-upload of {count}: the second {speedup}x faster from the POST to the terminal status", flush=True)
    return {**uploads, "speedup_to_terminal": speedup,
            "speedup_to_webhook": round(uploads["first"]["to_webhook_s"] / uploads["second"]["to_webhook_s"], 2)}


def run(work: Path, server: ImageServer, requests_count: int = 12, reuse: int = 500, repeat: int = 1) -> dict:
    with WebhookReceiver() as receiver, \
            Daemon(work / "lifecycle", "process", api=True, env={"IMGPIPE_WEBHOOK_SECRET": SECRET,
                                                                  "IMGPIPE_SENSOR_INTERVAL": "5"},
                   name="lifecycle") as daemon:
        print(f"\n== the run lifecycle: {requests_count} one-image requests through the REST API and the inbox, "
              f"a re-upload of {reuse} photographs {repeat} time(s); load {load()}", flush=True)
        result = {"load_1min_at_start": load(), "waking_request_s": round(wake(daemon, receiver, server), 3),
                  "one_image": one_image_requests(daemon, receiver, server, requests_count) if requests_count else None,
                  "re_uploads": [re_upload(daemon, receiver, server, reuse, f"reuse-{i}") for i in range(repeat)]
                  if reuse else []}
        result["load_1min_at_end"] = load()
    if result["re_uploads"]:
        result["re_upload_median_speedup"] = statistics.median(r["speedup_to_terminal"] for r in result["re_uploads"])
    one = result["one_image"]
    if one:
        print(f"one image, POST to signed webhook: median {one['rest_api']['median_s']} s, worst "
              f"{one['rest_api']['worst_s']} s (goal <= 1.5 and <= 3); inbox: median {one['inbox']['median_s']} s "
              f"(goal <= {one['sensor_interval_s']} + 1.5)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=12, help="one-image requests through each way in (0: none)")
    parser.add_argument("--reuse", type=int, default=500, help="photographs of the re-uploaded catalogue (0: none)")
    parser.add_argument("--repeat", type=int, default=1, help="re-uploads, each of a catalogue of its own")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    folders = {"photo": ensure_images("photo", max(args.reuse, 1 + 2 * args.requests))}
    with tempfile.TemporaryDirectory(dir=RESULTS, prefix="work-") as tmp, ImageServer(folders) as server:
        result = run(Path(tmp), server, args.requests, args.reuse, args.repeat)
    out = RESULTS / "lifecycle.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
