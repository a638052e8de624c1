"""The sensors, evaluated against a real Dagster instance over a home of their own: intake, run requests (a run of
its own, shared runs, room for runs), partitions, webhook retries."""
from __future__ import annotations

import pytest
from dagster import build_sensor_context, instance_for_test

from imgpipe.definitions import build_defs
from imgpipe.settings import Settings
from imgpipe.defs.jobs import request_tag
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.store import utcnow
from imgpipe_tests.servers import drop_into_inbox, product_csv

GOOD = "S. No.,Product Name,Input Image Urls\n1,Chair,https://img.example/a.jpg\n"


@pytest.fixture
def home(tmp_path):
    """Definitions, a store and a Dagster instance over a home of the test's own."""
    settings = Settings(home=tmp_path / "home", max_runs=2)
    defs = build_defs(settings, secrets_from_env=False)
    with instance_for_test() as instance:
        yield settings, defs, DuckDBStatusStore(settings.db_path), instance


def evaluate(home, name: str = "inbox_sensor"):
    settings, defs, _, instance = home
    with build_sensor_context(instance=instance, resources=defs.resources, sensor_name=name) as context:
        return defs.resolve_sensor_def(name)(context)


def test_a_dropped_file_becomes_a_partition_and_one_run_request(home):
    settings, _, store, _ = home
    drop_into_inbox(settings.home_dir, "chairs.csv", GOOD)
    result = evaluate(home)
    request_id = store.latest_request_for_file("chairs.csv").request_id
    [run] = result.run_requests
    assert (run.run_key, run.partition_key, run.job_name) == (f"{request_id}:0", request_id, "process_request")
    assert run.tags["imgpipe/request_id"] == request_id and run.tags["imgpipe/file_name"] == "chairs.csv"
    [add] = result.dynamic_partitions_requests
    assert add.partition_keys == [request_id] and add.partitions_def_name == "requests"
    again = evaluate(home)  # the next tick asks for the same run: Dagster launches it once
    assert [r.run_key for r in again.run_requests] == [run.run_key]


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
                                                                            for i in range(500)]))
    first = evaluate(home)
    assert len(first.run_requests) == 2  # each large request alone: the two runs fill the room (max_runs=2)
    drop_into_inbox(settings.home_dir, "small-1.csv", GOOD)
    drop_into_inbox(settings.home_dir, "small-2.csv", GOOD)
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
