"""A queued request's run, asked for the same way by every launcher: the inbox sensor (folder drops, and the
backstop for any queued request without a run) and the launch at once of a request accepted through the REST
API, `imgpipe submit`, the Launchpad or `imgpipe retry`.

One request never gets two runs, whatever the timing:

- its run key is given once, by one conditional update in the status store (`assign_run_keys`): whoever gives it
  launches the run, and nobody else does;
- a run launched at once carries the inbox sensor's name and the run key in its tags, exactly as the sensor's
  own run would, so Dagster's run-key check skips it should the sensor ask for it too;
- the sensor asks for the run of a key given at once only after DIRECT_LAUNCH_GRACE (`imgpipe.run_plan`; the
  launching process may have died between the key and the run), and a launch at once that took longer than half
  of that gives up before submitting, leaving it to the sensor.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from dagster import DagsterInstance, DagsterRunStatus, RunRequest, RunsFilter
# The job through its code pointer, as a run worker loads it: the code location's own modules import this one.
from dagster._utils.hosted_user_process import recon_job_from_origin

from imgpipe.backends import Backends, processing_run_limit
from imgpipe.run_plan import DIRECT_LAUNCH_GRACE, OWN_RUN_IMAGES, single_run_key
from imgpipe.runs.partitions import requests_partitions
from imgpipe.runs.tags import (CODE_LOCATION_NAME, KIND_TAG, PROCESS_REQUESTS_JOB, REQUEST_ASSET_JOB, RUN_KEY_TAG,
                                SINGLE_REQUEST_TAG, request_tag)
from imgpipe.settings import Settings
from imgpipe.status.models import RequestRow, RequestStatus

INBOX_SENSOR = "inbox_sensor"
RUNS_GOING = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
              DagsterRunStatus.STARTED]
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def asset_job_from(settings: Settings) -> int:
    """The size (images) from which a request alone runs its partition of the asset job. On one machine a batch
    step gains nothing over the one-step job but costs its events, so only large requests take it; on Celery
    workers every request alone does, its images spread over the workers."""
    return 1 if settings.distributed else OWN_RUN_IMAGES


def run_request(settings: Settings, run_key: str, requests: Sequence[RequestRow]) -> RunRequest:
    """The run of `requests` under `run_key`: a request alone, from `asset_job_from` images, its partition's asset
    job (its images spread over batch steps, each asset a step in the UI); otherwise the one-step job that
    processes and ends each request on its own and records the same partitions' materializations, at a fraction
    of the steps' events."""
    tags = {RUN_KEY_TAG: run_key, **{request_tag(r.request_id): "true" for r in requests}}
    if len(requests) == 1:
        request = requests[0]
        tags |= {SINGLE_REQUEST_TAG: request.request_id, "imgpipe/source": request.source,
                 "imgpipe/file_name": (request.file_name or "")[:200]}
        if run_key == single_run_key(request) and (request.total_images or 0) >= asset_job_from(settings):
            return RunRequest(run_key=run_key, partition_key=request.request_id, job_name=REQUEST_ASSET_JOB,
                              tags=tags)
    return RunRequest(run_key=run_key, job_name=PROCESS_REQUESTS_JOB,
                      tags={**tags, "imgpipe/requests": str(len(requests))},
                      run_config={"ops": {"process_requests": {"config": {
                          "request_ids": [r.request_id for r in requests]}}}})


def processing_runs_going(instance: DagsterInstance) -> list:
    return list(instance.get_runs(RunsFilter(tags={KIND_TAG: "process"}, statuses=RUNS_GOING)))


class RunLauncherAtOnce:
    """Creates and submits request runs from this process, as the inbox sensor would ask for them. Holds the code
    location in-process (loaded on first use) for the jobs' snapshots and execution plans; one launch at a time
    from the threads of a process (the API's threadpool: a launch takes tens of milliseconds)."""

    def __init__(self, backends: Backends, instance: DagsterInstance, *, start_here: bool):
        """`start_here`: a long-lived process on the stack's machine (the API of the embedded profile) starts the
        run from its own warm run server, without the run queue's wait; any other process (the CLI, a
        Launchpad run, a distributed API) puts it in the queue, which the daemon's launcher takes within a
        second."""
        self.settings, self.store, self.instance = backends.settings, backends.store, instance
        self.start_here = start_here and not backends.settings.distributed
        self._location = None
        self._lock = threading.Lock()

    def launch(self, request_id: str) -> str | None:
        """The run ID of the request's run, launched now; None when it is not this call's to launch (not queued,
        already keyed, or no run slot free: the inbox sensor then launches it, grouped with others)."""
        with self._lock:
            return self._launch(request_id)

    def _launch(self, request_id: str) -> str | None:
        if len(processing_runs_going(self.instance)) >= processing_run_limit(self.settings):
            return None
        with self.store.held():  # the request read and its key given in one session of the status store
            request = self.store.get_request(request_id)
            if request is None or request.status is not RequestStatus.QUEUED or request.run_key:
                return None
            run_key = single_run_key(request)
            started = time.monotonic()
            if request_id not in self.store.assign_run_keys({request_id: run_key}):
                return None
        run_id = self._create_run(run_request(self.settings, run_key, [request]), request_id)
        if time.monotonic() - started > DIRECT_LAUNCH_GRACE.total_seconds() / 2:
            # The sensor may ask for this key any moment now: its run-key check finds this run (its tags are the
            # sensor's) and submits it if it is still NOT_STARTED; submitting here too could start it twice.
            return None
        if self.start_here:
            self.instance.launch_run(run_id, workspace=None)
        else:
            self.instance.submit_run(run_id, workspace=None)
        return run_id

    def _create_run(self, request: RunRequest, partition: str) -> str:
        from dagster._core.storage.tags import RUN_KEY_TAG as DAGSTER_RUN_KEY_TAG, SENSOR_NAME_TAG

        location = self._code_location()
        repository = location.get_repository(next(iter(location.get_repository_names())))
        remote_job = repository.get_full_job(request.job_name)
        self.instance.add_dynamic_partitions(requests_partitions.name, [partition])
        if request.partition_key is not None:
            job_def = recon_job_from_origin(remote_job.get_python_origin()).get_definition()
            request = request.with_resolved_tags_and_config(
                target_definition=job_def, dynamic_partitions_requests=[], dynamic_partitions_store=self.instance)
        plan = location.get_execution_plan(remote_job, request.run_config, step_keys_to_execute=None,
                                           known_state=None, instance=self.instance)
        tags = {**(remote_job.run_tags or {}), **request.tags, SENSOR_NAME_TAG: INBOX_SENSOR,
                DAGSTER_RUN_KEY_TAG: request.run_key}
        run = self.instance.create_run(
            job_name=remote_job.name, run_id=None, run_config=request.run_config,
            resolved_op_selection=remote_job.resolved_op_selection, step_keys_to_execute=None,
            status=DagsterRunStatus.NOT_STARTED, op_selection=None, root_run_id=None, parent_run_id=None,
            tags=tags, job_snapshot=remote_job.job_snapshot, execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot, remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(), asset_selection=None, asset_check_selection=None,
            asset_graph=repository.asset_graph)
        return run.run_id

    def warm_up(self) -> None:
        """Loads the code location (and, on one machine, starts the warm run server) now rather than on the first
        launch."""
        with self._lock:
            self._code_location()
        if self.start_here and hasattr(self.instance.run_launcher, "warm_up"):
            self.instance.run_launcher.warm_up()

    def _code_location(self):
        if self._location is None:
            from dagster._core.remote_origin import InProcessCodeLocationOrigin
            from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

            origin = InProcessCodeLocationOrigin(
                LoadableTargetOrigin(executable_path=sys.executable, module_name=CODE_LOCATION_NAME,
                                     working_directory=str(REPO_ROOT)),
                location_name=CODE_LOCATION_NAME)
            self._location = origin.create_location(self.instance)
        return self._location


def launcher_at_once(backends: Backends, *, start_here: bool,
                     wait_for_storage: float = 0.0) -> RunLauncherAtOnce | None:
    """This process's launcher at once, over the Dagster instance in DAGSTER_HOME; None where this process has
    no instance configured (a distributed API without DAGSTER_HOME: the inbox sensor launches its requests), or
    where the instance's SQLite storage has not been made after `wait_for_storage` seconds."""
    from imgpipe.instance import instance_at
    from imgpipe.settings import dagster_home_dir

    home = dagster_home_dir(backends.settings)
    if not (home / "dagster.yaml").is_file():
        return None
    storage = _storage_files(home)
    deadline = time.monotonic() + wait_for_storage
    while not all(path.is_file() for path in storage):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)
    return RunLauncherAtOnce(backends, instance_at(home), start_here=start_here)


def _storage_files(home: Path) -> list[Path]:
    """The files whose existence means the instance's storage is made (none for storage other than SQLite). An
    instance on SQLite (the embedded default, no `storage:` in dagster.yaml) is made by the first process that
    opens it. The shipped dagster.yaml's storages take turns making it (`imgpipe.runs.sqlite_storage`); Dagster's
    own, which a dagster.yaml copied before them still names, do not, and two processes making it at once stamp its
    schema twice (alembic then finds two heads, and the instance is unusable): so with those only the daemon makes
    it, and the others open it once it is there."""
    import yaml

    config = yaml.safe_load((home / "dagster.yaml").read_text()) or {}
    if config.get("storage") and "sqlite" not in config["storage"]:
        return []
    files = [home / "history" / "runs.db", home / "schedules" / "schedules.db"]
    # An `event_log_storage` key is the embedded one: every run's events in one consolidated file in DAGSTER_HOME.
    if config.get("event_log_storage"):
        files.append(home / "event_log.db")
    return files
