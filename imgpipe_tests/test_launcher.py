"""The warm run launcher's view of a run's worker: who it is (from the run's tags) and whether it still runs, as
run monitoring asks `check_run_worker_health`."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from dagster import DagsterRun
from dagster._core.launcher import WorkerStatus

from imgpipe.runs.launcher import WORKER_TAG, WarmRunLauncher, WorkerIdentity, worker_identity


def run_with_worker(identity: WorkerIdentity | None) -> DagsterRun:
    return DagsterRun(job_name="process_requests_job", tags={WORKER_TAG: identity.tag()} if identity else {})


def health(identity: WorkerIdentity | None) -> WorkerStatus:
    return WarmRunLauncher().check_run_worker_health(run_with_worker(identity)).status


def test_a_live_worker_is_running_and_a_gone_one_failed():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        identity = worker_identity(child.pid)
        assert WorkerIdentity.from_tags({WORKER_TAG: identity.tag()}) == identity
        assert health(identity) is WorkerStatus.RUNNING
    finally:
        child.kill()
        child.wait()
    assert health(identity) is WorkerStatus.FAILED


def test_a_later_process_with_the_same_pid_is_not_the_worker():
    identity = dataclasses.replace(worker_identity(os.getpid()), started=1)
    assert not identity.alive()
    assert health(identity) is WorkerStatus.FAILED


def test_a_worker_on_another_machine_or_boot_is_not_judged_from_here():
    here = worker_identity(os.getpid())
    for elsewhere in (dataclasses.replace(here, host="other-host", pid=1, started=1),
                      dataclasses.replace(here, boot_id="another-boot", pid=1, started=1)):
        assert health(elsewhere) is WorkerStatus.RUNNING


def test_a_run_without_a_recorded_worker_is_not_reported_running():
    assert WorkerIdentity.from_tags({}) is None and WorkerIdentity.from_tags({WORKER_TAG: "{"}) is None
    assert health(None) is WorkerStatus.UNKNOWN
