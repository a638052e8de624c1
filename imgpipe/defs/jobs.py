"""The jobs: processing one request (one partition), and submitting a CSV from the Launchpad."""
from typing import Optional

from dagster import (
    AssetSelection,
    Config,
    ExecutorDefinition,
    MetadataValue,
    OpExecutionContext,
    define_asset_job,
    in_process_executor,
    job,
    multiprocess_executor,
    op,
)
from pydantic import Field

from imgpipe.defs.assets import compressed_images, output_csv, step_concurrency, upload_manifest
from imgpipe.intake.intake import enqueue_upload, load_csv_source
from imgpipe.defs.resources import StatusStoreResource
from imgpipe.settings import Settings


def celery_config(settings: Settings) -> dict:
    """The Celery app of the distributed profile, shared by the executor and `imgpipe worker`."""
    return {"broker": settings.broker_url, "backend": settings.broker_url}


def step_executor(settings: Settings) -> ExecutorDefinition:
    """In-process by default: a step then costs milliseconds instead of the 0.4-1.4 s of a step process
    (see the brief), and parallelism and isolation come from the batch runner's one fork per image. The
    multiprocess executor remains one setting away; forkserver with the project preloaded starts each of its
    steps from an already-imported interpreter. The distributed profile sends every step to Celery workers."""
    if settings.distributed:
        from dagster_celery import celery_executor  # Celery's import costs the embedded profile nothing

        return celery_executor.configured(celery_config(settings))
    if settings.executor == "in_process":
        return in_process_executor
    return multiprocess_executor.configured({
        "max_concurrent": step_concurrency(),
        "start_method": {"forkserver": {"preload_modules": ["imgpipe.definitions"]}},
    })


process_request_job = define_asset_job(
    "process_request",
    selection=AssetSelection.assets(upload_manifest, compressed_images, output_csv),
    executor_def=step_executor(Settings.from_env()),
    description="Download, compress and publish the images of one request (one partition).",
)


class SubmitCsvConfig(Config):
    csv: str = Field(description="A CSV path relative to IMGPIPE_HOME (e.g. inbox-archive/products.csv), or an "
                                 "http(s) URL to fetch it from (checked like any image URL).")
    webhook_url: Optional[str] = Field(default=None, description="Where to POST the signed webhook at the end.")


@op
def submit_csv(context: OpExecutionContext, config: SubmitCsvConfig, status_store: StatusStoreResource) -> str:
    """Hands the CSV to the inbox, the same intake as a folder drop; the inbox sensor launches its run."""
    settings = Settings.from_env()
    data, file_name = load_csv_source(settings, config.csv)
    request_id = enqueue_upload(settings, status_store.open(), data, file_name=file_name, source="folder",
                                webhook_url=config.webhook_url)
    context.add_output_metadata({
        "request_id": request_id,
        "file_name": file_name,
        "status_url": MetadataValue.url(f"{settings.public_base_url}/requests/{request_id}"),
    })
    return request_id


@job(description="Launchpad entry: submit a CSV (a path under IMGPIPE_HOME or an http(s) URL) for processing.")
def submit_csv_job():
    submit_csv()
