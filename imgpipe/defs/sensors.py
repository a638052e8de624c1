"""Sensors decide and launch; the work is done in runs. All RUNNING by default.

- `inbox_sensor`: takes the inbox's new files (a bounded number per tick) and launches one run per queued
  request, whichever way it came in (folder, REST API, Launchpad, retry).
- `failed_run_sensor`, `canceled_run_sensor`: a processing run that dies launches `end_failed_run_job`.
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

from imgpipe.defs.assets import requests_partitions
from imgpipe.defs.jobs import KIND_TAG, deliver_webhook_job, end_failed_run_job
from imgpipe.defs.resources import ImgpipeResource
from imgpipe.intake.inbox import Inbox
from imgpipe.settings import Settings

REQUEST_TAG = "imgpipe/request_id"
# A queued webhook that no run attempted within this many seconds lost its run; the retry sensor takes it.
FIRST_ATTEMPT_GRACE_SECONDS = 90
# The short jobs go before queued processing runs.
URGENT = {"dagster/priority": "10"}


def build_sensors(settings: Settings, process_job) -> list[SensorDefinition]:
    @sensor(job=process_job, minimum_interval_seconds=settings.sensor_interval,
            default_status=DefaultSensorStatus.RUNNING)
    def inbox_sensor(context: SensorEvaluationContext, imgpipe: ImgpipeResource) -> SensorResult:
        """Takes new CSVs from the inbox, then launches one run per queued request.

        The run key is the request ID and its generation, so a request is launched once per (re)try however
        many ticks see it queued, daemon restarts included."""
        store = imgpipe.store()
        for result in Inbox(imgpipe.settings(), store, imgpipe.storage()).take():
            verdict = "accepted" if result.accepted else f"rejected ({len(result.errors)} problems)"
            context.log.info(f"{result.file_name} -> request {result.request_id}: {verdict}")
        queued = store.queued_requests()
        known = set(context.instance.get_dynamic_partitions(requests_partitions.name)) if queued else set()
        new_keys = [r.request_id for r in queued if r.request_id not in known]
        return SensorResult(
            run_requests=[
                RunRequest(
                    run_key=f"{r.request_id}:{r.generation}",
                    partition_key=r.request_id,
                    tags={REQUEST_TAG: r.request_id, "imgpipe/source": r.source,
                          "imgpipe/file_name": (r.file_name or "")[:200]},
                )
                for r in queued
            ],
            dynamic_partitions_requests=[requests_partitions.build_add_request(new_keys)] if new_keys else [],
        )

    def end_request(context: RunStatusSensorContext, reason: str):
        run = context.dagster_run
        request_id = run.tags.get(REQUEST_TAG) or run.tags.get("dagster/partition")
        if not request_id:
            return SkipReason(f"run {run.run_id} has no request")
        return RunRequest(
            run_key=run.run_id,
            run_config={"ops": {"end_failed_request": {"config": {
                "request_id": request_id, "run_id": run.run_id, "reason": reason}}}},
            tags={REQUEST_TAG: request_id, **URGENT},
        )

    @run_status_sensor(run_status=DagsterRunStatus.FAILURE, monitored_jobs=[process_job],
                       request_job=end_failed_run_job, default_status=DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=2)
    def failed_run_sensor(context: RunStatusSensorContext):
        """A run that dies (an op error, a killed worker found by run monitoring) ends its request as failed."""
        message = context.dagster_event.message if context.dagster_event else None
        return end_request(context, f"run {context.dagster_run.run_id} failed: {message}")

    @run_status_sensor(run_status=DagsterRunStatus.CANCELED, monitored_jobs=[process_job],
                       request_job=end_failed_run_job, default_status=DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=2)
    def canceled_run_sensor(context: RunStatusSensorContext):
        return end_request(context, f"run {context.dagster_run.run_id} was canceled")

    @sensor(job=deliver_webhook_job, minimum_interval_seconds=10, default_status=DefaultSensorStatus.RUNNING)
    def webhook_retry_sensor(context: SensorEvaluationContext, imgpipe: ImgpipeResource):
        """The webhook attempts due after the first minute, and any a dead run left behind."""
        due = imgpipe.store().webhooks_due_again(FIRST_ATTEMPT_GRACE_SECONDS)
        if not due:
            return SkipReason("no webhook attempt is due")
        return [RunRequest(run_key=f"{webhook_id}:{attempts}", tags={KIND_TAG: "webhook", **URGENT},
                           run_config={"ops": {"attempt_webhook": {"config": {"webhook_id": webhook_id}}}})
                for webhook_id, attempts in due]

    return [inbox_sensor, failed_run_sensor, canceled_run_sensor, webhook_retry_sensor]
