"""Sensors: the inbox (intake and run launch), failed runs, and webhook retries. All RUNNING by default."""

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_status_sensor,
    sensor,
)

from imgpipe.defs.assets import requests_partitions
from imgpipe.output.completion import complete_request
from imgpipe.webhooks.delivery import deliver, deliver_due
from imgpipe.intake.intake import Intake
from imgpipe.defs.jobs import process_request_job
from imgpipe.defs.resources import StatusStoreResource, StorageResource
from imgpipe.settings import Settings
from imgpipe.status.store import TERMINAL_STATUSES

SETTINGS = Settings.from_env()
REQUEST_TAG = "imgpipe/request_id"


@sensor(job=process_request_job, minimum_interval_seconds=SETTINGS.sensor_interval,
        default_status=DefaultSensorStatus.RUNNING)
def inbox_sensor(context: SensorEvaluationContext, status_store: StatusStoreResource,
                 storage: StorageResource) -> SensorResult:
    """Takes every new CSV from the inbox and launches one run per queued request.

    The run key is the request ID and its generation, so a request is launched once per (re)try however many
    ticks see it queued, daemon restarts included."""
    store = status_store.open()
    for result in Intake(Settings.from_env(), store, storage.open()).take_inbox():
        verdict = "accepted" if result.accepted else f"rejected ({len(result.errors)} problems)"
        context.log.info(f"{result.file_name} -> request {result.request_id}: {verdict}")
    queued = store.queued_requests()
    known = set(context.instance.get_dynamic_partitions(requests_partitions.name)) if queued else set()
    new_keys = [r["request_id"] for r in queued if r["request_id"] not in known]
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"{r['request_id']}:{r['generation']}",
                partition_key=r["request_id"],
                tags={REQUEST_TAG: r["request_id"], "imgpipe/source": r["source"],
                      "imgpipe/file_name": (r["file_name"] or "")[:200]},
            )
            for r in queued
        ],
        dynamic_partitions_requests=[requests_partitions.build_add_request(new_keys)] if new_keys else [],
    )


def _end_failed_run(context: RunStatusSensorContext, status_store: StatusStoreResource,
                    storage: StorageResource, reason: str) -> None:
    run = context.dagster_run
    request_id = run.tags.get(REQUEST_TAG) or run.tags.get("dagster/partition")
    if not request_id:
        return
    store = status_store.open()
    request = store.get_request(request_id)
    if request is None or request["status"] in TERMINAL_STATUSES:
        return
    # A later retry may already own the request; only the run that holds it (or never got to) may end it.
    if request["run_id"] not in (None, run.run_id) and request["status"] != "queued":
        return
    settings = Settings.from_env()
    completion = complete_request(settings, store, storage.open(), request_id, run.run_id, run_failure=reason)
    context.log.info(f"request {request_id} ended as failed: {reason}")
    if completion.webhook_id:
        deliver(settings, store, completion.webhook_id, inline=False)


@run_status_sensor(run_status=DagsterRunStatus.FAILURE, monitored_jobs=[process_request_job],
                   default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=2)
def failed_run_sensor(context: RunStatusSensorContext, status_store: StatusStoreResource,
                      storage: StorageResource):
    """A run that dies (an op error, a killed worker found by run monitoring) ends its request as failed."""
    message = context.dagster_event.message if context.dagster_event else None
    _end_failed_run(context, status_store, storage, f"run {context.dagster_run.run_id} failed: {message}")


@run_status_sensor(run_status=DagsterRunStatus.CANCELED, monitored_jobs=[process_request_job],
                   default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=2)
def canceled_run_sensor(context: RunStatusSensorContext, status_store: StatusStoreResource,
                        storage: StorageResource):
    _end_failed_run(context, status_store, storage, f"run {context.dagster_run.run_id} was canceled")


@sensor(minimum_interval_seconds=5, default_status=DefaultSensorStatus.RUNNING)
def webhook_retry_sensor(context: SensorEvaluationContext, status_store: StatusStoreResource):
    """Makes the webhook attempts that are due after the inline window, and any a crash left behind."""
    outcomes = deliver_due(Settings.from_env(), status_store.open())
    for webhook_id, state in outcomes.items():
        context.log.info(f"webhook {webhook_id}: {state}")
    return SkipReason(f"{len(outcomes)} webhook attempt(s) made") if outcomes else SkipReason("nothing due")
