"""The stack as a user starts it: a real `dagster-daemon` over a home of its own and the real REST API
(`imgpipe api`), each a process group, and the processes that belong to it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.models import RequestRow
from imgpipe_tests.servers import REPO, IsolatedHome, drop_into_inbox, free_port, wait_for

WARM_SERVER = b"imgpipe.runs.warm_server"

BIN = Path(sys.executable).parent
TERMINAL = {"completed", "completed_with_errors", "failed", "rejected"}


class Stack:
    def __init__(self, root: Path):
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        isolated = IsolatedHome.create(root, public_base_url=self.api)
        self.home, self.dagster_home, self.env = isolated.home, isolated.dagster_home, isolated.env
        self.env["IMGPIPE_WEBHOOK_RETRY_DELAYS"] = "1,2,30"
        self.store = DuckDBStatusStore(self.home / "imgpipe.duckdb")
        self.logs = root
        self.procs: list[subprocess.Popen] = []

    def start(self):
        self.procs = []
        for name, cmd in (("daemon", [BIN / "dagster-daemon", "run", "-w", "workspace.yaml"]),
                          ("api", [BIN / "imgpipe", "api", "--port", str(self.api_port)])):
            self.procs.append(subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=self.env,
                                               stdout=open(self.logs / f"{name}.log", "ab"),
                                               stderr=subprocess.STDOUT, start_new_session=True))
        assert wait_for(self._healthy, 60), "the API did not come up"

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.api}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def kill(self) -> None:
        """SIGKILL to every process group of the stack, as a lost machine or `kill -9` would."""
        for proc in self.procs:
            os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=20)

    def stop(self):
        for proc in self.procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def drop(self, name: str, text: str) -> None:
        drop_into_inbox(self.home, name, text)

    def request_for(self, file_name: str, timeout: float) -> RequestRow:
        found = wait_for(lambda: self.store.latest_request_for_file(file_name), timeout)
        assert found, f"no request for {file_name}; daemon log: {self.log_tail()}"
        return found

    def wait_terminal(self, request_id: str, timeout: float) -> RequestRow:
        request = wait_for(lambda: (r := self.store.get_request(request_id)) and r.status in TERMINAL and r,
                           timeout)
        assert request, f"{request_id} not terminal: {self.store.get_request(request_id)}; {self.log_tail()}"
        return request

    def log_tail(self) -> str:
        return (self.logs / "daemon.log").read_text(errors="replace")[-1500:]



def processes_with(variable: str, value: object) -> list[int]:
    """Every process (this one aside) whose environment sets `variable` to `value`."""
    marker = f"{variable}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def stack_processes(dagster_home: Path) -> list[int]:
    """Every process of the stacks over `dagster_home`: another stack's on the same machine, a benchmark's or a
    second test session's, have another DAGSTER_HOME and are left alone."""
    return processes_with("DAGSTER_HOME", dagster_home)


def run_workers(stack: Stack) -> list[int]:
    """The stack's run worker processes: each forked from a warm run server, so a child of one with its command."""
    def command(pid: int) -> bytes:
        return Path(f"/proc/{pid}/cmdline").read_bytes()

    workers = []
    for pid in stack_processes(stack.dagster_home):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if WARM_SERVER in command(pid) and WARM_SERVER in command(parent):
                workers.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return workers
