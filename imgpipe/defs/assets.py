"""The partitioned assets: one dynamic partition per request.

upload_manifest -> compressed_images (a graph: plan batches, compress each batch in a mapped step, collect)
-> output_csv (the aligned output CSV, the terminal status and the webhook).
"""

import os

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DynamicOut,
    DynamicOutput,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    Output,
    asset,
    graph_asset,
    op,
)
from dagster_pandera import pandera_schema_to_dagster_type

from imgpipe.images.batch import BatchRunner, WorkItem, split_into_batches, work_items
from imgpipe.output.completion import Completion, complete_request
from imgpipe.intake.csv_schema import ManifestModel, parse_upload
from imgpipe.webhooks.delivery import deliver
from imgpipe.output.output_csv import alignment_problems
from imgpipe.defs.resources import StatusStoreResource, StorageResource
from imgpipe.settings import Settings

requests_partitions = DynamicPartitionsDefinition(name="requests")
ManifestType = pandera_schema_to_dagster_type(ManifestModel)

# A step costs far more than an image (see the brief), so steps take batches. In one process (the default)
# a single batch already keeps every core busy (downloads in threads, one fork per image); with a step per
# process, a couple of batches per concurrent step let them overlap.
BATCHES_PER_CONCURRENT_STEP = 2
MIN_BATCH_SIZE = 16


def step_concurrency() -> int:
    return os.cpu_count() or 2


def max_batches(settings: Settings) -> int:
    """Celery workers may be many, on many machines: IMGPIPE_MAX_BATCHES says how widely to spread."""
    if settings.distributed:
        return settings.max_batches
    return 1 if settings.executor == "in_process" else BATCHES_PER_CONCURRENT_STEP * step_concurrency()


@asset(partitions_def=requests_partitions, dagster_type=ManifestType, group_name="imgpipe")
def upload_manifest(context: AssetExecutionContext, status_store: StatusStoreResource,
                    storage: StorageResource) -> Output[pd.DataFrame]:
    """The uploaded CSV, validated: one row per image slot (serial, product, row, position, URL)."""
    request_id = context.partition_key
    settings = Settings.from_env()
    manifest = parse_upload(storage.open().read_input(request_id), limits=settings.limits)
    status_store.open().start_processing(request_id, context.run_id, manifest)
    return Output(manifest, metadata={
        "products": int(manifest["row_number"].nunique()),
        "images": len(manifest),
        "unique_urls": int(manifest["input_url"].nunique()),
    })


@op(out=DynamicOut(list))
def plan_batches(context: OpExecutionContext, upload_manifest: pd.DataFrame, status_store: StatusStoreResource):
    """The request's unfinished images (a re-executed run skips compressed ones), in bounded batches."""
    items = work_items(status_store.open().unfinished_slots(context.partition_key))
    batches = split_into_batches(items, max_batches(Settings.from_env()), MIN_BATCH_SIZE)
    context.log.info(f"{len(items)} unique images to process in {len(batches)} batch(es)")
    # An empty request still yields one empty batch so that the collect step runs.
    for index, batch in enumerate(batches or [[]]):
        yield DynamicOutput([item.to_dict() for item in batch], mapping_key=f"batch_{index}")


@op
def compress_batch(context: OpExecutionContext, batch: list, status_store: StatusStoreResource,
                   storage: StorageResource) -> list:
    request_id = context.partition_key
    store = status_store.open()
    items = [WorkItem(**item) for item in batch]
    store.mark_processing(request_id, [item.input_url for item in items])
    runner = BatchRunner(Settings.from_env(), storage.open(), request_id)
    results = runner.run(items, report=lambda done: store.record_results(request_id, done))
    failed = [r for r in results if r.status == "failed"]
    context.log.info(f"{len(results) - len(failed)} compressed, {len(failed)} failed")
    return [(r.status, r.bytes_in or 0, r.bytes_out or 0) for r in results]


@op
def summarize_batches(batches: list) -> Output[dict]:
    outcomes = [outcome for batch in batches for outcome in batch]
    summary = {
        "compressed": sum(1 for status, _, _ in outcomes if status == "compressed"),
        "failed": sum(1 for status, _, _ in outcomes if status == "failed"),
        "bytes_in": sum(bytes_in for status, bytes_in, _ in outcomes if status == "compressed"),
        "bytes_out": sum(bytes_out for status, _, bytes_out in outcomes if status == "compressed"),
    }
    return Output(summary, metadata={f"this_run_{k}": v for k, v in summary.items()})


@graph_asset(partitions_def=requests_partitions, group_name="imgpipe")
def compressed_images(upload_manifest: pd.DataFrame) -> dict:
    """Every unique image of the request downloaded and compressed, each in its own OS process."""
    return summarize_batches(plan_batches(upload_manifest).map(compress_batch).collect())


@asset(
    partitions_def=requests_partitions,
    group_name="imgpipe",
    check_specs=[
        AssetCheckSpec("aligned_with_input", asset="output_csv",
                       description="One row per input row, in order, one output slot per input URL."),
        AssetCheckSpec("outputs_not_larger", asset="output_csv",
                       description="No compressed image is larger than the image it came from."),
    ],
)
def output_csv(context: AssetExecutionContext, upload_manifest: pd.DataFrame, compressed_images: dict,
               status_store: StatusStoreResource, storage: StorageResource) -> MaterializeResult:
    """The output CSV lined up with the input; then the terminal status and the signed webhook."""
    request_id = context.partition_key
    settings = Settings.from_env()
    store = status_store.open()
    completion = complete_request(settings, store, storage.open(), request_id, context.run_id)
    if completion.webhook_id:
        state = deliver(settings, store, completion.webhook_id, inline=True)
        context.log.info(f"webhook {completion.webhook_id}: {state}")
    images = store.images(request_id)
    misaligned = alignment_problems(upload_manifest, completion.csv_bytes)
    larger = [i for i in images if i["status"] == "compressed" and i["bytes_out"] > i["bytes_in"]]
    return MaterializeResult(
        metadata=request_metadata(images, completion),
        check_results=[
            AssetCheckResult(check_name="aligned_with_input", passed=not misaligned,
                             severity=AssetCheckSeverity.ERROR,
                             metadata={"problems": MetadataValue.md("\n".join(f"- {p}" for p in misaligned) or "none")}),
            AssetCheckResult(check_name="outputs_not_larger", passed=not larger, severity=AssetCheckSeverity.ERROR,
                             metadata={"larger_images": MetadataValue.md("\n".join(
                                 f"- row {i['row_number']} position {i['position']}: {i['bytes_in']} -> "
                                 f"{i['bytes_out']} bytes" for i in larger) or "none")}),
        ],
    )


def request_metadata(images: list[dict], completion: Completion) -> dict:
    done = [i for i in images if i["status"] == "compressed"]
    bytes_in = sum(i["bytes_in"] or 0 for i in done)
    bytes_out = sum(i["bytes_out"] or 0 for i in done)
    failed = [i for i in images if i["status"] != "compressed"]
    table = "| row | position | URL | reason |\n|---|---|---|---|\n" + "".join(
        f"| {i['row_number']} | {i['position']} | {i['input_url'][:80]} | {(i['error'] or i['status'])[:120]} |\n"
        for i in failed[:50]
    )
    return {
        "status": completion.status,
        **{f"images_{k}": v for k, v in completion.counts.items()},
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "percent_saved": round(100 * (1 - bytes_out / bytes_in), 1) if bytes_in else 0.0,
        "output_csv_path": MetadataValue.path(completion.output_csv.path),
        "output_csv_url": MetadataValue.url(completion.output_csv.url),
        "failed_images": MetadataValue.md(table if failed else "none"),
    }
