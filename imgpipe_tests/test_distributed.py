"""The distributed profile on this machine's real services: the Dagster instance and the status store in
PostgreSQL, steps on Celery workers started here with Redis as the broker, objects in an S3-compatible
server (moto) on loopback; then the same CSV through the embedded profile must give the same output CSV
(apart from the base URL and the request ID) and the same image bytes."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import psycopg2
import pytest
import redis
import requests
from dagster import DagsterEventType, DagsterInstance, instance_for_test
from standardwebhooks import Webhook

from imgpipe.settings import load_settings
from imgpipe_tests.images import save_jpeg
from imgpipe_tests.pipeline import csv_for, read_output, run, submit
from imgpipe_tests.postgres import fresh_database
from imgpipe_tests.s3 import moto_server
from imgpipe_tests.servers import REPO, IsolatedHome, free_port, wait_for

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
REDIS = "redis://127.0.0.1:6379"
WORKERS = ("imgpipe-w1@test", "imgpipe-w2@test")
TERMINAL = {"completed", "completed_with_errors", "failed"}


class DistributedStack:
    """Two `imgpipe worker`s, `dagster-daemon` and `imgpipe api`, over PostgreSQL, Redis and the S3 server; each
    process with an IMGPIPE_HOME of its own that no other process sees, as on machines of their own."""

    def __init__(self, root: Path, database_url: str, s3_env: dict, storage_url: str, broker_url: str):
        self.api = f"http://127.0.0.1:{free_port()}"
        isolated = IsolatedHome.create(root, public_base_url=self.api,
                                       dagster_yaml=REPO / "deploy" / "distributed" / "dagster.yaml")
        self.home, self.dagster_home, self.env = isolated.home, isolated.dagster_home, isolated.env
        self.env.update(s3_env)
        self.env.update({"IMGPIPE_PROFILE": "distributed", "IMGPIPE_DATABASE_URL": database_url,
                         "IMGPIPE_BROKER_URL": broker_url, "IMGPIPE_STORAGE_URL": storage_url,
                         "IMGPIPE_MAX_BATCHES": "2"})
        self.logs = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.homes = {name: root / f"{name}-home" for name in (*WORKERS, "daemon", "api")}

    def start(self) -> None:
        commands = {name: [BIN / "imgpipe", "worker", "--name", name] for name in WORKERS}
        commands["daemon"] = [BIN / "dagster-daemon", "run", "-w", "workspace.yaml"]
        commands["api"] = [BIN / "imgpipe", "api", "--port", self.api.rsplit(":", 1)[1]]
        for name, command in commands.items():
            self.homes[name].mkdir()
            env = {**self.env, "IMGPIPE_HOME": str(self.homes[name])}
            self.procs[name] = subprocess.Popen([str(c) for c in command], cwd=REPO, env=env,
                                                stdout=open(self.logs / f"{name}.log", "wb"),
                                                stderr=subprocess.STDOUT, start_new_session=True)
        assert wait_for(self._healthy, 60), f"the API did not come up: {self.log_tail('api')}"
        for name in WORKERS:
            assert wait_for(lambda: b"ready." in (self.logs / f"{name}.log").read_bytes(), 60), self.log_tail(name)

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.api}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        for proc in self.procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def log_tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]

    def instance(self) -> DagsterInstance:
        return DagsterInstance.from_config(str(self.dagster_home))


@pytest.fixture
def stack(tmp_path, monkeypatch):
    db = random.randrange(1, 16)  # a Redis database of its own, emptied before and after
    broker = redis.Redis.from_url(f"{REDIS}/{db}")
    try:
        broker.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not running on 127.0.0.1:6379 ({exc}); start it with: redis-server --daemonize yes "
                    "--bind 127.0.0.1 --port 6379 --save '' --appendonly no")
    bucket = f"imgpipe-{uuid.uuid4().hex[:8]}"
    with fresh_database() as database_url, moto_server(bucket) as s3_env:
        running = DistributedStack(tmp_path, database_url, s3_env, f"s3://{bucket}/deploy-a", f"{REDIS}/{db}")
        # The Dagster instance's configuration reads the database URL from this process's environment too.
        monkeypatch.setenv("IMGPIPE_DATABASE_URL", database_url)
        running.start()
        try:
            yield running
        finally:
            running.stop()
            broker.flushdb()


def test_a_request_runs_on_celery_workers_with_postgres_and_s3_and_matches_embedded(
        stack, tmp_path, image_server, image_root, webhook_receiver):
    folder = uuid.uuid4().hex[:8]
    for i in range(5):
        save_jpeg(image_root / folder / f"{i}.jpg", quality=55 + 8 * i, seed=i)
    urls = [image_server.url(f"img/{folder}/{i}.jpg") for i in range(5)]
    rows = [urls[0:2], [urls[2], image_server.url(f"status/404/{folder}"), urls[3]], [urls[4], urls[0]]]
    csv_text = csv_for(rows)

    answer = requests.post(f"{stack.api}/requests", files={"file": ("dist.csv", csv_text, "text/csv")},
                           data={"webhook_url": webhook_receiver.url("dist")}, timeout=30)
    assert answer.status_code == 202, answer.text
    request_id = answer.json()["request_id"]
    document = wait_for(lambda: (d := requests.get(f"{stack.api}/requests/{request_id}", timeout=10).json())
                        and d["status"] in TERMINAL and d, 180)
    assert document, f"not terminal; daemon: {stack.log_tail('daemon')}"

    # Status: in PostgreSQL, and no DuckDB file anywhere under IMGPIPE_HOME.
    assert document["status"] == "completed_with_errors"
    assert document["counts"] == {"total": 7, "pending": 0, "processing": 0, "compressed": 6, "failed": 1}
    with psycopg2.connect(stack.env["IMGPIPE_DATABASE_URL"]) as con, con.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM images WHERE request_id = %s GROUP BY status ORDER BY 1",
                    [request_id])
        assert cur.fetchall() == [("compressed", 6), ("failed", 1)]
        cur.execute("SELECT status, source, file_name FROM requests WHERE request_id = %s", [request_id])
        assert cur.fetchone() == ("completed_with_errors", "api", "dist.csv")
    # Nothing went through a local folder: no process's home holds a file (the API's and the daemon's
    # included), and there is no DuckDB file anywhere.
    assert {name: [p for p in home.rglob("*") if p.is_file()] for name, home in stack.homes.items()} == {
        name: [] for name in stack.homes}

    # Objects: the input, the images and the output CSV in the bucket, served by the API from there.
    s3 = boto3.client("s3", endpoint_url=stack.env["AWS_ENDPOINT_URL"])
    bucket = stack.env["IMGPIPE_STORAGE_URL"].split("/")[2]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="deploy-a/").get("Contents", [])}
    image_keys = sorted(k for k in keys if k.startswith(f"deploy-a/images/{request_id}/"))
    assert len(image_keys) == 5  # five unique URLs fetched, one of them a 404
    assert {f"deploy-a/requests/{request_id}/input.csv", f"deploy-a/outputs/{request_id}.csv"} <= keys
    output_csv = requests.get(f"{stack.api}/requests/{request_id}/output.csv", timeout=10)
    assert output_csv.status_code == 200
    assert output_csv.content == s3.get_object(Bucket=bucket, Key=f"deploy-a/outputs/{request_id}.csv")["Body"].read()
    first = document["products"][0]["images"][0]["output_url"]
    assert requests.get(first, timeout=10).headers["content-type"] == "image/jpeg"

    # One webhook, signed.
    assert wait_for(lambda: webhook_receiver.calls_to("dist"), 30)
    [call] = webhook_receiver.calls_to("dist")
    payload = Webhook(stack.env["IMGPIPE_WEBHOOK_SECRET"]).verify(call["body"], call["headers"])
    assert (payload["type"], payload["request_id"]) == ("request.completed", request_id)

    # Every step ran in a process of one of the Celery workers started here.
    with stack.instance() as instance:
        records = instance.all_logs(run_id_of(stack, request_id))
    steps = {r.step_key for r in records if r.dagster_event and r.dagster_event.event_type == DagsterEventType.STEP_SUCCESS}
    assert {"upload_manifest", "output_csv", "compressed_images.plan_batches"} <= steps
    in_celery = {r.step_key: r.dagster_event.engine_event_data.metadata["Celery worker"].value for r in records
                 if r.dagster_event and r.dagster_event.event_type == DagsterEventType.ENGINE_EVENT
                 and "Celery worker" in r.dagster_event.engine_event_data.metadata}
    assert steps <= set(in_celery) and set(in_celery.values()) <= set(WORKERS), in_celery
    worker_pids = {stack.procs[name].pid for name in WORKERS}
    step_pids = {r.dagster_event.pid for r in records
                 if r.dagster_event and r.dagster_event.event_type == DagsterEventType.STEP_START}
    assert step_pids and all(parent_of(pid) in worker_pids for pid in step_pids), (step_pids, worker_pids)

    # The embedded profile, on the same CSV: the same output CSV and the same image bytes.
    settings = load_settings()
    with instance_for_test() as instance:
        embedded_id = submit(settings, csv_text, f"embedded-{folder}.csv")
        assert run(instance, embedded_id)[0]
    embedded_csv = (settings.outputs_dir / f"{embedded_id}.csv").read_bytes().decode()
    assert len(read_output(settings, embedded_id)) == 4
    assert embedded_csv.replace(f"{settings.public_base_url}/images/{embedded_id}/", "BASE/") == \
        output_csv.content.decode().replace(f"{stack.api}/images/{request_id}/", "BASE/")
    embedded_images = {p.name: p.read_bytes() for p in (settings.images_dir / embedded_id).iterdir()}
    distributed_images = {k.rsplit("/", 1)[1]: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in image_keys}
    assert embedded_images == distributed_images


def run_id_of(stack: DistributedStack, request_id: str) -> str:
    with psycopg2.connect(stack.env["IMGPIPE_DATABASE_URL"]) as con, con.cursor() as cur:
        cur.execute("SELECT run_id FROM requests WHERE request_id = %s", [request_id])
        return cur.fetchone()[0]


def parent_of(pid: int) -> int:
    """The parent of a live process (Celery's pool processes outlive the tasks they ran)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("PPid:"))
