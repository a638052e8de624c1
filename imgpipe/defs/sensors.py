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
    run_status_sensor,
    sensor,
)

from imgpipe.backends import open_status_store, open_storage, processing_run_limit
from imgpipe.defs.assets import requests_partitions
from imgpipe.defs.jobs import deliver_webhook_job, end_failed_run_job
from imgpipe.defs.resources import ImgpipeResource
from imgpipe.intake.inbox import Inbox
from imgpipe.run_plan import plan_runs
from imgpipe.runs.launch import DIRECT_LAUNCH_GRACE, INBOX_SENSOR, processing_runs_going, run_request
from imgpipe.runs.tags import KIND_TAG, REQUEST_TAG, RUN_KEY_TAG
from imgpipe.status.models import RequestRow
from imgpipe.status.store import utcnow
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
    itself, a tick started a few milliseconds late is skipped on the next loop, and a 5 s check came every 10 s
    half the time (measured: ticks 5 and 10 s apart in turn). A second less makes the check due on the first loop
    at least `interval` seconds on."""
    return max(1, interval - 1)


def build_sensors(settings: Settings, process_job, shared_job) -> list[SensorDefinition]:
    """`process_job`: a request's own run (its partition's asset job); `shared_job`: small requests together."""
    @sensor(name=INBOX_SENSOR, jobs=[process_job, shared_job],
            minimum_interval_seconds=due_after(settings.sensor_interval), default_status=DefaultSensorStatus.RUNNING)
    def inbox_sensor(context: SensorEvaluationContext, imgpipe: ImgpipeResource) -> SensorResult:
        """Takes new CSVs from the inbox, then launches the runs of the queued requests that no launch at once took
        (folder drops; requests that came while every run slot was taken): a large request in a run of its own
        (the partition's asset job), small ones queued together in shared runs.

        Each request is given its run key once (kept in the status store until it is queued again), so every
        later ask is for the same run and Dagster launches each once, daemon restarts included. New runs are
        started only while fewer than `processing_run_limit` are going: the requests that wait meanwhile are
        grouped into fewer, fuller runs when room comes. A key given by a launch at once is left to its
        launcher for DIRECT_LAUNCH_GRACE (`imgpipe.runs.launch`)."""
        settings = imgpipe.settings()
        store = open_status_store(settings)
        for result in Inbox(settings, store, open_storage(settings)).take():
            verdict = "accepted" if result.accepted else f"rejected ({len(result.errors)} problems)"
            context.log.info(f"{result.file_name} -> request {result.request_id}: {verdict}")
        queued = store.queued_requests()
        if not queued:
            return SensorResult(run_requests=[])
        going = processing_runs_going(context.instance)
        # Asked for earlier, not created yet.
        asked = {r.run_key for r in queued if r.run_key} - {run.tags.get(RUN_KEY_TAG) for run in going}
        room = max(0, processing_run_limit(settings) - len(going) - len(asked))
        keyed_now = store.assign_run_keys({request_id: run.run_key
                                           for run in plan_runs([r for r in queued if not r.run_key])[:room]
                                           for request_id in run.request_ids})
        settled = utcnow() - DIRECT_LAUNCH_GRACE
        queued = [r for r in store.queued_requests() if r.run_key and (
            r.request_id in keyed_now or r.run_key_at is None or r.run_key_at <= settled)]
        if not queued:
            return SensorResult(run_requests=[])
        known = set(context.instance.get_dynamic_partitions(requests_partitions.name))
        new_keys = [r.request_id for r in queued if r.request_id not in known]
        runs: dict[str, list[RequestRow]] = {}
        for request in queued:
            runs.setdefault(request.run_key, []).append(request)
        return SensorResult(
            run_requests=[run_request(settings, run_key, requests) for run_key, requests in runs.items()],
            dynamic_partitions_requests=[requests_partitions.build_add_request(new_keys)] if new_keys else [],
        )

    def end_requests(context: RunStatusSensorContext, imgpipe: ImgpipeResource, reason: str):
        run = context.dagster_run
        run_key = run.tags.get(RUN_KEY_TAG)
        request_ids = imgpipe.store().requests_of_run(run_key) if run_key else []
        request_ids = request_ids or [i for i in [run.tags.get(REQUEST_TAG) or run.tags.get("dagster/partition")] if i]
        if not request_ids:
            return SkipReason(f"run {run.run_id} has no request")
        return end_run_request(run.run_id, request_ids, reason)

    @sensor(job=end_failed_run_job, minimum_interval_seconds=ENDED_RUN_CHECK_SECONDS,
            default_status=DefaultSensorStatus.RUNNING)
    def ended_run_sensor(context: SensorEvaluationContext, imgpipe: ImgpipeResource):
        """The backstop of the two run-status sensors below, which see only the events after their first tick: a
        request still processing whose run has failed or was canceled (a stack killed before those sensors ever
        ran, say) is ended the same way. Ending twice is harmless: the end job skips ended requests, and the
        webhook's ID is the request's and the run's."""
        ended: dict[str, list[str]] = {}
        for request in imgpipe.store().processing_requests():
            run = context.instance.get_run_by_id(request.run_id) if request.run_id else None
            if run is not None and run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
                ended.setdefault(run.run_id, []).append(request.request_id)
        if not ended:
            return SkipReason("no processing request has lost its run")
        return [end_run_request(run_id, request_ids, f"run {run_id} ended without ending its request")
                for run_id, request_ids in ended.items()]

    @run_status_sensor(run_status=DagsterRunStatus.FAILURE, monitored_jobs=[process_job, shared_job],
                       request_job=end_failed_run_job, default_status=DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=2)
    def failed_run_sensor(context: RunStatusSensorContext, imgpipe: ImgpipeResource):
        """A run that dies (an op error, a killed worker found by run monitoring) ends its requests as failed."""
        message = context.dagster_event.message if context.dagster_event else None
        return end_requests(context, imgpipe, f"run {context.dagster_run.run_id} failed: {message}")

    @run_status_sensor(run_status=DagsterRunStatus.CANCELED, monitored_jobs=[process_job, shared_job],
                       request_job=end_failed_run_job, default_status=DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=2)
    def canceled_run_sensor(context: RunStatusSensorContext, imgpipe: ImgpipeResource):
        return end_requests(context, imgpipe, f"run {context.dagster_run.run_id} was canceled")

    @sensor(job=deliver_webhook_job, minimum_interval_seconds=10, default_status=DefaultSensorStatus.RUNNING)
    def webhook_retry_sensor(context: SensorEvaluationContext, imgpipe: ImgpipeResource):
        """The webhook attempts due after the first minute, and any a dead run left behind."""
        due = imgpipe.store().webhooks_due_again(FIRST_ATTEMPT_GRACE_SECONDS)
        if not due:
            return SkipReason("no webhook attempt is due")
        return [RunRequest(run_key=f"{webhook_id}:{attempts}", tags={KIND_TAG: "webhook", **URGENT},
                           run_config={"ops": {"attempt_webhook": {"config": {"webhook_id": webhook_id}}}})
                for webhook_id, attempts in due]

    return [inbox_sensor, ended_run_sensor, failed_run_sensor, canceled_run_sensor, webhook_retry_sensor]


def end_run_request(run_id: str, request_ids: list[str], reason: str) -> RunRequest:
    """The run that ends the requests a dead run held; one per dead run (its run key)."""
    return RunRequest(
        run_key=run_id,
        run_config={"ops": {"end_failed_request": {"config": {
            "request_ids": request_ids, "run_id": run_id, "reason": reason}}}},
        tags={**({REQUEST_TAG: request_ids[0]} if len(request_ids) == 1 else {}), **URGENT},
    )
