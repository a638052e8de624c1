"""How the distributed profile's steps outlive a lost Celery worker (README, "Scaling out": "A worker lost").

dagster-celery 0.29 sends each step to the workers as one `execute_plan` task and the run's coordinator waits on
its result with no bound; it retries nothing when a worker disappears (Dagster's op retries act only on a step
that raises, and a killed worker raises nothing). So, on Celery's side (the configuration is `celery_config` in
`imgpipe/backends.py`):

- Late acknowledgement (`task_acks_late`): a step's message is acknowledged when its task ends, not when a worker
  takes it. If the worker's process dies mid-step (`task_reject_on_worker_lost`), or the whole worker does, the
  message goes back to the queue and a surviving worker runs the step again. RabbitMQ gives it back as soon as
  the dead worker's connection drops (a machine that vanishes without closing it: within two missed heartbeats,
  `broker_heartbeat`). Redis has no connection-bound delivery: a message taken is parked until its visibility
  timeout; `keep_redis_leases` renews that timeout for the steps a live worker runs, so a dead worker's step
  is back in the queue one `worker_lost_timeout` after its worker stopped renewing, and a long step is never
  handed out twice.
- `StepTask` (the base of `execute_plan` in `imgpipe worker`): a message that outlived its run (the run failed
  or was canceled meanwhile, and a worker takes the message later) runs nothing.
- `StepResult` (what the coordinator waits on, installed through `task_annotations`): when no worker has
  answered a ping for `worker_lost_timeout` seconds, the step fails with `NoWorkerAnswered`, so the run fails
  instead of waiting for ever, and the failed-run sensor ends its request.

`compress_batch` itself drops the images its request has finished, so a step run again fetches and encodes only
what its lost worker had not finished.
"""
from __future__ import annotations

import logging
import threading
import time

from celery import Task
from celery.result import AsyncResult

log = logging.getLogger("imgpipe.celery")

# The Celery setting (in celery_config's config_source) that carries IMGPIPE_WORKER_LOST_TIMEOUT to the
# coordinator's and the workers' Celery apps.
TIMEOUT_SETTING = "imgpipe_worker_lost_timeout"


def ping_interval(timeout: float) -> float:
    """How often the coordinator pings while a step waits, and how often a worker renews its Redis leases."""
    return max(0.5, min(5.0, timeout / 4))


class NoWorkerAnswered(RuntimeError):
    """No Celery worker answered for the whole timeout: the step cannot run."""


class WorkerWatch:
    """Whether any worker of the app has answered a ping within the timeout; one per coordinator process, shared
    by every step it waits on, pinging at most every `ping_interval`."""

    _watches: dict[int, WorkerWatch] = {}
    _lock = threading.Lock()

    def __init__(self, app, timeout: float):
        self.app, self.timeout = app, timeout
        self.last_answer = time.monotonic()  # counted from the first step the coordinator waits on
        self.last_ping = 0.0

    @classmethod
    def of(cls, app) -> WorkerWatch:
        with cls._lock:
            if id(app) not in cls._watches:
                cls._watches[id(app)] = cls(app, float(app.conf.get(TIMEOUT_SETTING) or 60))
            return cls._watches[id(app)]

    def silent_for(self) -> float:
        """Seconds since a worker last answered (0 while they answer)."""
        now = time.monotonic()
        if now - self.last_ping >= ping_interval(self.timeout):
            self.last_ping = now
            try:
                if self.app.control.ping(timeout=1.0, limit=1):
                    self.last_answer = time.monotonic()
            except Exception as exc:  # the broker itself is unreachable: no worker can be reached either
                log.warning("pinging the Celery workers failed: %s", exc)
        return time.monotonic() - self.last_answer

    def lost(self) -> bool:
        return self.silent_for() > self.timeout


class StepResult(AsyncResult):
    """A step's Celery result as the coordinator polls it (`ready()`, then `get()`): also ready, as a failure,
    once no worker has answered for the timeout. A result is read once, then forgotten by the backend."""

    def _lost(self) -> bool:
        return not super().ready() and WorkerWatch.of(self.app).lost()

    def ready(self):
        return super().ready() or self._lost()

    def get(self, *args, **kwargs):
        if self._lost():
            watch = WorkerWatch.of(self.app)
            raise NoWorkerAnswered(
                f"no Celery worker answered for {watch.timeout:g} s (IMGPIPE_WORKER_LOST_TIMEOUT) while step task "
                f"{self.id} waited; start a worker (imgpipe worker), then retry the request (imgpipe retry)")
        value = super().get(*args, **kwargs)
        self.forget()
        return value


def _step_result(task, task_id, **kwargs) -> StepResult:
    return StepResult(task_id, backend=task.backend, task_name=task.name, app=task._get_app(), **kwargs)


class StepAnnotations:
    """Celery `task_annotations`: dagster-celery's step task hands out `StepResult`s."""

    def annotate(self, task):
        if task.name == "execute_plan":
            return {"AsyncResult": _step_result}
        return None

    def annotate_any(self):
        return None


class StepTask(Task):
    """The base of dagster-celery's `execute_plan` task in `imgpipe worker`: runs a step only while its run
    still waits for it."""

    def __call__(self, *args, **kwargs):
        if run_has_ended(kwargs["execute_step_args_packed"]):
            return []  # no events: nobody waits for them
        return super().__call__(*args, **kwargs)


def run_has_ended(execute_step_args_packed: dict) -> bool:
    """Whether the run of a step message has ended (or is gone), logging so when it has."""
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._grpc.types import ExecuteStepArgs
    from dagster._serdes import unpack_value

    args = unpack_value(execute_step_args_packed, as_type=ExecuteStepArgs)
    with DagsterInstance.from_ref(args.instance_ref) as instance:
        run = instance.get_run_by_id(args.run_id)
    if run is not None and run.status not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED,
                                              DagsterRunStatus.CANCELING, DagsterRunStatus.SUCCESS):
        return False
    log.warning("step %s of run %s not run: the run is %s", ", ".join(args.step_keys_to_execute or []),
                args.run_id, run.status.value if run else "gone")
    return True


def keep_redis_leases(app, timeout: float) -> threading.Thread | None:
    """With Redis as the broker, a message a worker took stays hidden from the others for the visibility timeout
    (`timeout`) and then goes back to the queue. This thread of the worker's main process renews that timeout
    for every message the worker holds, so only a worker that stopped (or cannot reach Redis) loses its steps."""
    if not app.conf.broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return None
    from celery.worker import state

    def renew() -> None:
        while True:
            time.sleep(ping_interval(timeout))
            held: list = []
            try:
                held = [r.message.delivery_tag for r in list(state.reserved_requests) if r.message is not None]
                if not held:
                    continue
                with app.connection_for_write() as connection:
                    channel = connection.default_channel
                    channel.client.zadd(channel.unacked_index_key, {tag: time.time() for tag in held}, xx=True)
            except Exception as exc:  # a lease is lost only after the whole timeout: keep trying
                log.warning("renewing the Redis visibility of %s step message(s) failed: %s", len(held), exc)

    thread = threading.Thread(target=renew, name="imgpipe-redis-leases", daemon=True)
    thread.start()
    return thread
