"""The jobs: processing one request (one partition), or several small ones in one run; submitting a CSV from the
Launchpad; ending the requests of a run that died; and the webhook attempts that fall due after the first
minute."""
from typing import Optional

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetMaterialization,
    AssetSelection,
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    define_asset_job,
    job,
    op,
)
from pydantic import Field

from imgpipe import processing
from imgpipe.backends import step_executor
from imgpipe.defs.assets import compressed_images, output_csv, upload_manifest, webhook
from imgpipe.defs.metadata import output_checks, request_metadata, webhook_metadata
from imgpipe.defs.resources import ImgpipeResource
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.intake.launchpad import read_csv_source
from imgpipe.output.completion import Completion, end_dead_run_requests
from imgpipe.runs.launch import RunLauncherAtOnce
from imgpipe.runs.tags import KIND_TAG, PROCESS_REQUESTS_JOB, REQUEST_ASSET_JOB, RUN_KEY_TAG
from imgpipe.settings import Settings
from imgpipe.status.models import Source
from imgpipe.status.store import StatusStore
from imgpipe.webhooks.delivery import deliver


def request_asset_job(settings: Settings):
    """A request's partition of the asset job (resolved against the assets when `Definitions` is built)."""
    return define_asset_job(
        REQUEST_ASSET_JOB,
        selection=AssetSelection.assets(upload_manifest, compressed_images, output_csv, webhook),
        executor_def=step_executor(settings),
        tags={KIND_TAG: "process"},
        description="Download, compress and publish the images of one request (one partition), then send its "
                    "webhook.",
    )


class SubmitCsvConfig(Config):
    csv: str = Field(description="A CSV under $IMGPIPE_HOME/uploads/, as a path relative to that folder "
                                 "(e.g. products.csv), or an http(s) URL to fetch it from (checked like any "
                                 "image URL).")
    webhook_url: Optional[str] = Field(default=None, description="Where to POST the signed webhook at the end.")
    fresh: bool = Field(default=False, description="Fetch and encode every image again, whatever earlier "
                                                   "requests left (no reuse).")
    renditions: Optional[str] = Field(default=None, description="Formats made beside each main output: a comma "
                                                                "list of webp and avif (unset: IMGPIPE_RENDITIONS).")
    widths: Optional[str] = Field(default=None, description="Widths in pixels each image is also made at, when "
                                                            "narrower: e.g. 480,960 (unset: IMGPIPE_WIDTHS).")


@op
def submit_csv(context: OpExecutionContext, config: SubmitCsvConfig, imgpipe: ImgpipeResource) -> str:
    """Takes the CSV in, the same intake as every other upload, and queues its run at once."""
    backends = imgpipe.backends()
    settings = backends.settings
    data, file_name = read_csv_source(settings, config.csv)
    result = take_upload(backends, Upload(data, file_name, Source.FOLDER, webhook_url=config.webhook_url,
                                          fresh=config.fresh, renditions=config.renditions, widths=config.widths))
    metadata = {"request_id": result.request_id, "file_name": result.file_name,
                "status_url": MetadataValue.url(settings.status_url(result.request_id))}
    if not result.accepted:
        raise Failure(description=f"{file_name} was rejected with {len(result.errors)} problem(s)", metadata={
            **metadata, "errors": MetadataValue.md("\n".join(f"- {error}" for error in result.errors))})
    run_id = RunLauncherAtOnce(backends, context.instance, start_here=False).launch(result.request_id)
    if run_id:
        metadata["run_id"] = run_id
    context.add_output_metadata(metadata)
    return result.request_id


@job(description="Launchpad entry: submit a CSV (from $IMGPIPE_HOME/uploads/ or an http(s) URL) for processing.",
     tags={KIND_TAG: "submit"})
def submit_csv_job():
    submit_csv()


class RequestsConfig(Config):
    request_ids: list[str] = Field(description="The requests of this run, in arrival order.")


@op
def process_requests(context: OpExecutionContext, config: RequestsConfig, imgpipe: ImgpipeResource) -> None:
    """Each request from start to end, a few at a time; each ends on its own (output CSV, terminal status,
    webhook) and is recorded as its partition's materialization of the four assets, with the output checks."""
    backends = imgpipe.backends()
    again = context.run.parent_run_id is not None  # a re-execution from the UI
    processed = []
    for ended in processing.process_requests(backends, config.request_ids, context.run.run_id, again=again):
        if ended.completion is None:
            context.log.info(f"request {ended.request_id}: already ended, nothing to do")
            continue
        processed.append(ended.request_id)
        context.log.info(f"request {ended.request_id}: {ended.completion.status}")
        record_request(context, backends.store, ended.request_id, ended.completion)
    for request_id in processed:  # the webhooks' first minute is over once all are done
        context.log_event(AssetMaterialization(asset_key=webhook.key, partition=request_id,
                                               metadata=webhook_metadata(backends.store, request_id)))


def record_request(context: OpExecutionContext, store: StatusStore, request_id: str,
                   completion: Completion) -> None:
    """The ended request's materializations of the first three assets, and the output CSV's checks, as its own
    run's steps record them."""
    manifest = store.manifest(request_id)
    for key, metadata in ((upload_manifest.key, {"images": len(manifest)}),
                          (compressed_images.key, {"images": completion.counts["total"]}),
                          (output_csv.key, request_metadata(completion))):
        context.log_event(AssetMaterialization(asset_key=key, partition=request_id, metadata=metadata))
    for name, passed, metadata in output_checks(manifest, completion):
        context.log_event(AssetCheckEvaluation(asset_key=output_csv.key, check_name=name, passed=passed,
                                               metadata=metadata, partition=request_id,
                                               severity=AssetCheckSeverity.ERROR))


def process_requests_job(settings: Settings):
    """Several small requests in one run, its one step where the profile runs steps (a Celery worker in the
    distributed profile)."""
    @job(name=PROCESS_REQUESTS_JOB, tags={KIND_TAG: "process"}, executor_def=step_executor(settings),
         description="Several small requests in one run: each processed and ended on its own, each its "
                     "partition's materialization.")
    def shared_run():
        process_requests()

    return shared_run


class FailedRunConfig(Config):
    request_ids: list[str] = Field(description="The requests the run held.")
    run_id: str = Field(description="The run that died.")
    reason: str


@op
def end_failed_request(context: OpExecutionContext, config: FailedRunConfig, imgpipe: ImgpipeResource) -> None:
    """A run that died cannot end its requests itself: their output CSVs, `failed` status and webhooks."""
    backends = imgpipe.backends()
    dead_run = context.instance.get_run_by_id(config.run_id)
    run_key = dead_run.tags.get(RUN_KEY_TAG) if dead_run else None
    for request_id, completion in end_dead_run_requests(backends, config.request_ids, config.run_id, run_key,
                                                        config.reason):
        if completion is None:
            context.log.info(f"request {request_id} is no longer the dead run's to end")
            continue
        context.log.info(f"request {request_id} ended as failed: {config.reason}")
        if completion.webhook_id:
            state = deliver(backends, completion.webhook_id, inline=True)
            context.log.info(f"webhook {completion.webhook_id}: {state}")


@job(description="Ends the requests of a run that failed or was canceled.", tags={KIND_TAG: "end"})
def end_failed_run_job():
    end_failed_request()


class WebhookAttemptConfig(Config):
    webhook_id: str


@op
def attempt_webhook(context: OpExecutionContext, config: WebhookAttemptConfig, imgpipe: ImgpipeResource) -> None:
    """One attempt of a webhook that is due again (its first minute is the `webhook` asset's)."""
    state = deliver(imgpipe.backends(), config.webhook_id, inline=False)
    context.log.info(f"webhook {config.webhook_id}: {state or 'not due any more'}")


@job(description="A later attempt of a request's webhook.", tags={KIND_TAG: "webhook"})
def deliver_webhook_job():
    attempt_webhook()


def jobs_for(settings: Settings) -> list:
    return [request_asset_job(settings), process_requests_job(settings), submit_csv_job, end_failed_run_job,
            deliver_webhook_job]
