"""The `imgpipe` command (docs/getting-started.md#command-line).

Exit codes: 0 done (a request that completed with some failed images too), 1 the request failed or the API
could not be reached, 2 the input was refused (invalid CSV, unknown request), 130 interrupted while waiting.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from imgpipe.progress import wait_until_terminal
from imgpipe.settings import Settings, load_settings

if TYPE_CHECKING:
    from imgpipe.backends import Backends

HTTP_TIMEOUT = 60.0


def report_outcome(document: dict) -> int:
    """The final lines of a request waited for: where its output CSV and its report are, or why it failed."""
    status, failed = document["status"], document["counts"]["failed"]
    if status in ("completed", "completed_with_errors"):
        if failed:
            print(f"{failed} image(s) failed; their slots in the output CSV are empty")
        print(f"output_csv_url: {document['output_csv_url']}")
        if document.get("report_url"):
            print(f"report_url: {document['report_url']}")
        return 0
    print(f"request {document['request_id']} {status}", file=sys.stderr)
    for error in document["errors"]:
        print(f"  {format_error(error)}", file=sys.stderr)
    if document.get("report_url"):
        print(f"report_url: {document['report_url']}")
    return 1


def format_error(error: dict) -> str:
    """`row R, column C: message`, leaving out what does not apply."""
    where = [f"row {error['row']}"] if error.get("row") is not None else []
    if error.get("column"):
        where.append(f"column {error['column']}")
    return f"{', '.join(where)}: {error['message']}" if where else error["message"]


def _error_message(response: requests.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason


# ---------------------------------------------------------------------- commands


# Modules are imported only where needed: the API pulls in FastAPI, pandas and pandera, the store DuckDB,
# which `submit` does without.
def run_api(args: argparse.Namespace, settings: Settings) -> int:
    from imgpipe.api.app import create_app
    from imgpipe.api.server import serve
    from imgpipe.logs import uvicorn_log_config

    # uvicorn's lines and the API's own, in one format (IMGPIPE_LOG_FORMAT); slow clients bounded (server.py).
    started = serve(create_app(settings), settings, args.host, args.port, uvicorn_log_config(settings))
    return 0 if started else 3  # uvicorn's own exit code when it cannot start


def run_stack(args: argparse.Namespace, settings: Settings) -> int:
    from imgpipe.local_stack import run_stack as run

    return run(settings, samples_port=args.samples_port, api_port=args.api_port, ui_port=args.ui_port,
               submit_sample=not args.no_sample)


def submit(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    api = (args.api or settings.api_url).rstrip("/")
    token = args.token or settings.api_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    asked = {key: value for key, value in (("renditions", args.renditions), ("widths", args.widths))
             if value is not None}
    response = requests.post(
        f"{api}/requests",
        params=asked,
        files={"file": (path.name, data, "text/csv")},
        data={"webhook_url": args.webhook_url} if args.webhook_url else None,
        headers=headers,
        timeout=HTTP_TIMEOUT,
    )
    if response.status_code == 422:
        for error in response.json().get("errors", []):
            print(f"{args.file}: {format_error(error)}", file=sys.stderr)
        return 2
    if response.status_code == 413:
        print(f"{args.file}: {_error_message(response)}", file=sys.stderr)
        return 2
    if response.status_code != 202:
        print(f"{api}/requests answered {response.status_code}: {_error_message(response)}", file=sys.stderr)
        return 1
    accepted = response.json()
    request_id = accepted["request_id"]
    print(f"request_id: {request_id}")
    print(f"status_url: {accepted['status_url']}")
    if not args.wait:
        return 0

    def fetch() -> dict:
        # The summary: counts, status and links, however many images the request has.
        status = requests.get(f"{api}/requests/{request_id}", params={"view": "summary"}, headers=headers,
                              timeout=HTTP_TIMEOUT)
        status.raise_for_status()
        return status.json()

    return report_outcome(wait_until_terminal(fetch, sys.stderr))


def retry(args: argparse.Namespace, settings: Settings) -> int:
    from imgpipe.backends import open_backends
    from imgpipe.status.document import request_document
    from imgpipe.status.request_rows import NotRetryable

    backends = open_backends(settings)
    try:
        todo = backends.store.requeue_for_retry(args.request_id)
    except KeyError:
        print(f"no request {args.request_id} in the status store", file=sys.stderr)
        return 2
    except NotRetryable as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{todo} image(s) of request {args.request_id} will be processed again; " + launch_retry(
        backends, args.request_id))
    if not args.wait:
        return 0
    return report_outcome(wait_until_terminal(
        lambda: request_document(backends, args.request_id, view="summary").model_dump(mode="json"), sys.stderr))


def launch_retry(backends: Backends, request_id: str) -> str:
    """Queues the retried request's run for the daemon now; what the person is told of it."""
    from imgpipe.runs.launch import launcher_at_once

    launcher = launcher_at_once(backends, start_here=False)
    run_id = launcher.launch(request_id) if launcher else None
    if run_id:
        return f"run {run_id} is queued for the running daemon"
    return f"the running daemon starts a run within about {backends.settings.sensor_interval} s"


def status(args: argparse.Namespace, settings: Settings) -> int:
    from imgpipe.backends import open_backends
    from imgpipe.status.document import request_document

    # The summary unless --products: a request of 20,000 images is not printed image by image by default.
    document = request_document(open_backends(settings), args.request_id,
                                view="full" if args.products else "summary")
    if document is None:
        print(f"no request {args.request_id} in the status store", file=sys.stderr)
        return 2
    print(json.dumps(document.model_dump(mode="json"), indent=2))
    return 0


def purge(args: argparse.Namespace, settings: Settings) -> int:
    """Whole requests older than --older-than: their files, rows and Dagster partitions; prints each ID. A request
    that has not ended is refused with the reason (exit 2), the others asked for are purged all the same."""
    from imgpipe.backends import open_backends
    from imgpipe.instance import configured_instance
    from imgpipe.retention import PurgePlan, parse_duration, parse_statuses, purge
    from imgpipe.runs.partitions import partition_forgetter
    from imgpipe.settings import dagster_home_dir

    try:
        plan = PurgePlan(older_than=parse_duration(args.older_than), statuses=parse_statuses(args.status))
    except ValueError as exc:
        print(f"imgpipe purge: {exc}", file=sys.stderr)
        return 2
    dagster_home = dagster_home_dir(settings)
    instance = configured_instance(dagster_home)
    if instance is None and not args.dry_run:
        print(f"note: no Dagster instance at {dagster_home}; partitions are left as they are", file=sys.stderr)
    forget = partition_forgetter(instance, delete_runs=args.runs) if instance is not None else None
    refused = False
    for outcome in purge(open_backends(settings), plan, dry_run=args.dry_run, forget_partition=forget):
        if outcome.refused:
            print(f"imgpipe purge: {outcome.refused}", file=sys.stderr, flush=True)
            refused = True
        else:
            print(outcome.request.request_id, flush=True)
    return 2 if refused else 0


def worker(args: argparse.Namespace, settings: Settings) -> int:
    """A Celery worker for the distributed profile's steps: the same app the run's executor sends them to."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    from imgpipe.backends import celery_config
    from imgpipe.celery_steps import StepTask, keep_redis_leases

    if not settings.distributed:
        print("imgpipe worker runs the distributed profile's steps: set IMGPIPE_PROFILE=distributed "
              "(see README, Scaling out)", file=sys.stderr)
        return 2
    # What a step will need (the Dagster instance's variables too), checked before any step is taken.
    from imgpipe.instance import refuse, worker_problems

    problems = worker_problems(os.environ)
    if problems:
        print(f"imgpipe worker: {refuse(problems)}", file=sys.stderr)
        return 2
    app = make_app(CeleryExecutor.for_cli(**celery_config(settings)).app_args())
    # A step whose run has ended is not run (a message given back by a lost worker, taken after its run
    # failed); with Redis, the steps this worker holds stay its own while it lives.
    create_task(app, base=StepTask)
    keep_redis_leases(app, settings.worker_lost_timeout)
    # One step at a time by default: a step already keeps every core busy with one process per image.
    app.worker_main(["worker", "--loglevel", args.loglevel, "--queues", "dagster",
                     "--concurrency", str(args.concurrency), "--hostname", args.name])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgpipe", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    api_parser = commands.add_parser("api", help="serve the REST API")
    api_parser.add_argument("--host", default="127.0.0.1")
    api_parser.add_argument("--port", type=int, default=8000)
    api_parser.set_defaults(run=run_api)

    up_parser = commands.add_parser("up", help="the whole embedded stack: sample images, REST API and Dagster UI")
    up_parser.add_argument("--api-port", type=int, default=8000)
    up_parser.add_argument("--ui-port", type=int, default=3000)
    up_parser.add_argument("--samples-port", type=int, default=8001)
    up_parser.add_argument("--no-sample", action="store_true", help="do not drop the sample CSV into the inbox")
    up_parser.set_defaults(run=run_stack)

    add_submit_command(commands)

    retry_parser = commands.add_parser("retry", help="process again the images of a request that are not compressed")
    retry_parser.add_argument("request_id", metavar="REQUEST_ID")
    retry_parser.add_argument("--wait", action="store_true", help="show progress until the request ends")
    retry_parser.set_defaults(run=retry)

    status_parser = commands.add_parser(
        "status", help="print a request's status summary (as GET /requests/{id}?view=summary)")
    status_parser.add_argument("request_id", metavar="REQUEST_ID")
    status_parser.add_argument("--products", action="store_true",
                               help="the whole document, every product and image (as GET /requests/{id})")
    status_parser.set_defaults(run=status)

    purge_parser = commands.add_parser("purge", help="remove whole requests older than a duration")
    purge_parser.add_argument("--older-than", required=True, metavar="DURATION",
                              help="by creation time: 90s, 15m, 12h or 30d")
    purge_parser.add_argument("--dry-run", action="store_true", help="list what would be purged, delete nothing")
    purge_parser.add_argument("--status", metavar="S,...",
                              help="only requests in these statuses (default: every terminal status; a queued or "
                                   "processing request is refused until its run is cancelled)")
    purge_parser.add_argument("--runs", action="store_true", help="delete the requests' Dagster runs too")
    purge_parser.set_defaults(run=purge)

    worker_parser = commands.add_parser("worker", help="a Celery worker for the distributed profile's steps")
    worker_parser.add_argument("--name", default="imgpipe@%h",
                               help="the worker's Celery name (default: imgpipe@%%h)")
    worker_parser.add_argument("--concurrency", type=int, default=1, help="steps at a time (default: 1)")
    worker_parser.add_argument("--loglevel", default="INFO")
    worker_parser.set_defaults(run=worker)
    return parser


def add_submit_command(commands) -> None:
    """`imgpipe submit` and its options, on the `commands` of `build_parser`."""
    submit_parser = commands.add_parser("submit", help="upload a CSV through the REST API")
    submit_parser.add_argument("file", metavar="FILE.csv")
    submit_parser.add_argument("--webhook-url", help="called when the request ends")
    submit_parser.add_argument("--wait", action="store_true", help="show progress until the request ends")
    submit_parser.add_argument("--api", help="the API's base URL (default: $IMGPIPE_API_URL, else "
                                             "http://127.0.0.1:8000)")
    submit_parser.add_argument("--token", help="bearer token (default: $IMGPIPE_API_TOKEN)")
    submit_parser.add_argument("--idempotency-key", help="the same key again returns the same request")
    submit_parser.add_argument("--renditions", metavar="FORMATS",
                               help="also make each image as these formats: webp, avif or webp,avif (default: "
                                    "$IMGPIPE_RENDITIONS of the pipeline; '' for none)")
    submit_parser.add_argument("--widths", metavar="PIXELS",
                               help="also make each image at these widths where narrower, e.g. 480,960 (default: "
                                    "$IMGPIPE_WIDTHS of the pipeline; '' for none)")
    submit_parser.set_defaults(run=submit)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ValueError as exc:
        print(f"imgpipe: {exc}", file=sys.stderr)
        return 2
    try:
        return args.run(args, settings)
    except requests.RequestException as exc:
        print(f"cannot talk to the API: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; a request already sent goes on (see `imgpipe status REQUEST_ID`)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`imgpipe status ID | head`): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
