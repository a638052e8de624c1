"""`WarmRunLauncher`: Dagster's `RunLauncher` interface, each run in a worker forked from the warm run server.

Named in `dagster.yaml` (`run_launcher:`), so it launches every run of the instance: the processing runs, the
Launchpad's, the webhook attempts, the ends of dead runs. Launches happen where the run coordinator dequeues them
(the daemon); the server is started there on the first launch, by a thread that lives as long as the server does
(PR_SET_PDEATHSIG follows the thread that forked, not the process).

Unlike Dagster's `DefaultRunLauncher` it knows its workers, so run monitoring works: each worker writes who it is
(host, boot, pid, process start time) into its run's tags before the run starts, and
`check_run_worker_health` compares that with the live process table. A worker that is gone (killed, out of
memory, its stack stopped or lost) is reported FAILED within one monitoring interval, whichever process of
whichever stack asks, and Dagster marks its run failed; the failed-run sensor then ends the run's requests.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dagster import DagsterInstance, DagsterRun
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData

WORKER_TAG = "imgpipe/run_worker"
PROC = Path("/proc")


@dataclass(frozen=True)
class WorkerIdentity:
    """A process, told apart from any later one that reuses its pid: its start time since this boot."""

    host: str
    boot_id: str
    pid: int
    started: int  # clock ticks after boot, field 22 of /proc/<pid>/stat

    def tag(self) -> str:
        return json.dumps({"host": self.host, "boot_id": self.boot_id, "pid": self.pid, "started": self.started})

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "WorkerIdentity | None":
        try:
            fields = json.loads(tags[WORKER_TAG])
            return cls(str(fields["host"]), str(fields["boot_id"]), int(fields["pid"]), int(fields["started"]))
        except (KeyError, TypeError, ValueError):
            return None

    def alive(self) -> bool:
        """Whether this very process still runs (a zombie has ended)."""
        state = _process_state(self.pid)
        return state is not None and state[1] == self.started and state[0] not in ("Z", "X")

    def on_this_machine(self) -> bool:
        return self.host == socket.gethostname() and self.boot_id == _boot_id()


def worker_identity(pid: int) -> WorkerIdentity:
    state = _process_state(pid)
    if state is None:
        raise ProcessLookupError(pid)
    return WorkerIdentity(socket.gethostname(), _boot_id(), pid, state[1])


def _boot_id() -> str:
    return (PROC / "sys/kernel/random/boot_id").read_text().strip()


def _process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks) of a process, or None when there is none of that pid."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])


def execute_run(instance: DagsterInstance, run_id: str, identity: WorkerIdentity) -> int:
    """The run in this process, as Dagster's run worker executes it; the worker's identity is in the run's tags
    before its first event, so that monitoring can always tell whether a started run still has its worker."""
    from dagster._core.events import EngineEventData
    from dagster._core.execution.api import execute_run_iterator
    from dagster._utils.hosted_user_process import recon_job_from_origin
    from dagster._core.storage.dagster_run import DagsterRunStatus

    instance.add_run_tags(run_id, {WORKER_TAG: identity.tag()})
    run = instance.get_run_by_id(run_id)
    if run is None or run.job_code_origin is None:
        raise ValueError(f"run {run_id} is not in the instance, or has no code origin")
    instance.report_engine_event(f"Started process for run (pid: {identity.pid}), forked from the warm run server.",
                                 run, EngineEventData.in_process(identity.pid))
    for _event in execute_run_iterator(recon_job_from_origin(run.job_code_origin), run, instance):
        pass
    ended = instance.get_run_by_id(run_id)
    return 0 if ended is not None and ended.status == DagsterRunStatus.SUCCESS else 1


class WarmServer:
    """The warm run server of this process: started on the first run, again if it died."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def ensure_started(self) -> None:
        with self._lock:
            self._ensure_started()

    def _ensure_started(self) -> None:
        if self._process is None or self._process.poll() is not None:
            self._process = self._start()

    def start_run(self, serialized_args: str) -> int:
        with self._lock:
            self._ensure_started()
            assert self._process and self._process.stdin and self._process.stdout
            self._process.stdin.write(serialized_args + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the warm run server exited before it answered; see the daemon's log")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return int(answer["pid"])

    def _start(self) -> subprocess.Popen:
        started: list[subprocess.Popen] = []
        ready = threading.Event()

        def keep() -> None:
            # This thread forks the server and outlives it: the server's PR_SET_PDEATHSIG is tied to it.
            started.append(subprocess.Popen(
                [sys.executable, "-m", "imgpipe.runs.warm_server", str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1))
            ready.set()
            started[0].wait()

        threading.Thread(target=keep, name="imgpipe-warm-run-server", daemon=True).start()
        ready.wait()
        return started[0]

    def stop(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                assert self._process.stdin
                self._process.stdin.close()
                self._process.wait(timeout=10)


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    def __init__(self, inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        self._server = WarmServer()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
                          ) -> "WarmRunLauncher":
        return cls(inst_data=inst_data)

    def warm_up(self) -> None:
        """Starts the warm run server now, so that the first run does not wait for its imports."""
        self._server.ensure_started()

    def launch_run(self, context: LaunchRunContext) -> None:
        from dagster._grpc.types import ExecuteRunArgs
        from dagster._serdes import serialize_value

        run = context.dagster_run
        if run.job_code_origin is None:
            raise ValueError(f"run {run.run_id} has no code origin to execute")
        args = ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id, instance_ref=self._instance.get_ref())
        pid = self._server.start_run(serialize_value(args))
        self._instance.report_engine_event(f"Launched the run in a worker forked from the warm run server (pid {pid}).",
                                           run, cls=self.__class__)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        worker = WorkerIdentity.from_tags(run.tags)
        self._instance.report_run_canceling(run)
        if worker is None or not worker.on_this_machine() or not worker.alive():
            # Nothing to interrupt here: a worker that never started, or is gone, cannot end its run itself.
            self._instance.report_run_canceled(run, "Its run worker was not running; the run is canceled.")
            return True
        # The worker turns SIGINT into a KeyboardInterrupt at the next safe point and marks the run canceled.
        os.kill(worker.pid, signal.SIGINT)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = WorkerIdentity.from_tags(run.tags)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run has no worker recorded: it was not launched "
                                                              "by imgpipe's run launcher, or its worker never started")
        if not worker.on_this_machine():
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"its worker is on {worker.host}, not checked here")
        if worker.alive():
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"its run worker (pid {worker.pid} on {worker.host}) is "
                                                         "gone: killed, or its stack stopped")

    def dispose(self) -> None:
        self._server.stop()

