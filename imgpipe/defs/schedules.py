"""Retention in Dagster: with IMGPIPE_RETENTION_DAYS set, a daily schedule runs `purge_old_requests_job`, which
purges the requests older than that (`imgpipe.retention`) and their dynamic partitions."""
from dagster import DefaultScheduleStatus, OpExecutionContext, ScheduleDefinition, job, op

from imgpipe.defs.resources import ImgpipeResource
from imgpipe.retention import PurgePlan, parse_statuses, purge
from imgpipe.runs.partitions import partition_forgetter
from imgpipe.runs.tags import KIND_TAG
from imgpipe.settings import Settings


@op
def purge_old_requests(context: OpExecutionContext, imgpipe: ImgpipeResource) -> None:
    backends = imgpipe.backends()
    settings = backends.settings
    # Only requests that have ended; one that a retry queued again since it was listed is refused by the store.
    plan = PurgePlan(older_than=settings.retention_period, statuses=parse_statuses(None))
    purged = []
    for outcome in purge(backends, plan,
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
