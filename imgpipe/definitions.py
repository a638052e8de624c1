"""The Dagster code location: assets, the processing job, sensors and resources."""
from __future__ import annotations

from dagster import Definitions

from imgpipe.defs.assets import compressed_images, output_csv, upload_manifest
from imgpipe.defs.jobs import process_request_job, submit_csv_job
from imgpipe.defs.resources import resources_for
from imgpipe.defs.sensors import canceled_run_sensor, failed_run_sensor, inbox_sensor, webhook_retry_sensor
from imgpipe.settings import Settings

defs = Definitions(
    assets=[upload_manifest, compressed_images, output_csv],
    jobs=[process_request_job, submit_csv_job],
    sensors=[inbox_sensor, failed_run_sensor, canceled_run_sensor, webhook_retry_sensor],
    resources=resources_for(Settings.from_env()),
)


def resolved_process_request_job():
    """The processing job bound to its resources, for `reconstructable` runs outside the daemon
    (tests, benchmarks): the multiprocess executor re-imports it in every step process."""
    return defs.resolve_job_def(process_request_job.name)
