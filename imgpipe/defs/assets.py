"""The partitioned assets: one dynamic partition per request.

upload_manifest -> compressed_images (a graph: plan batches, compress each batch in a mapped step, collect)
-> output_csv (the aligned output CSV and the terminal status) -> webhook (the signed notification).

Thin: each step reads its settings and backends from the `imgpipe` resource and calls the code that does the
work (`imgpipe.images.batch`, `imgpipe.output.completion`, `imgpipe.webhooks.delivery`); what the
materializations record is `imgpipe.defs.metadata`'s, shared with the run of several requests.
"""
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DynamicOut,
    DynamicOutput,
    In,
    MaterializeResult,
    Nothing,
    OpExecutionContext,
    Output,
    asset,
    graph_asset,
    op,
)
from dagster_pandera import pandera_schema_to_dagster_type

from imgpipe.backends import batches_per_request
from imgpipe.defs.metadata import output_checks, request_metadata, webhook_metadata
from imgpipe.defs.resources import ImgpipeResource
from imgpipe.images.batch import WorkItem, split_into_batches, work_items
from imgpipe.intake.csv_schema import ManifestModel
from imgpipe.output.completion import complete_request
from imgpipe.processing import compress_images
from imgpipe.runs.partitions import requests_partitions
from imgpipe.status.models import ImageStatus
from imgpipe.webhooks.delivery import deliver

ManifestType = pandera_schema_to_dagster_type(ManifestModel)
MIN_BATCH_SIZE = 16


@asset(partitions_def=requests_partitions, dagster_type=ManifestType, group_name="imgpipe")
def upload_manifest(context: AssetExecutionContext, imgpipe: ImgpipeResource) -> Output[pd.DataFrame]:
    """The uploaded CSV as the intake validated it: one row per image slot (serial, product, row, position,
    URL). Read from the status store, where the intake recorded it; the request becomes `processing`."""
    request_id = context.partition_key
    store = imgpipe.backends().store
    with store.held():
        manifest = store.manifest(request_id)
        store.start_processing(request_id, context.run.run_id)
    return Output(manifest, metadata={
        "products": int(manifest["row_number"].nunique()),
        "images": len(manifest),
        "unique_urls": int(manifest["input_url"].nunique()),
    })


@op(ins={"upload_manifest": In(Nothing)}, out=DynamicOut(list))
def plan_batches(context: OpExecutionContext, imgpipe: ImgpipeResource):
    """The request's unfinished images (a re-executed run skips compressed ones), in bounded batches: from the
    status store, after the manifest is recorded (the manifest itself is not read)."""
    backends = imgpipe.backends()
    items = work_items(backends.store.unfinished_slots(context.partition_key))
    batches = split_into_batches(items, batches_per_request(backends.settings), MIN_BATCH_SIZE)
    context.log.info(f"{len(items)} unique images to process in {len(batches)} batch(es)")
    # An empty request still yields one empty batch so that the collect step runs.
    for index, batch in enumerate(batches or [[]]):
        yield DynamicOutput([item.to_dict() for item in batch], mapping_key=f"batch_{index}")


@op
def compress_batch(context: OpExecutionContext, batch: list, imgpipe: ImgpipeResource) -> list:
    """A batch of the request's images; a step run again (its worker was lost) leaves out the images that its
    first run finished."""
    # IMGPIPE_REQUEST_DEADLINE counts from the run's start: one instant for every batch, wherever it runs.
    run_started = context.instance.get_run_record_by_id(context.run_id).start_time
    results = compress_images(imgpipe.backends(), context.partition_key, [WorkItem(**item) for item in batch],
                              started_at=run_started)
    failed = [r for r in results if r.status == ImageStatus.FAILED]
    context.log.info(f"{len(results) - len(failed)} compressed, {len(failed)} failed")
    return [(str(r.status), r.bytes_in or 0, r.bytes_out or 0) for r in results]


@op
def summarize_batches(batches: list) -> Output[dict]:
    outcomes = [outcome for batch in batches for outcome in batch]
    compressed = [(bytes_in, bytes_out) for status, bytes_in, bytes_out in outcomes if status == ImageStatus.COMPRESSED]
    summary = {
        "compressed": len(compressed),
        "failed": len(outcomes) - len(compressed),
        "bytes_in": sum(bytes_in for bytes_in, _ in compressed),
        "bytes_out": sum(bytes_out for _, bytes_out in compressed),
    }
    return Output(summary, metadata={f"this_run_{k}": v for k, v in summary.items()})


@graph_asset(partitions_def=requests_partitions, group_name="imgpipe")
def compressed_images(upload_manifest: pd.DataFrame) -> dict:
    """Every unique image of the request downloaded and compressed, each in its own OS process."""
    return summarize_batches(plan_batches(upload_manifest).map(compress_batch).collect())


@asset(
    partitions_def=requests_partitions,
    group_name="imgpipe",
    deps=[compressed_images],
    check_specs=[
        AssetCheckSpec("aligned_with_input", asset="output_csv",
                       description="One row per input row, in order, one output slot per input URL."),
        AssetCheckSpec("outputs_not_larger", asset="output_csv",
                       description="No compressed image is larger than the image it came from."),
    ],
)
def output_csv(context: AssetExecutionContext, upload_manifest: pd.DataFrame,
               imgpipe: ImgpipeResource) -> MaterializeResult:
    """The output CSV lined up with the input; then the terminal status, and the webhook queued."""
    completion = complete_request(imgpipe.backends(), context.partition_key, context.run.run_id)
    return MaterializeResult(
        metadata=request_metadata(completion),
        check_results=[AssetCheckResult(check_name=name, passed=passed, severity=AssetCheckSeverity.ERROR,
                                        metadata=metadata)
                       for name, passed, metadata in output_checks(upload_manifest, completion)],
    )


@asset(partitions_def=requests_partitions, group_name="imgpipe", deps=[output_csv])
def webhook(context: AssetExecutionContext, imgpipe: ImgpipeResource) -> MaterializeResult:
    """The signed webhook of the request's end: the attempts of its first minute (later ones are made by the
    `deliver_webhook_job`). A request without a webhook URL has nothing to send."""
    request_id = context.partition_key
    backends = imgpipe.backends()
    for webhook_id in backends.store.due_webhook_ids(request_id):
        state = deliver(backends, webhook_id, inline=True)
        context.log.info(f"webhook {webhook_id}: {state}")
    return MaterializeResult(metadata=webhook_metadata(backends.store, request_id))
