"""Running one request through the embedded pipeline in this process's Dagster instance (execute_job), and
reading what it wrote: for the pipeline tests, and as the reference the distributed profile must match."""
from __future__ import annotations

import csv
import io
import json

from dagster import DagsterInstance, execute_job, reconstructable

from imgpipe.definitions import resolved_process_request_job
from imgpipe.intake.intake import Intake
from imgpipe.settings import Settings
from imgpipe.status.store import DuckDBStatusStore

HEADER = ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]


def submit(settings: Settings, csv_text: str, name: str, webhook_url: str | None = None) -> str:
    settings.ensure_folders()
    if webhook_url:
        (settings.inbox / f"{name.rsplit('.', 1)[0]}.json").write_text(json.dumps({"webhook_url": webhook_url}))
    (settings.inbox / name).write_text(csv_text)
    store = DuckDBStatusStore(settings.db_path)
    [result] = [r for r in Intake(settings, store).take_inbox() if r.file_name == name]
    assert result.accepted, result.errors
    return result.request_id


def run(instance: DagsterInstance, request_id: str):
    instance.add_dynamic_partitions("requests", [request_id])
    with execute_job(reconstructable(resolved_process_request_job), instance=instance,
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
