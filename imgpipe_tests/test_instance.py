"""The distributed profile's Dagster instance (`imgpipe/package_data/distributed/dagster.yaml`,
`imgpipe/instance.py`), over the real PostgreSQL and an S3 server (moto): step logs staged with no TMPDIR set, and
every process of the profile (the daemon, the UI, `imgpipe worker`, `imgpipe api`) refusing to start, naming the
variable, when one it needs is missing, instead of starting and accepting work it can never do."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import boto3
import pytest
from dagster import DagsterInstance
from dagster._core.storage.compute_log_manager import ComputeIOType

from imgpipe.instance import IncompleteEnvironment
from imgpipe_tests.servers import REPO

BIN = Path(sys.executable).parent
DISTRIBUTED_YAML = REPO / "imgpipe" / "package_data" / "distributed" / "dagster.yaml"
LOGS_PREFIX = "deploy-t/dagster-logs"


@pytest.fixture
def distributed_env(tmp_path, postgres_url, s3_storage_env) -> dict[str, str]:
    """What README "Scaling out" exports, over a fresh database and bucket, TMPDIR not among it; DAGSTER_HOME
    holds the shipped dagster.yaml."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(DISTRIBUTED_YAML, dagster_home / "dagster.yaml")
    return {
        "IMGPIPE_PROFILE": "distributed", "IMGPIPE_DATABASE_URL": postgres_url,
        "IMGPIPE_BROKER_URL": "redis://127.0.0.1:6379/0",
        "IMGPIPE_STORAGE_URL": s3_storage_env["IMGPIPE_STORAGE_URL"],
        "IMGPIPE_WEBHOOK_SECRET": os.environ["IMGPIPE_WEBHOOK_SECRET"],
        "DAGSTER_COMPUTE_LOGS_BUCKET": s3_storage_env["S3_BUCKET"], "DAGSTER_COMPUTE_LOGS_PREFIX": LOGS_PREFIX,
        "DAGSTER_HOME": str(dagster_home), "IMGPIPE_HOME": str(tmp_path / "home"),
        **{k: v for k, v in s3_storage_env.items() if k.startswith("AWS_")},
    }


def test_step_logs_are_staged_in_the_system_temporary_folder_without_tmpdir(distributed_env, monkeypatch):
    monkeypatch.delenv("TMPDIR", raising=False)
    for name, value in distributed_env.items():
        monkeypatch.setenv(name, value)
    run_id = str(uuid.uuid4())

    with DagsterInstance.from_config(distributed_env["DAGSTER_HOME"]) as instance:
        manager = instance.compute_log_manager
        log_key = manager.build_log_key_for_run(run_id, "compress_batch")
        with manager.open_log_stream(log_key, ComputeIOType.STDERR) as stream:
            staged = Path(stream.name)
            stream.write("6 compressed, 0 failed\n")
        assert Path(tempfile.gettempdir()) in staged.parents, staged
        assert not staged.exists()  # uploaded, then removed here

        assert manager.get_log_data(log_key).stderr == b"6 compressed, 0 failed\n"
    key = f"{LOGS_PREFIX}/storage/{run_id}/compute_logs/compress_batch.err"
    assert boto3.client("s3").get_object(Bucket=distributed_env["DAGSTER_COMPUTE_LOGS_BUCKET"], Key=key)


@pytest.mark.parametrize("missing", ["DAGSTER_COMPUTE_LOGS_BUCKET", "IMGPIPE_BROKER_URL", "IMGPIPE_PROFILE"])
def test_the_instance_refuses_to_load_naming_what_is_missing(distributed_env, monkeypatch, missing):
    for name, value in distributed_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(missing)

    with pytest.raises(IncompleteEnvironment, match=missing):
        DagsterInstance.from_config(distributed_env["DAGSTER_HOME"])


# (process, the variable left out): each process of the profile, started as README "Scaling out" shows.
PROCESSES = {
    "daemon": [BIN / "dagster-daemon", "run", "-w", "workspace.yaml"],
    "ui": [BIN / "dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", "0"],
    "worker": [BIN / "imgpipe", "worker", "--name", "imgpipe-refused@test"],
    "api": [BIN / "imgpipe", "api", "--port", "0"],
}


@pytest.mark.parametrize(("process", "missing"), [
    ("daemon", "DAGSTER_COMPUTE_LOGS_BUCKET"),
    ("daemon", "IMGPIPE_BROKER_URL"),
    ("ui", "DAGSTER_COMPUTE_LOGS_PREFIX"),
    ("worker", "DAGSTER_COMPUTE_LOGS_BUCKET"),
    ("worker", "IMGPIPE_STORAGE_URL"),
    ("api", "IMGPIPE_WEBHOOK_SECRET"),
])
def test_a_process_missing_a_variable_refuses_to_start_naming_it(distributed_env, tmp_path, process, missing):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGPIPE_", "DAGSTER_", "AWS_"))
           and k != "TMPDIR"}
    env.update({k: v for k, v in distributed_env.items() if k != missing})
    if process == "worker":  # a worker has no DAGSTER_HOME: it checks the dagster.yaml the package ships
        env.pop("DAGSTER_HOME")
    log = tmp_path / f"{process}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(c) for c in PROCESSES[process]], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        returncode = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(10)
        pytest.fail(f"{process} without {missing} was still running after 60 s:\n"
                    f"{log.read_text(errors='replace')[-2000:]}")
    output = log.read_text(errors="replace")
    assert returncode != 0, output[-2000:]
    last_line = output.strip().splitlines()[-1]
    assert missing in last_line, output[-2000:]
