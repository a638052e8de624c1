"""Retention in Dagster: with IMGPIPE_RETENTION_DAYS set, a daily schedule runs `purge_old_requests_job`, which
purges the requests older than that (`imgpipe.retention`) and their dynamic partitions."""
from dagster import (
    DagsterInstance,
    DefaultScheduleStatus,
    OpExecutionContext,
    RunsFilter,
    ScheduleDefinition,
    job,
    op,
)

from imgpipe.defs.assets import requests_partitions
from imgpipe.runs.tags import KIND_TAG, REQUEST_TAG
from imgpipe.defs.resources import ImgpipeResource
from imgpipe.retention import PurgePlan, parse_statuses, purge
from imgpipe.settings import Settings


def partition_forgetter(instance: DagsterInstance, delete_runs: bool):
    """Removes a purged request's dynamic partition (its materializations go with it from the asset's view), and
    with `delete_runs` its runs too."""
    def forget(request_id: str) -> None:
        if delete_runs:
            for record in instance.get_run_records(RunsFilter(tags={REQUEST_TAG: request_id})):
                instance.delete_run(record.dagster_run.run_id)
        if instance.has_dynamic_partition(requests_partitions.name, request_id):
            instance.delete_dynamic_partition(requests_partitions.name, request_id)

    return forget


@op
def purge_old_requests(context: OpExecutionContext, imgpipe: ImgpipeResource) -> None:
    settings = imgpipe.settings()
    # Only requests that have ended; one that a retry queued again since it was listed is refused by the store.
    plan = PurgePlan(older_than=settings.retention_period, statuses=parse_statuses(None))
    purged = []
    for outcome in purge(imgpipe.store(), imgpipe.storage(), plan,
                         forget_partition=partition_forgetter(context.instance, delete_runs=False)):
        if outcome.refused:
            context.log.warning(f"not purged: {outcome.refused}")
        else:
            purged.append(outcome.request.request_id)
    context.log.info(f"purged {len(purged)} request(s) older than {settings.retention_days} day(s): "
                     + ", ".join(purged))


@job(description="Purges the requests older than IMGPIPE_RETENTION_DAYS: files, rows and partitions.",
     tags={KIND_TAG: "retention"})
def purge_old_requests_job():
    purge_old_requests()


def schedules_for(settings: Settings) -> list[ScheduleDefinition]:
    if settings.retention_days is None:
        return []
    return [ScheduleDefinition(name="retention_schedule", job=purge_old_requests_job, cron_schedule="17 3 * * *",
                               default_status=DefaultScheduleStatus.RUNNING,
                               description=f"Daily: purge requests older than {settings.retention_days} day(s).")]
