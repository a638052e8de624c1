"""The distributed profile on this machine's real services, as on machines of their own: the Dagster instance and
the status store in PostgreSQL, steps on `imgpipe worker`s with Redis or RabbitMQ as the Celery broker, objects
and step logs in an S3-compatible server (moto) on loopback; every process (API, daemon, each worker) with an
IMGPIPE_HOME and a TMPDIR of its own that no other process is told of, the daemon with a DAGSTER_HOME of its own
(the API and the workers need none: a step's instance travels with it).

- A request through the API completes on the workers (both brokers), every step in a worker's process, nothing
  left in any process's folders but what that process wrote there, a step's log read back from the bucket
  through the Dagster instance; the same CSV through the embedded profile gives the same output CSV (apart from
  the base URL and the request ID) and the same image bytes.
- A worker killed with SIGKILL while it runs `compress_batch`: the step runs again on the other worker (both
  brokers), the images the dead worker finished are not fetched again, one webhook.
- The only worker killed: the run fails within the documented bound, the request ends `failed` with one
  `request.failed` webhook, and `imgpipe retry` with a new worker completes it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from unittest import mock

import boto3
import psycopg2
import pytest
import requests
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    instance_for_test,
)
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from standardwebhooks import Webhook

from imgpipe.settings import load_settings
from imgpipe_tests.brokers import KINDS, broker
from imgpipe_tests.images import save_jpeg
from imgpipe_tests.pipeline import csv_for, read_output, run, submit
from imgpipe_tests.postgres import fresh_database
from imgpipe_tests.s3 import moto_server
from imgpipe_tests.servers import REPO, free_port, wait_for

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
WORKERS = ("imgpipe-w1@test", "imgpipe-w2@test")
TERMINAL = {"completed", "completed_with_errors", "failed"}
PREFIX = "deploy-a"
LOGS_PREFIX = f"{PREFIX}/dagster-logs"
COMPRESS_STEP = "compressed_images.compress_batch[batch_0]"
# The worker-loss tests: a lost worker counts as lost after this many seconds (IMGPIPE_WORKER_LOST_TIMEOUT), and
# a run whose steps no worker answers for fails within it plus the bound the README documents.
LOST_TIMEOUT = 10
RUN_FAILS_WITHIN = LOST_TIMEOUT + 10


class DistributedStack:
    """`imgpipe worker`s, `dagster-daemon` and `imgpipe api` over PostgreSQL, a broker and the S3 server. Each
    process has folders of its own under `root/<name>/`: `home` (IMGPIPE_HOME), `tmp` (TMPDIR) and, for the
    daemon and this test's own process, `dagster_home` (DAGSTER_HOME, holding a copy of
    imgpipe/package_data/distributed/dagster.yaml). The API never loads the Dagster instance; a worker rebuilds
    it for each step from the instance's description that comes with the step."""

    def __init__(self, root: Path, database_url: str, s3_env: dict, bucket: str, broker_url: str,
                 workers: tuple[str, ...], env: dict[str, str]):
        self.root, self.workers = root, workers
        self.api = f"http://127.0.0.1:{free_port()}"
        self.bucket = bucket
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGPIPE_", "DAGSTER_", "AWS_"))
                    and k != "TMPDIR"}
        self.env.update(s3_env)
        self.env.update({
            "IMGPIPE_PROFILE": "distributed", "IMGPIPE_DATABASE_URL": database_url, "IMGPIPE_BROKER_URL": broker_url,
            "IMGPIPE_STORAGE_URL": f"s3://{bucket}/{PREFIX}", "IMGPIPE_MAX_BATCHES": "2",
            "IMGPIPE_PUBLIC_BASE_URL": self.api, "IMGPIPE_ALLOW_PRIVATE_HOSTS": "127.0.0.1",
            "IMGPIPE_SENSOR_INTERVAL": "1", "IMGPIPE_WEBHOOK_SECRET": os.environ["IMGPIPE_WEBHOOK_SECRET"],
            "DAGSTER_COMPUTE_LOGS_BUCKET": bucket, "DAGSTER_COMPUTE_LOGS_PREFIX": LOGS_PREFIX,
            **env,
        })
        self.procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ processes

    def folders(self, name: str) -> dict[str, Path]:
        base = self.root / name
        return {"home": base / "home", "tmp": base / "tmp",
                **({"dagster_home": base / "dagster_home"} if name in ("daemon", "test") else {})}

    def env_of(self, name: str) -> dict[str, str]:
        """The environment of process `name`: the shared settings and its own folders (created empty, with the
        instance's dagster.yaml in DAGSTER_HOME)."""
        folders = self.folders(name)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        if "dagster_home" in folders:
            (folders["dagster_home"] / "dagster.yaml").write_bytes(
                (REPO / "imgpipe" / "package_data" / "distributed" / "dagster.yaml").read_bytes())
        return {**self.env, "IMGPIPE_HOME": str(folders["home"]), "TMPDIR": str(folders["tmp"]),
                **({"DAGSTER_HOME": str(folders["dagster_home"])} if "dagster_home" in folders else {})}

    def start(self) -> None:
        self.spawn("api", [BIN / "imgpipe", "api", "--port", self.api.rsplit(":", 1)[1]])
        self.spawn("daemon", [BIN / "dagster-daemon", "run", "-w", "workspace.yaml"])
        for name in self.workers:
            self.start_worker(name, wait=False)
        assert wait_for(self._healthy, 60), f"the API did not come up: {self.log_tail('api')}"
        for name in self.workers:
            self.wait_ready(name)

    def start_worker(self, name: str, wait: bool = True) -> None:
        self.spawn(name, [BIN / "imgpipe", "worker", "--name", name])
        if wait:
            self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        assert wait_for(lambda: b"ready." in self.log_path(name).read_bytes(), 60), self.log_tail(name)

    def spawn(self, name: str, command: list) -> None:
        self.procs[name] = subprocess.Popen([str(c) for c in command], cwd=REPO, env=self.env_of(name),
                                            stdout=open(self.log_path(name), "ab"), stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def kill(self, name: str) -> None:
        """SIGKILL to the whole process group: the worker, its pool, the fork server and the image processes, as
        when the machine dies."""
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(10)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "imgpipe"), *args], check=False, cwd=REPO, env=self.env_of("cli"),
                              capture_output=True, text=True, timeout=120)

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.api}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        alive = [p for p in self.procs.values() if p.poll() is None]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
        # Whatever of a group outlived its leader (a code server whose database is already gone) goes too.
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def log_tail(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")[-3000:]

    # ------------------------------------------------------------------ what they did

    def instance(self) -> DagsterInstance:
        """The shared Dagster instance, as this test's own process loads it (its own DAGSTER_HOME and TMPDIR). It
        checks, as it loads, that the environment has every variable of the distributed profile: this process's
        own settings are the embedded profile's, so the stack's are lent to it meanwhile."""
        env = self.env_of("test")
        with mock.patch.dict(os.environ, env):
            return DagsterInstance.from_config(env["DAGSTER_HOME"])

    def post(self, rows: list[list[str]], hook: str) -> str:
        answer = requests.post(f"{self.api}/requests", files={"file": ("dist.csv", csv_for(rows), "text/csv")},
                               data={"webhook_url": hook}, timeout=30)
        assert answer.status_code == 202, answer.text
        return answer.json()["request_id"]

    def document(self, request_id: str) -> dict:
        return requests.get(f"{self.api}/requests/{request_id}", timeout=10).json()

    def wait_terminal(self, request_id: str, timeout: float = 180) -> dict:
        document = wait_for(lambda: (d := self.document(request_id))["status"] in TERMINAL and d, timeout)
        assert document, f"not terminal: {self.document(request_id)['status']}; daemon: {self.log_tail('daemon')}"
        return document

    def query(self, statement: str, *params) -> list[tuple]:
        with psycopg2.connect(self.env["IMGPIPE_DATABASE_URL"]) as con, con.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()

    def explain(self, request_id: str) -> str:
        """What the request's run said about itself (engine events and its failure): for an assertion's message."""
        run_id = self.run_id_of(request_id)
        if not run_id:
            return f"request {request_id} has no run; daemon: {self.log_tail('daemon')}"
        with self.instance() as instance:
            return "\n".join(f"{r.dagster_event.event_type_value}: {r.dagster_event.message}"
                             for r in instance.all_logs(run_id) if r.dagster_event and r.dagster_event.event_type in (
                                 DagsterEventType.ENGINE_EVENT, DagsterEventType.RUN_FAILURE,
                                 DagsterEventType.STEP_FAILURE))

    def run_id_of(self, request_id: str) -> str | None:
        return self.query("SELECT run_id FROM requests WHERE request_id = %s", request_id)[0][0]

    def compressed_urls(self, request_id: str) -> set[str]:
        return {url for (url,) in self.query(
            "SELECT input_url FROM images WHERE request_id = %s AND status = 'compressed'", request_id)}

    def s3(self):
        return boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"])

    def keys(self, prefix: str) -> set[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}


def celery_hosts(instance: DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """(step key, Celery worker) for each step task a worker started, in order."""
    return [(r.step_key, r.dagster_event.engine_event_data.metadata["Celery worker"].value)
            for r in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
            if "Celery worker" in r.dagster_event.engine_event_data.metadata]


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def parent_of(pid: int) -> int:
    """The parent of a live process (Celery's pool processes outlive the tasks they ran)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("PPid:"))


@pytest.fixture(params=KINDS)
def broker_kind(request) -> str:
    return request.param


@pytest.fixture
def make_stack(tmp_path, monkeypatch):
    """Starts a stack on a fresh broker of a kind (`redis`, `amqp`), database and bucket:
    `make_stack(kind, workers=..., **extra_env)`; stops it, then removes them, after the test."""
    with contextlib.ExitStack() as resources:
        def make(kind: str, workers: tuple[str, ...] = WORKERS, **env: str) -> DistributedStack:
            bucket = f"imgpipe-{uuid.uuid4().hex[:8]}"
            broker_url = resources.enter_context(broker(kind))
            database_url = resources.enter_context(fresh_database())
            s3_env = resources.enter_context(moto_server(bucket))
            stack = DistributedStack(tmp_path, database_url, s3_env, bucket, broker_url, workers, env)
            # This process loads the instance too (stack.instance()): its dagster.yaml reads these.
            for name, value in {"IMGPIPE_DATABASE_URL": database_url, "DAGSTER_COMPUTE_LOGS_BUCKET": bucket,
                                "DAGSTER_COMPUTE_LOGS_PREFIX": LOGS_PREFIX,
                                "TMPDIR": str(stack.folders("test")["tmp"])}.items():
                monkeypatch.setenv(name, value)
            resources.callback(stack.stop)
            stack.start()
            return stack

        yield make


def test_a_request_runs_on_celery_workers_with_postgres_and_s3_and_matches_embedded(
        make_stack, broker_kind, image_server, image_root, webhook_receiver):
    stack = make_stack(broker_kind)
    folder = uuid.uuid4().hex[:8]
    for i in range(5):
        save_jpeg(image_root / folder / f"{i}.jpg", quality=55 + 8 * i, seed=i)
    urls = [image_server.url(f"img/{folder}/{i}.jpg") for i in range(5)]
    rows = [urls[0:2], [urls[2], image_server.url(f"status/404/{folder}"), urls[3]], [urls[4], urls[0]]]
    request_id = stack.post(rows, webhook_receiver.url("dist"))
    document = stack.wait_terminal(request_id)

    # Status: in PostgreSQL.
    assert document["status"] == "completed_with_errors", stack.explain(request_id)
    assert document["counts"] == {"total": 7, "pending": 0, "processing": 0, "compressed": 6, "failed": 1}
    assert stack.query("SELECT status, count(*) FROM images WHERE request_id = %s GROUP BY status ORDER BY 1",
                       request_id) == [("compressed", 6), ("failed", 1)]
    assert stack.query("SELECT status, source, file_name FROM requests WHERE request_id = %s", request_id) == [
        ("completed_with_errors", "api", "dist.csv")]

    # Objects: the input, the images and the output CSV in the bucket, served by the API from there.
    s3 = stack.s3()
    keys = stack.keys(f"{PREFIX}/")
    image_keys = sorted(k for k in keys if k.startswith(f"{PREFIX}/images/{request_id}/"))
    assert len(image_keys) == 5  # five unique URLs fetched, one of them a 404
    assert {f"{PREFIX}/requests/{request_id}/input.csv", f"{PREFIX}/outputs/{request_id}.csv"} <= keys
    output_csv = requests.get(f"{stack.api}/requests/{request_id}/output.csv", timeout=10)
    assert output_csv.status_code == 200
    kept = s3.get_object(Bucket=stack.bucket, Key=f"{PREFIX}/outputs/{request_id}.csv")["Body"].read()
    assert output_csv.content == kept
    first = document["products"][0]["images"][0]["output_url"]
    assert requests.get(first, timeout=10).headers["content-type"] == "image/jpeg"

    # One webhook, signed.
    assert wait_for(lambda: webhook_receiver.calls_to("dist"), 30)
    [call] = webhook_receiver.calls_to("dist")
    payload = Webhook(stack.env["IMGPIPE_WEBHOOK_SECRET"]).verify(call["body"], call["headers"])
    assert (payload["type"], payload["request_id"]) == ("request.completed", request_id)

    # Every step ran in a process of one of the Celery workers started here.
    run_id = stack.run_id_of(request_id)
    with stack.instance() as instance:
        records = instance.all_logs(run_id)
        hosts = celery_hosts(instance, run_id)
        steps = {r.step_key for r in records
                 if r.dagster_event and r.dagster_event.event_type == DagsterEventType.STEP_SUCCESS}
        assert {"upload_manifest", "output_csv", "compressed_images.plan_batches", COMPRESS_STEP} <= steps
        assert steps <= {step for step, _ in hosts} and {host for _, host in hosts} <= set(WORKERS), hosts
        worker_pids = {stack.procs[name].pid for name in WORKERS}
        step_pids = {r.dagster_event.pid for r in records
                     if r.dagster_event and r.dagster_event.event_type == DagsterEventType.STEP_START}
        assert step_pids and all(parent_of(pid) in worker_pids for pid in step_pids), (step_pids, worker_pids)

        # A step's log, read back from the bucket through the instance: written on the worker that ran the
        # step, uploaded, deleted there; this process has no copy until it reads it.
        manager = instance.compute_log_manager
        assert isinstance(manager, S3ComputeLogManager)
        [captured] = [r.dagster_event.logs_captured_data
                      for r in instance.all_logs(run_id, of_type=DagsterEventType.LOGS_CAPTURED)
                      if COMPRESS_STEP in r.dagster_event.logs_captured_data.step_keys]
        log_key = manager.build_log_key_for_run(run_id, captured.file_key)
        assert f"{LOGS_PREFIX}/storage/{run_id}/compute_logs/{captured.file_key}.err" in stack.keys(LOGS_PREFIX)
        assert files_in(stack.folders("test")["tmp"]) == []
        log = manager.get_log_data(log_key)
        assert b"6 compressed, 0 failed" in log.stderr or b"5 compressed, 1 failed" in log.stderr, log.stderr[-2000:]

    # Nothing went through a local folder: no process's IMGPIPE_HOME holds a file (the API's and the daemon's
    # included, so there is no DuckDB file either), the daemon's DAGSTER_HOME holds only the dagster.yaml put
    # there, no TMPDIR holds a file; each worker staged the logs of the steps it ran in its own TMPDIR (the folder
    # stays, the files went to the bucket), and no other process staged any; this process holds the log it read.
    # A worker uploads a step's logs once the step has ended, which may be after the run has: allowed 15 s.
    for name in ("api", "daemon", *WORKERS):
        folders = stack.folders(name)
        assert files_in(folders["home"]) == [], name
        if "dagster_home" in folders:
            assert files_in(folders["dagster_home"]) == ["dagster.yaml"], name
        assert wait_for(lambda: files_in(folders["tmp"]) == [], 15), (name, files_in(folders["tmp"]))
        assert (folders["tmp"] / run_id / "compute_logs").is_dir() == (name in {host for _, host in hosts}), name
    assert files_in(stack.folders("test")["tmp"]) == [f"{run_id}/compute_logs/{captured.file_key}.err"]

    # The embedded profile, on the same CSV: the same output CSV and the same image bytes.
    settings = load_settings()
    with instance_for_test() as instance:
        embedded_id = submit(settings, csv_for(rows), f"embedded-{folder}.csv")
        assert run(instance, embedded_id)[0]
    embedded_csv = (settings.outputs_dir / f"{embedded_id}.csv").read_bytes().decode()
    assert len(read_output(settings, embedded_id)) == 4
    assert embedded_csv.replace(f"{settings.public_base_url}/images/{embedded_id}/", "BASE/") == \
        output_csv.content.decode().replace(f"{stack.api}/images/{request_id}/", "BASE/")
    embedded_images = {p.name: p.read_bytes() for p in (settings.images_dir / embedded_id).iterdir()}
    distributed_images = {k.rsplit("/", 1)[1]: s3.get_object(Bucket=stack.bucket, Key=k)["Body"].read()
                          for k in image_keys}
    assert embedded_images == distributed_images


def slow_request(stack: DistributedStack, image_server, image_root, hook: str, count: int = 12,
                 seconds: int = 1) -> tuple[str, dict]:
    """A request of `count` images (at most 16: one batch) that each take `seconds` to download, two at a time
    (the stack's workers download two at once): the worker running it can be killed mid-step. Returns its ID
    and {URL: hit path}."""
    folder = uuid.uuid4().hex[:8]
    paths = {}
    for i in range(count):
        save_jpeg(image_root / folder / f"{i}.jpg", quality=60 + i, seed=i)
        paths[image_server.url(f"slow/{seconds}/{folder}/{i}.jpg")] = f"slow/{seconds}/{folder}/{i}.jpg"
    return stack.post([[url] for url in paths], hook), paths


def kill_mid_step(stack: DistributedStack, request_id: str, paths: dict, hits) -> tuple[str, set[str], dict]:
    """Waits until the worker that runs `compress_batch` (its engine event names it) has compressed an image,
    then SIGKILLs it. Returns its name, the images compressed before, and the hit counts at the kill."""
    run_id = wait_for(lambda: stack.run_id_of(request_id), 60)
    assert run_id, stack.log_tail("daemon")
    with stack.instance() as instance:
        victim = wait_for(lambda: next((host for step, host in celery_hosts(instance, run_id)
                                        if step == COMPRESS_STEP), None), 60)
    assert victim, stack.log_tail("daemon")
    finished = wait_for(lambda: stack.compressed_urls(request_id), 30)
    hits_before = {url: hits(path) for url, path in paths.items()}
    stack.kill(victim)
    assert finished and len(finished) < len(paths), "the step was not killed in its middle"
    return victim, finished, hits_before


def test_a_worker_killed_mid_step_leaves_the_step_to_the_survivor_which_fetches_only_what_was_unfinished(
        make_stack, broker_kind, image_server, image_root, webhook_receiver):
    hits = image_server.hits_for
    stack = make_stack(broker_kind, IMGPIPE_WORKER_LOST_TIMEOUT=str(LOST_TIMEOUT), IMGPIPE_DOWNLOAD_THREADS="2")
    # Redis: 16 s of downloads, so what is left for the survivor outlasts the timeout, and the step would be
    # handed out a second time if the survivor did not keep renewing its lease. RabbitMQ has no such lease.
    count, seconds = (16, 2) if broker_kind == "redis" else (12, 1)
    request_id, paths = slow_request(stack, image_server, image_root, webhook_receiver.url("lost"), count, seconds)
    victim, finished, _ = kill_mid_step(stack, request_id, paths, hits)
    [survivor] = set(WORKERS) - {victim}

    document = stack.wait_terminal(request_id)
    assert document["status"] == "completed", (document["counts"], stack.explain(request_id))
    assert document["counts"]["compressed"] == len(paths)
    # What the dead worker finished was fetched once; the step ran again on the survivor, in the same run, once.
    assert {url: hits(paths[url]) for url in finished} == {url: 1 for url in finished}
    with stack.instance() as instance:
        run_id = stack.run_id_of(request_id)
        assert [host for step, host in celery_hosts(instance, run_id) if step == COMPRESS_STEP] == [victim, survivor]
        assert wait_for(lambda: instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS, 30)
    # One webhook.
    assert wait_for(lambda: webhook_receiver.calls_to("lost"), 30)
    time.sleep(2)
    [call] = webhook_receiver.calls_to("lost")
    assert Webhook(stack.env["IMGPIPE_WEBHOOK_SECRET"]).verify(call["body"], call["headers"])["type"] == \
        "request.completed"


def test_with_no_worker_left_the_run_fails_in_bounded_time_and_a_retry_on_a_new_worker_completes_it(
        make_stack, image_server, image_root, webhook_receiver):
    hits = image_server.hits_for
    stack = make_stack("amqp", workers=WORKERS[:1], IMGPIPE_WORKER_LOST_TIMEOUT=str(LOST_TIMEOUT),
                       IMGPIPE_DOWNLOAD_THREADS="2")
    request_id, paths = slow_request(stack, image_server, image_root, webhook_receiver.url("alone"))
    _, finished, hits_before = kill_mid_step(stack, request_id, paths, hits)
    killed_at = time.monotonic()

    # The run fails within the bound; the request ends failed, with one request.failed webhook.
    run_id = stack.run_id_of(request_id)
    with stack.instance() as instance:
        assert wait_for(lambda: instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE,
                        RUN_FAILS_WITHIN + 30, step=0.5)
        failed_after = time.monotonic() - killed_at
        assert failed_after <= RUN_FAILS_WITHIN, failed_after
        [failure] = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
        error = failure.dagster_event.event_specific_data.error.to_string()
        assert f"no Celery worker answered for {LOST_TIMEOUT} s" in error, error
    assert stack.wait_terminal(request_id, 60)["status"] == "failed"
    assert wait_for(lambda: webhook_receiver.calls_to("alone"), 30)
    [call] = webhook_receiver.calls_to("alone")
    assert Webhook(stack.env["IMGPIPE_WEBHOOK_SECRET"]).verify(call["body"], call["headers"])["type"] == \
        "request.failed"

    # A worker is back: `imgpipe retry` completes the request. The dead run's step message, still queued,
    # runs nothing (that run has failed), and no image is fetched twice but those the dead worker had in
    # flight.
    stack.start_worker(WORKERS[1])
    retried = stack.cli("retry", request_id)
    assert retried.returncode == 0, retried.stderr
    document = stack.wait_terminal(request_id)
    assert document["status"] == "completed", (document["counts"], stack.explain(request_id))
    assert wait_for(lambda: len(webhook_receiver.calls_to("alone")) == 2, 30)
    assert Webhook(stack.env["IMGPIPE_WEBHOOK_SECRET"]).verify(
        webhook_receiver.calls_to("alone")[1]["body"], webhook_receiver.calls_to("alone")[1]["headers"])["type"] \
        == "request.completed"
    assert {url: hits(paths[url]) for url in finished} == {url: 1 for url in finished}
    untouched = [url for url, count in hits_before.items() if count == 0]
    assert untouched and {url: hits(paths[url]) for url in untouched} == {url: 1 for url in untouched}
    with stack.instance() as instance:
        starts = [r.step_key for r in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)]
        assert starts.count(COMPRESS_STEP) == 1, starts
        assert stack.run_id_of(request_id) != run_id
        retry_run = stack.run_id_of(request_id)
        assert wait_for(lambda: instance.get_run_by_id(retry_run).status == DagsterRunStatus.SUCCESS, 30)
    print(f"run failed {failed_after:.1f} s after its only worker was killed")
