"""The Dagster code location: `build_defs(settings)` assembles the assets, jobs, sensors and resources; `defs` is
the entry point Dagster loads, lazily (Dagster's `@definitions`): importing this module (a step process's
forkserver preload, a test, a tool) reads no settings, configures no logging and builds nothing."""
from __future__ import annotations

import functools

from dagster import Definitions, definitions

from imgpipe.backends import io_managers
from imgpipe.defs.assets import compressed_images, output_csv, upload_manifest, webhook
from imgpipe.defs.jobs import jobs_for
from imgpipe.defs.resources import ImgpipeResource
from imgpipe.defs.schedules import purge_old_requests_job, schedules_for
from imgpipe.defs.sensors import build_sensors
from imgpipe.logs import configure_logging
from imgpipe.runs.tags import PROCESS_REQUESTS_JOB, REQUEST_ASSET_JOB
from imgpipe.settings import Settings, load_settings


def build_defs(settings: Settings, secrets_from_env: bool = True) -> Definitions:
    """Everything of the code location, configured by `settings`. `secrets_from_env`: the credentials among
    them came from IMGPIPE_* variables, to be passed on as references (see `ImgpipeResource.from_settings`)."""
    jobs = jobs_for(settings)
    process_job = next(j for j in jobs if j.name == REQUEST_ASSET_JOB)
    shared_job = next(j for j in jobs if j.name == PROCESS_REQUESTS_JOB)
    imgpipe = ImgpipeResource.from_settings(settings, secrets_from_env)
    return Definitions(
        assets=[upload_manifest, compressed_images, output_csv, webhook],
        jobs=[*jobs, purge_old_requests_job],
        sensors=build_sensors(settings, process_job, shared_job, imgpipe),
        schedules=schedules_for(settings),
        resources={"imgpipe": imgpipe, **io_managers(settings)},
    )


@definitions
@functools.cache
def defs() -> Definitions:
    """The code location of this process's environment (IMGPIPE_* variables). Built once per process: Dagster's
    loaders call this more than once (a code server at load, then for its repository), and a run worker forked
    by the warm run server must find the jobs that server resolved, through this same call."""
    settings = load_settings()
    configure_logging(settings)  # imgpipe's own log lines (the inbox's) in IMGPIPE_LOG_FORMAT, on stderr
    return build_defs(settings)
