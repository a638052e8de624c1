"""The jobs: processing one request (one partition), submitting a CSV from the Launchpad, ending a request
whose run died, and the webhook attempts that fall due after the first minute."""
from typing import Optional

from dagster import (
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

from imgpipe.backends import step_executor
from imgpipe.defs.assets import compressed_images, output_csv, upload_manifest, webhook
from imgpipe.defs.resources import ImgpipeResource
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.intake.launchpad import read_csv_source
from imgpipe.output.completion import complete_request
from imgpipe.settings import Settings
from imgpipe.status.models import Source
from imgpipe.webhooks.delivery import deliver

PROCESS_REQUEST = "process_request"
# Tags the run coordinator and the Runs page sort by: processing runs are limited to what the machine can
# take at once, the short jobs that end requests and deliver webhooks never wait behind them.
KIND_TAG = "imgpipe/kind"


def process_request_job(settings: Settings):
    """An asset job (resolved against the assets when `Definitions` is built)."""
    return define_asset_job(
        PROCESS_REQUEST,
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


@op
def submit_csv(context: OpExecutionContext, config: SubmitCsvConfig, imgpipe: ImgpipeResource) -> str:
    """Takes the CSV in, the same intake as every other upload; the inbox sensor launches its run."""
    settings = imgpipe.settings()
    data, file_name = read_csv_source(settings, config.csv)
    result = take_upload(imgpipe.store(), imgpipe.storage(), settings,
                         Upload(data, file_name, Source.FOLDER, webhook_url=config.webhook_url))
    metadata = {"request_id": result.request_id, "file_name": result.file_name,
                "status_url": MetadataValue.url(settings.status_url(result.request_id))}
    if not result.accepted:
        raise Failure(description=f"{file_name} was rejected with {len(result.errors)} problem(s)", metadata={
            **metadata, "errors": MetadataValue.md("\n".join(f"- {error}" for error in result.errors))})
    context.add_output_metadata(metadata)
    return result.request_id


@job(description="Launchpad entry: submit a CSV (from $IMGPIPE_HOME/uploads/ or an http(s) URL) for processing.",
     tags={KIND_TAG: "submit"})
def submit_csv_job():
    submit_csv()


class FailedRunConfig(Config):
    request_id: str
    run_id: str = Field(description="The run that died.")
    reason: str


@op
def end_failed_request(context: OpExecutionContext, config: FailedRunConfig, imgpipe: ImgpipeResource) -> None:
    """A run that died cannot end its request itself: its output CSV, its `failed` status and its webhook."""
    settings, store = imgpipe.settings(), imgpipe.store()
    request = store.get_request(config.request_id)
    # Only the run that holds the request (or never got to) may end it; a later retry may own it by now.
    if request is None or request.status.terminal or (
            request.run_id not in (None, config.run_id) and request.status != "queued"):
        context.log.info(f"request {config.request_id} is no longer the dead run's to end")
        return
    completion = complete_request(settings, store, imgpipe.storage(), config.request_id, config.run_id,
                                  run_failure=config.reason)
    context.log.info(f"request {config.request_id} ended as failed: {config.reason}")
    if completion.webhook_id:
        state = deliver(settings, store, completion.webhook_id, inline=True)
        context.log.info(f"webhook {completion.webhook_id}: {state}")


@job(description="Ends the request of a run that failed or was canceled.", tags={KIND_TAG: "end"})
def end_failed_run_job():
    end_failed_request()


class WebhookAttemptConfig(Config):
    webhook_id: str


@op
def attempt_webhook(context: OpExecutionContext, config: WebhookAttemptConfig, imgpipe: ImgpipeResource) -> None:
    """One attempt of a webhook that is due again (its first minute is the `webhook` asset's)."""
    state = deliver(imgpipe.settings(), imgpipe.store(), config.webhook_id, inline=False)
    context.log.info(f"webhook {config.webhook_id}: {state or 'not due any more'}")


@job(description="A later attempt of a request's webhook.", tags={KIND_TAG: "webhook"})
def deliver_webhook_job():
    attempt_webhook()


def jobs_for(settings: Settings) -> list:
    return [process_request_job(settings), submit_csv_job, end_failed_run_job, deliver_webhook_job]
