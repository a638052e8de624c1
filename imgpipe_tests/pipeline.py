"""Running one request through the embedded pipeline in this process's Dagster instance (execute_job), and
reading what it wrote: for the pipeline tests, and as the reference the distributed profile must match."""
from __future__ import annotations

import csv
import io

from dagster import DagsterInstance, execute_job, reconstructable

from imgpipe.backends import Backends, open_backends
from imgpipe.definitions import defs
from imgpipe.images.batch import work_items
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.output.completion import complete_request
from imgpipe.processing import compress_images
from imgpipe.runs.tags import REQUEST_ASSET_JOB
from imgpipe.settings import Settings
from imgpipe.status.models import Source

HEADER = ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]


def resolved_process_request_job():
    """The processing job bound to its resources, for `reconstructable` runs outside the daemon: the multiprocess
    executor re-imports it in every step process."""
    return defs().resolve_job_def(REQUEST_ASSET_JOB)


def submit(settings: Settings, csv_text: str, name: str, webhook_url: str | None = None) -> str:
    """The intake of every entry, as the folder drop and the REST API call it."""
    result = take_upload(open_backends(settings), Upload(csv_text.encode(), name, Source.FOLDER,
                                                         webhook_url=webhook_url))
    assert result.accepted, result.errors
    return result.request_id


def run(instance: DagsterInstance, request_id: str, run_config: dict | None = None):
    """`process_request` for one request, with the multiprocess executor (each step a process of its own)."""
    instance.add_dynamic_partitions("requests", [request_id])
    with execute_job(reconstructable(resolved_process_request_job), instance=instance, run_config=run_config,
                     tags={"dagster/partition": request_id}) as result:
        checks = {e.event_specific_data.check_name: e.event_specific_data.passed
                  for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
        assert checks == {"aligned_with_input": True, "outputs_not_larger": True}
        return result.success, [e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"]


def csv_for(rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for serial, row in enumerate(rows, 1):
        writer.writerow([serial, f"Product {serial}", ", ".join(row)])
    return out.getvalue()


def read_output(settings: Settings, request_id: str) -> list[list[str]]:
    with open(settings.outputs_dir / f"{request_id}.csv", newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def slots_of(cell: str) -> list[str]:
    return [u.strip() for u in cell.split(",")]


def process_here(backends: Backends, rows: list[list[str]], name: str, fresh: bool = False,
                 renditions: str | None = None, widths: str | None = None) -> str:
    """One request through the intake, its images, and its end, as a run's steps do them, in this process (the
    images still each in a process of their own)."""
    upload = Upload(csv_for(rows).encode(), name, Source.API, fresh=fresh, renditions=renditions, widths=widths)
    request_id = take_upload(backends, upload).request_id
    backends.store.start_processing(request_id, "run-1")
    compress_images(backends, request_id, work_items(backends.store.unfinished_slots(request_id)))
    complete_request(backends, request_id, "run-1")
    return request_id
