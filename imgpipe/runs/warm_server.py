"""The warm run server: `python -m imgpipe.runs.warm_server`, started and fed by `WarmRunLauncher`.

A run still gets an OS process of its own, but not a fresh interpreter: this server imports Dagster, pandas,
pandera, the image policy and the code location once, resolves every job, freezes its heap, and then forks a run
worker per run. The worker starts with all of that in place and goes straight to the run, where Dagster's own
`dagster api execute_run` imports the same modules first
(docs/operations.md#runs-launched-at-once-started-warm-supervised).

Where a run compresses its images in its own process (the embedded profile's in-process executor), the server also
keeps a fork server (`imgpipe.images.fork_server`) started ahead of need for the next worker, which adopts it: a
fresh one would start an interpreter at the start of every run
(docs/performance.md#the-run-lifecycle-one-image-and-a-re-upload, "A fork server ready"). Only the worker holds
that server's end of the pipe, so the server exits with the worker (end of file), as one of its own would.

Lifetimes: the server dies with the process that started it (PR_SET_PDEATHSIG), and each worker with the server,
so that stopping or killing a stack leaves no run worker behind; a run whose worker died that way is found by run
monitoring (`WarmRunLauncher.check_run_worker_health`) and marked failed.

Protocol, over the server's stdin and stdout, a line each way per run: in, the run's `ExecuteRunArgs` serialized
by Dagster's serdes (JSON, no newline); out, `{"pid": ...}` of the worker that took it, or `{"error": ...}`.
EOF on stdin stops the server.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sys
import traceback
from typing import TYPE_CHECKING

from imgpipe.lifetime import die_with_parent

if TYPE_CHECKING:
    from imgpipe.settings import Settings


def warm_up() -> Settings:
    """Everything a run imports and resolves before its first event, done once here for every worker; the
    settings of this process's environment, which the code location is built from too."""
    from dagster._core.execution.api import execute_run_iterator  # noqa: F401  the run's machinery

    from imgpipe.backends import open_status_store
    from imgpipe.definitions import defs
    from imgpipe.settings import load_settings

    # The call a worker's `recon_job_from_origin` makes too (the run's code pointer names `defs`): it returns the
    # same Definitions, built once per process, whose repository then already holds every job resolved here.
    repository = defs().get_repository_def()
    for job in repository.get_all_jobs():
        repository.get_job(job.name)
    settings = load_settings()
    # The status store's module imported and its schema checked here rather than in every worker: DuckDB's import
    # and the check's session took a run 0.3-0.4 s of CPU (docs/performance.md#re-uploads). A store out of
    # reach now is the run's to report, when it needs it.
    with contextlib.suppress(Exception):
        open_status_store(settings).ensure_schema()
    return settings


class Instances:
    """The Dagster instance of each ref the launcher sends (one, in practice), made once in the server: its storages
    hold engines, not connections, so a worker inherits them ready, schema checks done."""

    def __init__(self):
        self._by_ref: dict[str, object] = {}

    def of(self, args) -> object:
        from dagster import DagsterInstance
        from dagster._serdes import serialize_value

        key = serialize_value(args.instance_ref)
        if key not in self._by_ref:
            self._by_ref[key] = DagsterInstance.from_ref(args.instance_ref)
        return self._by_ref[key]


def run_worker(args, instance) -> int:
    """The body of a forked worker: the run, as Dagster's run worker executes it."""
    from dagster._utils.interrupts import capture_interrupts

    from imgpipe.runs.launcher import execute_run, worker_identity

    with capture_interrupts():
        return execute_run(instance, args.run_id, worker_identity(os.getpid()))


class SpareCompressor:
    """A fork server started ahead of need, for the next run worker to adopt; none where runs compress elsewhere."""

    def __init__(self, wanted: bool):
        self.wanted = wanted
        self._spare = None

    def refill(self) -> None:
        if self.wanted and self._spare is None:
            from imgpipe.images.compressor import start_server

            self._spare = start_server()

    def take(self):
        spare, self._spare = self._spare, None
        return spare


def _runs_compress_here(settings: Settings) -> bool:
    return not settings.distributed and settings.executor == "in_process"


def _fork_worker(line: str, server_pid: int, instances: Instances, spares: SpareCompressor) -> int:
    from dagster._grpc.types import ExecuteRunArgs
    from dagster._serdes import deserialize_value

    args = deserialize_value(line, ExecuteRunArgs)
    instance = instances.of(args)
    spare = spares.take()
    pid = os.fork()
    if pid:
        if spare is not None:  # the worker's now; without these ends the fork server ends with the worker
            spare.stdin.close()
            spare.stdout.close()
        return pid
    code = 1
    try:
        if spare is not None:
            from imgpipe.images.compressor import adopt_server

            adopt_server(spare.pid, spare.stdin, spare.stdout)  # the Popen's ends, the client's from now on
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server's SIG_IGN would break the run's waitpid
        signal.signal(signal.SIGINT, signal.default_int_handler)
        die_with_parent(server_pid)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(2, 1)  # the protocol's pipe is the server's: the run prints to the log the server writes to
        code = run_worker(args, instance)
    except BaseException:  # noqa: BLE001  a worker reports and exits; it never returns into the server's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(parent: int) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal is the stack's to handle
    settings = warm_up()
    gc.collect()
    gc.freeze()  # a worker's collector then never touches (and so copies) the pages it shares with the server
    server_pid = os.getpid()
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints go to the log, never into the protocol
    instances = Instances()
    spares = SpareCompressor(wanted=_runs_compress_here(settings))
    spares.refill()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            answer = {"pid": _fork_worker(line, server_pid, instances, spares)}
        except Exception as exc:  # noqa: BLE001  the launcher reports it on the run; the server serves on
            answer = {"error": f"could not start a run worker: {type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        spares.refill()  # after the answer: the launcher waits for that, not for the next run's fork server


if __name__ == "__main__":
    serve(int(sys.argv[1]))
