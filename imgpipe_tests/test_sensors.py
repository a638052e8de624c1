"""The sensors, evaluated against a real Dagster instance over a home of their own: intake, run requests (a run of
its own, shared runs, room for runs), partitions, webhook retries."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pytest
from dagster import DagsterRun, DagsterRunStatus, RunsFilter, build_sensor_context, instance_for_test
from dagster._core.utils import make_new_run_id

from imgpipe.backends import Backends, open_storage
from imgpipe.definitions import build_defs
from imgpipe.defs.sensors import due_after
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.run_plan import OWN_RUN_IMAGES
from imgpipe.runs.launch import RunLauncherAtOnce
from imgpipe.runs.tags import REQUEST_ASSET_JOB, request_tag
from imgpipe.settings import Settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.models import Source, utcnow
from imgpipe_tests.servers import drop_into_inbox, product_csv

GOOD = "S. No.,Product Name,Input Image Urls\n1,Chair,https://img.example/a.jpg\n"


@pytest.fixture
def home(tmp_path):
    """Definitions, a store and a Dagster instance over a home of the test's own."""
    settings = Settings(home=tmp_path / "home", max_runs=2)
    defs = build_defs(settings, secrets_from_env=False)
    # Runs submitted are queued (as in dagster.yaml), not started: these tests look at what is asked for.
    with instance_for_test(overrides={"run_coordinator": {
            "module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}}) as instance:
        yield settings, defs, DuckDBStatusStore(settings.db_path), instance


def evaluate(home, name: str = "inbox_sensor"):
    settings, defs, _, instance = home
    with build_sensor_context(instance=instance, resources=defs.resources, sensor_name=name) as context:
        return defs.resolve_sensor_def(name)(context)


def settle_run_keys(settings: Settings) -> None:
    """As if DIRECT_LAUNCH_GRACE had passed since every run key was given."""
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute("UPDATE requests SET run_key_at = run_key_at - INTERVAL 61 SECOND")


def test_a_dropped_file_becomes_a_partition_and_one_run_request(home):
    settings, _, store, _ = home
    drop_into_inbox(settings.home_dir, "chairs.csv", GOOD)
    result = evaluate(home)
    request_id = store.latest_request_for_file("chairs.csv").request_id
    [run] = result.run_requests
    # A small request alone: the one-step job, which records the partition's materializations.
    assert (run.run_key, run.job_name) == (f"{request_id}:0", "process_requests_job")
    assert run.run_config == {"ops": {"process_requests": {"config": {"request_ids": [request_id]}}}}
    assert run.tags["imgpipe/request_id"] == request_id and run.tags["imgpipe/file_name"] == "chairs.csv"
    [add] = result.dynamic_partitions_requests
    assert add.partition_keys == [request_id] and add.partitions_def_name == "requests"
    assert evaluate(home).run_requests == []  # asked for once; its launcher has DIRECT_LAUNCH_GRACE to create it
    settle_run_keys(settings)
    again = evaluate(home)  # then asked for again, the same run: Dagster launches it once
    assert [r.run_key for r in again.run_requests] == [run.run_key]


def test_a_large_request_alone_runs_its_partition_of_the_asset_job(home):
    settings, _, store, _ = home
    drop_into_inbox(settings.home_dir, "big.csv",
                    product_csv([[f"https://img.example/{i}.jpg"] for i in range(OWN_RUN_IMAGES)]))
    [run] = evaluate(home).run_requests
    request_id = store.latest_request_for_file("big.csv").request_id
    assert (run.run_key, run.partition_key, run.job_name) == (f"{request_id}:0", request_id, "process_request")


def test_a_rejected_file_launches_nothing(home):
    settings, _, store, _ = home
    drop_into_inbox(settings.home_dir, "bad.csv", "S. No.,Product Name,Input Image Urls\n1,,ftp://x/y.jpg\n")
    result = evaluate(home)
    assert store.latest_request_for_file("bad.csv").status == "rejected"
    assert result.run_requests == []


def test_small_requests_queued_together_share_a_run(home):
    settings, _, store, _ = home
    for index in range(6):
        drop_into_inbox(settings.home_dir, f"seller-{index}.csv", GOOD.replace("Chair", f"Chair {index}"))
    result = evaluate(home)
    [run] = result.run_requests
    ids = [store.latest_request_for_file(f"seller-{index}.csv").request_id for index in range(6)]
    assert run.job_name == "process_requests_job" and run.partition_key is None
    assert run.run_config == {"ops": {"process_requests": {"config": {"request_ids": ids}}}}
    assert all(run.tags[request_tag(i)] == "true" for i in ids)
    assert set(result.dynamic_partitions_requests[0].partition_keys) == set(ids)
    assert store.requests_of_run(run.run_key) == ids


def test_new_runs_wait_while_the_machine_has_no_room_and_then_group(home):
    settings, _, store, _ = home
    for index in range(2):
        drop_into_inbox(settings.home_dir, f"big-{index}.csv", product_csv([[f"https://img.example/{i}.jpg"]
                                                                            for i in range(OWN_RUN_IMAGES)]))
    first = evaluate(home)
    assert len(first.run_requests) == 2  # each large request alone: the two runs fill the room (max_runs=2)
    drop_into_inbox(settings.home_dir, "small-1.csv", GOOD)
    drop_into_inbox(settings.home_dir, "small-2.csv", GOOD)
    settle_run_keys(settings)
    waiting = evaluate(home)
    assert {r.run_key for r in waiting.run_requests} == {r.run_key for r in first.run_requests}
    small = [store.latest_request_for_file(f"small-{i}.csv") for i in (1, 2)]
    assert all(r.run_key is None for r in small)  # not yet given a run
    for request in first.run_requests:  # the large runs start: their requests leave the queue
        store.start_processing(request.partition_key, "run")
    [shared] = evaluate(home).run_requests
    assert shared.run_config["ops"]["process_requests"]["config"]["request_ids"] == [r.request_id for r in small]


def test_a_retried_request_gets_a_new_run_key(home):
    settings, _, store, _ = home
    drop_into_inbox(settings.home_dir, "again.csv", GOOD)
    evaluate(home)
    request_id = store.latest_request_for_file("again.csv").request_id
    store.start_processing(request_id, "run-0")
    store.finish_request(request_id, "completed_with_errors")
    assert evaluate(home).run_requests == []
    store.requeue_for_retry(request_id)
    [run] = evaluate(home).run_requests
    assert run.run_key == f"{request_id}:1"


def test_a_webhook_attempt_that_falls_due_gets_one_run_of_its_own(home):
    _, _, store, _ = home
    store.enqueue_webhook(webhook_id="msg_1", request_id="r-hook", url="https://hooks.example/x",
                          event_type="request.completed", payload=b"{}")
    # Just queued: the run's own webhook step is about to make the first attempt.
    assert "msg_1" not in str(evaluate(home, "webhook_retry_sensor"))
    entry = store.claim_webhook("msg_1", lease_seconds=0)
    store.record_webhook_attempt(entry, status_code=503, error="HTTP 503", attempted_at=utcnow(), state="pending",
                                 next_attempt_at=utcnow())
    [run] = evaluate(home, "webhook_retry_sensor")
    assert run.run_key == "msg_1:1"  # one run per attempt, however many ticks see it due
    assert run.run_config == {"ops": {"attempt_webhook": {"config": {"webhook_id": "msg_1"}}}}


def test_a_processing_request_whose_run_failed_unseen_is_ended_by_the_backstop(home):
    settings, _, store, instance = home
    drop_into_inbox(settings.home_dir, "cut.csv", GOOD)
    evaluate(home)
    request_id = store.latest_request_for_file("cut.csv").request_id
    run = instance.add_run(DagsterRun(job_name="process_requests_job", run_id=make_new_run_id(),
                                      status=DagsterRunStatus.FAILURE))
    store.start_processing(request_id, run.run_id)
    [end] = evaluate(home, "ended_run_sensor")
    assert end.run_key == run.run_id
    assert end.run_config["ops"]["end_failed_request"]["config"]["request_ids"] == [request_id]
    store.finish_request(request_id, "failed", "ended")
    assert "no processing request" in str(evaluate(home, "ended_run_sensor"))


def test_a_request_launched_at_once_is_never_also_asked_for_by_the_sensor(home):
    """Many uploads, each launched at once from its own thread while the inbox sensor ticks over and over: every
    request is launched by exactly one of the two, and gets exactly one run."""
    settings, _, store, instance = home
    settings = settings.model_copy(update={"max_runs": 100})
    # Room for every run, for the sensor as for the launcher: the race is over who launches, not over room.
    with_room = (settings, build_defs(settings, secrets_from_env=False), store, instance)
    backends = Backends(settings, store, open_storage(settings))
    launcher = RunLauncherAtOnce(backends, instance, start_here=False)

    asked_by_sensor: list[str] = []
    stop = threading.Event()
    ticks = threading.Condition()
    ticks_done = 0

    def upload_and_launch(index: int) -> tuple[str, str | None]:  # as the API does
        upload = Upload(GOOD.replace("Chair", f"Chair {index}").encode(), f"u{index}.csv", Source.API)
        request_id = take_upload(backends, upload).request_id
        if index % 4 == 3:  # a launch that comes late: a whole tick of the sensor sees the request first
            with ticks:
                seen = ticks_done
                assert ticks.wait_for(lambda: ticks_done >= seen + 2, timeout=60)
        else:
            time.sleep(index % 4 * 0.4)  # launches a little late, which the sensor's tick may or may not beat
        return request_id, launcher.launch(request_id)

    def tick():
        nonlocal ticks_done
        while not stop.is_set():
            for run in evaluate(with_room).run_requests:
                asked_by_sensor.extend(run.run_config["ops"]["process_requests"]["config"]["request_ids"])
            with ticks:
                ticks_done += 1
                ticks.notify_all()

    ticker = threading.Thread(target=tick)
    ticker.start()
    with ThreadPoolExecutor(4) as pool:
        launched = dict(pool.map(upload_and_launch, range(16)))
    stop.set()
    ticker.join()
    request_ids = list(launched)
    for run in evaluate(with_room).run_requests:  # the sensor's tick after the last upload
        asked_by_sensor.extend(run.run_config["ops"]["process_requests"]["config"]["request_ids"])
    at_once = {request_id for request_id, run_id in launched.items() if run_id}
    assert at_once and asked_by_sensor and not at_once & set(asked_by_sensor)
    assert set(request_ids[3::4]) <= set(asked_by_sensor)  # the late ones: a whole tick saw each first
    assert at_once | set(asked_by_sensor) == set(request_ids)
    for request_id in at_once:
        [run] = instance.get_runs(RunsFilter(tags={request_tag(request_id): "true"}))
        assert run.tags["dagster/sensor_name"] == "inbox_sensor" and run.tags["dagster/run_key"] == f"{request_id}:0"


@pytest.mark.parametrize("interval, given", [(1, 1), (2, 1), (5, 4), (10, 9)])
def test_the_inbox_is_checked_on_the_first_daemon_loop_its_interval_after_the_last(interval, given):
    # Dagster skips a sensor whose last tick started less than its minimum interval ago, on a 5 s loop: the
    # interval itself would put a 5 s check off to 10 s whenever the last tick started a little late.
    assert due_after(interval) == given
    sensor = build_defs(Settings(sensor_interval=interval)).get_sensor_def("inbox_sensor")
    assert sensor.minimum_interval_seconds == given


def test_a_large_request_launched_at_once_gets_a_run_of_the_asset_job_for_its_partition(home):
    """A request of OWN_RUN_IMAGES images, launched at once as the API does, runs the partitioned asset job,
    its tags and config resolved from the job as the run worker loads it."""
    settings, _, store, instance = home
    backends = Backends(settings, store, open_storage(settings))
    csv = product_csv([[f"https://img.example/{i}.jpg"] for i in range(OWN_RUN_IMAGES)])
    request_id = take_upload(backends, Upload(csv.encode(), "big.csv", Source.API)).request_id
    run_id = RunLauncherAtOnce(backends, instance, start_here=False).launch(request_id)
    run = instance.get_run_by_id(run_id)
    assert run.job_name == REQUEST_ASSET_JOB
    assert run.tags["dagster/partition"] == request_id and run.tags[request_tag(request_id)] == "true"
