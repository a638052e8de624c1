"""The one place that turns the profile into backends (docs/scaling.md): the status store and the storage (opened
together, with their settings, as `Backends`), where steps run, how widely a request is spread over steps, and
how step outputs travel between machines.

`embedded` (the default): DuckDB under IMGPIPE_HOME, folders under IMGPIPE_HOME, steps in the run's process.
`distributed`: PostgreSQL, an S3-compatible bucket, steps on Celery workers. The Dagster resource, the REST
API and the CLI all ask here, so they cannot disagree. Dagster, Celery and boto3 are imported only by the
functions that need them: the API and the CLI never pay for them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgpipe.settings import Settings
from imgpipe.status.store import StatusStore
from imgpipe.storage.interface import Storage
from imgpipe.storage.local import LocalStorage
from imgpipe.storage.s3 import S3Storage, split_s3_url

if TYPE_CHECKING:
    from dagster import ExecutorDefinition

# A step costs far more orchestration than an image, so steps take batches
# (docs/performance.md#the-run-lifecycle-one-image-and-a-re-upload, "Fewer steps"). In the run's process (the
# default) a single batch already keeps every core busy (downloads in threads, one process per image); with a step
# per process, a couple of batches per concurrent step let them overlap.
BATCHES_PER_CONCURRENT_STEP = 2


def open_status_store(settings: Settings, lock_timeout: float = 60.0) -> StatusStore:
    """PostgreSQL in the distributed profile, DuckDB under IMGPIPE_HOME otherwise."""
    if settings.distributed:
        from imgpipe.status.postgres_store import PostgresStatusStore

        return PostgresStatusStore(settings.database_url, lock_timeout=lock_timeout)
    from imgpipe.status.duckdb_store import DuckDBStatusStore

    return DuckDBStatusStore(settings.db_path, lock_timeout=lock_timeout)


def open_storage(settings: Settings) -> Storage:
    """The distributed profile's bucket, else the folders under IMGPIPE_HOME."""
    if settings.distributed:
        return S3Storage(settings.storage_url, settings.public_base_url)
    return LocalStorage(settings.home_dir, settings.public_base_url)


@dataclass(frozen=True)
class Backends:
    """The settings and the status store and storage they chose: what the intake, the processing, the end of a
    request and the readers of its document work with, handed around together."""

    settings: Settings
    store: StatusStore
    storage: Storage


def open_backends(settings: Settings) -> Backends:
    return Backends(settings, open_status_store(settings), open_storage(settings))


def step_concurrency() -> int:
    return os.cpu_count() or 2


# What one processing run takes at its peak in this profile: its run worker (Dagster, pandas, the code
# location: about 300 MiB) and its images' processes (about 30 MiB each, one per core).
RUN_MEMORY_BYTES = 768 * 1024 * 1024


def processing_run_limit(settings: Settings) -> int:
    """How many processing runs the inbox sensor keeps going at once: IMGPIPE_MAX_RUNS, else one per core (a
    run's images already use every core, but one run's downloads overlap another's compressions), fewer when
    the memory cannot hold that many, and at least two. In the distributed profile the workers do the work: the
    run count is bounded by IMGPIPE_MAX_RUNS alone (default: 8)."""
    if settings.max_runs:
        return settings.max_runs
    if settings.distributed:
        return 8
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(2, min(step_concurrency(), memory // RUN_MEMORY_BYTES))


def batches_per_request(settings: Settings) -> int:
    """How many `compress_batch` steps a request's images are spread over, at most. Celery workers may be many,
    on many machines: IMGPIPE_MAX_BATCHES says how widely."""
    if settings.distributed:
        return settings.max_batches
    return 1 if settings.executor == "in_process" else BATCHES_PER_CONCURRENT_STEP * step_concurrency()


def celery_config(settings: Settings) -> dict:
    """The Celery app of the distributed profile, shared by the executor and `imgpipe worker`.

    Broker: IMGPIPE_BROKER_URL, `redis://` or `amqp://` (RabbitMQ). Results (each step's Dagster events, read
    once by the run's coordinator, then deleted): in that Redis when the broker is Redis, else in PostgreSQL
    (IMGPIPE_DATABASE_URL, Celery's `celery_taskmeta` table), so RabbitMQ needs no second service. A lost worker
    (`imgpipe/celery_steps.py`): steps acknowledged late and given back to the queue when their worker dies,
    Redis' visibility timeout and RabbitMQ's heartbeat both IMGPIPE_WORKER_LOST_TIMEOUT, after which a run whose
    steps no worker answers for fails."""
    broker, timeout = settings.broker_url, settings.worker_lost_timeout
    if broker.startswith(("redis://", "rediss://")):
        backend = broker
    else:
        backend = "db+postgresql://" + settings.database_url.split("://", 1)[1]
    return {"broker": broker, "backend": backend, "config_source": {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_annotations": "imgpipe.celery_steps.StepAnnotations",
        "imgpipe_worker_lost_timeout": timeout,
        "broker_heartbeat": max(1.0, timeout / 2),
        "broker_connection_retry_on_startup": True,
        # A step's stdout and stderr stay file descriptors, which Dagster captures into the step's log (in the
        # bucket); Celery's redirection into its logger would leave those logs empty.
        "worker_redirect_stdouts": False,
        # dagster-celery's publish retries, and Redis' visibility timeout, renewed by live workers, swept each
        # quarter of it.
        "broker_transport_options": {
            "max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5,
            "visibility_timeout": timeout,
            "unacked_restore_interval": max(1, int(timeout / 4)), "unacked_restore_throttle": 1,
        },
    }}


def step_executor(settings: Settings) -> ExecutorDefinition:
    """In-process by default: a step then costs far less than a step process of its own, and parallelism and
    isolation come from the batch runner's one process per image. The multiprocess executor is one setting away;
    forkserver with the project preloaded starts each of its steps from an already-imported interpreter. The
    distributed profile sends every step to Celery workers."""
    from dagster import in_process_executor, multiprocess_executor

    if settings.distributed:
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_config(settings))
    if settings.executor == "in_process":
        return in_process_executor
    return multiprocess_executor.configured({
        "max_concurrent": step_concurrency(),
        "start_method": {"forkserver": {"preload_modules": ["imgpipe.definitions"]}},
    })


def io_managers(settings: Settings) -> dict:
    """Steps on other machines hand their outputs over through the bucket, not a local folder; the embedded
    profile keeps Dagster's default file system IO manager."""
    if not settings.distributed:
        return {}
    from dagster_aws.s3 import S3PickleIOManager, S3Resource

    bucket, prefix = split_s3_url(settings.storage_url)
    return {"io_manager": S3PickleIOManager(s3_resource=S3Resource(), s3_bucket=bucket,
                                            s3_prefix=f"{prefix}/dagster-io".lstrip("/"))}
