"""Sensors decide and launch; the work is done in runs. All RUNNING by default.

- `inbox_sensor`: takes the inbox's new files (a bounded number per tick) and launches the runs of the queued
  requests, whichever way they came in (folder, REST API, Launchpad, retry): a large request in a run of its
  own, small ones queued together in shared runs (`imgpipe.run_plan`).
- `failed_run_sensor`, `canceled_run_sensor`: a processing run that dies launches `end_failed_run_job` for the
  requests it held.
- `webhook_retry_sensor`: launches `deliver_webhook_job` for each webhook attempt that falls due.
"""
from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    build_resources,
    run_status_sensor,
    sensor,
)

from imgpipe.backends import processing_run_limit
from imgpipe.defs.jobs import deliver_webhook_job, end_failed_run_job
from imgpipe.defs.resources import ImgpipeResource
from imgpipe.intake.inbox import Inbox
from imgpipe.run_plan import runs_to_ask_for
from imgpipe.runs.launch import INBOX_SENSOR, processing_runs_going, run_request
from imgpipe.runs.partitions import requests_partitions
from imgpipe.runs.tags import KIND_TAG, RUN_KEY_TAG, SINGLE_REQUEST_TAG
from imgpipe.settings import Settings

# A queued webhook that no run attempted within this many seconds lost its run; the retry sensor takes it.
FIRST_ATTEMPT_GRACE_SECONDS = 90
# How often processing requests are checked for a run that ended without them.
ENDED_RUN_CHECK_SECONDS = 15
# The short jobs go before queued processing runs.
URGENT = {"dagster/priority": "10"}


def due_after(interval: int) -> int:
    """The minimum interval to give Dagster for a check every `interval` seconds. The daemon looks at its sensors
    on a loop of 5 s and skips one whose last tick started less than its minimum interval ago: given the interval
    itself, a tick started a few milliseconds late is skipped on the next loop, and the check comes at twice its
    interval half the time (docs/performance.md#the-run-lifecycle-one-image-and-a-re-upload, "The inbox's
    check"). A second less makes the check due on the first loop at least `interval` seconds on."""
    return max(1, interval - 1)


def build_sensors(settings: Settings, process_job, shared_job, imgpipe: ImgpipeResource) -> list[SensorDefinition]:
    """`process_job`: a request's own run (its partition's asset job); `shared_job`: small requests together;
    `imgpipe`: the code location's resource, as `Definitions` has it."""
    processing_jobs = [process_job, shared_job]
    return [inbox_sensor_for(settings, processing_jobs), ended_run_sensor, *dead_run_sensors(processing_jobs, imgpipe),
            webhook_retry_sensor]


def inbox_sensor_for(settings: Settings, processing_jobs: list) -> SensorDefinition:
    @sensor(name=INBOX_SENSOR, jobs=processing_jobs, minimum_interval_seconds=due_after(settings.sensor_interval),
            default_status=DefaultSensorStatus.RUNNING)
    def inbox_sensor(context: SensorEvaluationContext, imgpipe: ImgpipeResource) -> SensorResult:
        """Takes new CSVs from the inbox, then launches the runs of the queued requests that no launch at once took
        (folder drops; requests that came while every run slot was taken): a large request in a run of its own
        (the partition's asset job), small ones queued together in shared runs. Which runs, and when, is
        `imgpipe.run_plan.runs_to_ask_for`'s: a request's run is asked for under one run key every time, so
        Dagster launches it once, daemon restarts included."""
        backends = imgpipe.backends()
        settings = backends.settings
        for result in Inbox(backends).take():
            verdict = "accepted" if result.accepted else f"rejected ({len(result.errors)} problems)"
            context.log.info(f"{result.file_name} -> request {result.request_id}: {verdict}")
        going = [run.tags.get(RUN_KEY_TAG) for run in processing_runs_going(context.instance)]
        runs = runs_to_ask_for(backends.store, going, processing_run_limit(settings))
        known = set(context.instance.get_dynamic_partitions(requests_partitions.name))
        new_keys = [r.request_id for requests in runs.values() for r in requests if r.request_id not in known]
        return SensorResult(
            run_requests=[run_request(settings, run_key, requests) for run_key, requests in runs.items()],
            dynamic_partitions_requests=[requests_partitions.build_add_request(new_keys)] if new_keys else [],
        )

    return inbox_sensor


def dead_run_sensors(processing_jobs: list, imgpipe: ImgpipeResource) -> list[SensorDefinition]:
    """A processing run that fails or is canceled ends its requests. These two look every few seconds and almost
    always find nothing: they do not ask Dagster for the resource, which it would build for every tick (two copies
    of its 47 fields, about 17 ms of the code server's CPU a tick), but build it themselves, as Dagster does, on
    the rare tick that finds a run (`end_requests`)."""
    @run_status_sensor(run_status=DagsterRunStatus.FAILURE, monitored_jobs=processing_jobs,
                       request_job=end_failed_run_job, default_status=DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=2)
    def failed_run_sensor(context: RunStatusSensorContext):
        """A run that dies (an op error, a killed worker found by run monitoring) ends its requests as failed."""
        message = context.dagster_event.message if context.dagster_event else None
        return end_requests(context, imgpipe, f"run {context.dagster_run.run_id} failed: {message}")

    @run_status_sensor(run_status=DagsterRunStatus.CANCELED, monitored_jobs=processing_jobs,
                       request_job=end_failed_run_job, default_status=DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=2)
    def canceled_run_sensor(context: RunStatusSensorContext):
        return end_requests(context, imgpipe, f"run {context.dagster_run.run_id} was canceled")

    return [failed_run_sensor, canceled_run_sensor]


def end_requests(context: RunStatusSensorContext, imgpipe: ImgpipeResource, reason: str):
    run = context.dagster_run
    run_key = run.tags.get(RUN_KEY_TAG)
    request_ids = []
    if run_key:
        with build_resources({"imgpipe": imgpipe}) as resources:
            request_ids = resources.imgpipe.backends().store.requests_of_run(run_key)
    lone_request = run.tags.get(SINGLE_REQUEST_TAG) or run.tags.get("dagster/partition")
    request_ids = request_ids or ([lone_request] if lone_request else [])
    if not request_ids:
        return SkipReason(f"run {run.run_id} has no request")
    return end_run_request(run.run_id, request_ids, reason)


@sensor(job=end_failed_run_job, minimum_interval_seconds=ENDED_RUN_CHECK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING)
def ended_run_sensor(context: SensorEvaluationContext, imgpipe: ImgpipeResource):
    """The backstop of the two run-status sensors (`dead_run_sensors`), which see only the events after their
    first tick: a request still processing whose run has failed or was canceled (a stack killed before those
    sensors ever ran, say) is ended the same way. Ending twice is harmless: the end job skips ended requests, and
    the webhook's ID is the request's and the run's."""
    ended: dict[str, list[str]] = {}
    for request in imgpipe.backends().store.processing_requests():
        run = context.instance.get_run_by_id(request.run_id) if request.run_id else None
        if run is not None and run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
            ended.setdefault(run.run_id, []).append(request.request_id)
    if not ended:
        return SkipReason("no processing request has lost its run")
    return [end_run_request(run_id, request_ids, f"run {run_id} ended without ending its request")
            for run_id, request_ids in ended.items()]


@sensor(job=deliver_webhook_job, minimum_interval_seconds=10, default_status=DefaultSensorStatus.RUNNING)
def webhook_retry_sensor(context: SensorEvaluationContext, imgpipe: ImgpipeResource):
    """The webhook attempts due after the first minute, and any a dead run left behind."""
    due = imgpipe.backends().store.webhooks_due_again(FIRST_ATTEMPT_GRACE_SECONDS)
    if not due:
        return SkipReason("no webhook attempt is due")
    return [RunRequest(run_key=f"{webhook_id}:{attempts}", tags={KIND_TAG: "webhook", **URGENT},
                       run_config={"ops": {"attempt_webhook": {"config": {"webhook_id": webhook_id}}}})
            for webhook_id, attempts in due]


def end_run_request(run_id: str, request_ids: list[str], reason: str) -> RunRequest:
    """The run that ends the requests a dead run held; one per dead run (its run key)."""
    return RunRequest(
        run_key=run_id,
        run_config={"ops": {"end_failed_request": {"config": {
            "request_ids": request_ids, "run_id": run_id, "reason": reason}}}},
        tags={**({SINGLE_REQUEST_TAG: request_ids[0]} if len(request_ids) == 1 else {}), **URGENT},
    )
