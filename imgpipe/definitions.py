"""The Dagster code location: `build_defs(settings)` assembles the assets, jobs, sensors and resources; `defs`
is that of this process's environment (the entry point Dagster loads), built from `settings`."""
from __future__ import annotations

from dagster import Definitions

from imgpipe.backends import io_managers
from imgpipe.defs.assets import compressed_images, output_csv, upload_manifest, webhook
from imgpipe.defs.jobs import jobs_for
from imgpipe.runs.tags import PROCESS_REQUEST, PROCESS_REQUESTS
from imgpipe.defs.resources import ImgpipeResource
from imgpipe.defs.schedules import purge_old_requests_job, schedules_for
from imgpipe.defs.sensors import build_sensors
from imgpipe.logs import configure_logging
from imgpipe.settings import Settings, load_settings


def build_defs(settings: Settings, secrets_from_env: bool = True) -> Definitions:
    """Everything of the code location, configured by `settings`. `secrets_from_env`: the credentials among
    them came from IMGPIPE_* variables, to be passed on as references (see `ImgpipeResource.from_settings`)."""
    jobs = jobs_for(settings)
    process_job = next(j for j in jobs if j.name == PROCESS_REQUEST)
    shared_job = next(j for j in jobs if j.name == PROCESS_REQUESTS)
    return Definitions(
        assets=[upload_manifest, compressed_images, output_csv, webhook],
        jobs=[*jobs, purge_old_requests_job],
        sensors=build_sensors(settings, process_job, shared_job),
        schedules=schedules_for(settings),
        resources={"imgpipe": ImgpipeResource.from_settings(settings, secrets_from_env), **io_managers(settings)},
    )


settings = load_settings()
configure_logging(settings)  # imgpipe's own log lines (the inbox's) in IMGPIPE_LOG_FORMAT, on stderr
defs = build_defs(settings)


def resolved_process_request_job():
    """The processing job bound to its resources, for `reconstructable` runs outside the daemon (tests,
    benchmarks): the multiprocess executor re-imports it in every step process."""
    return defs.resolve_job_def(PROCESS_REQUEST)
