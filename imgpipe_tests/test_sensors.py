"""The sensors, evaluated against a real Dagster instance: intake, run requests, partitions, failed runs."""
from __future__ import annotations

import uuid

from dagster import DagsterInstance, build_sensor_context, instance_for_test

from imgpipe.definitions import defs
from imgpipe.settings import load_settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.store import utcnow
from imgpipe_tests.servers import drop_into_inbox

GOOD = "S. No.,Product Name,Input Image Urls\n1,Chair,https://img.example/a.jpg\n"


def evaluate(instance: DagsterInstance, name: str = "inbox_sensor"):
    with build_sensor_context(instance=instance, resources=defs.resources, sensor_name=name) as context:
        return defs.resolve_sensor_def(name)(context)


def test_a_dropped_file_becomes_a_partition_and_one_run_request():
    name = f"sensor-{uuid.uuid4().hex[:6]}.csv"
    drop_into_inbox(load_settings().home_dir, name, GOOD)
    with instance_for_test() as instance:
        result = evaluate(instance)
        store = DuckDBStatusStore(load_settings().db_path)
        request_id = store.latest_request_for_file(name).request_id
        [run] = [r for r in result.run_requests if r.partition_key == request_id]
        assert run.run_key == f"{request_id}:0"
        assert run.tags["imgpipe/request_id"] == request_id and run.tags["imgpipe/file_name"] == name
        [add] = result.dynamic_partitions_requests
        assert request_id in add.partition_keys and add.partitions_def_name == "requests"


def test_a_rejected_file_launches_nothing():
    name = f"bad-{uuid.uuid4().hex[:6]}.csv"
    drop_into_inbox(load_settings().home_dir, name, "S. No.,Product Name,Input Image Urls\n1,,ftp://x/y.jpg\n")
    with instance_for_test() as instance:
        result = evaluate(instance)
        request = DuckDBStatusStore(load_settings().db_path).latest_request_for_file(name)
        assert request.status == "rejected"
        assert all(r.partition_key != request.request_id for r in result.run_requests)


def test_a_retried_request_gets_a_new_run_key():
    name = f"again-{uuid.uuid4().hex[:6]}.csv"
    drop_into_inbox(load_settings().home_dir, name, GOOD)
    store = DuckDBStatusStore(load_settings().db_path)
    with instance_for_test() as instance:
        evaluate(instance)
        request_id = store.latest_request_for_file(name).request_id
        store.finish_request(request_id, "completed_with_errors")
        assert all(r.partition_key != request_id for r in evaluate(instance).run_requests)
        store.requeue_for_retry(request_id)
        [run] = [r for r in evaluate(instance).run_requests if r.partition_key == request_id]
        assert run.run_key == f"{request_id}:1"


def test_a_webhook_attempt_that_falls_due_gets_one_run_of_its_own():
    store = DuckDBStatusStore(load_settings().db_path)
    webhook_id = f"msg_{uuid.uuid4().hex[:8]}"
    store.enqueue_webhook(webhook_id=webhook_id, request_id="r-hook", url="https://hooks.example/x",
                          event_type="request.completed", payload=b"{}")
    with instance_for_test() as instance:
        # Just queued: the run's own webhook step is about to make the first attempt.
        assert webhook_id not in str(evaluate(instance, "webhook_retry_sensor"))
        entry = store.claim_webhook(webhook_id, lease_seconds=0)
        store.record_webhook_attempt(entry, status_code=503, error="HTTP 503", attempted_at=utcnow(),
                                     state="pending", next_attempt_at=utcnow())
        [run] = [r for r in evaluate(instance, "webhook_retry_sensor") if webhook_id in r.run_key]
        assert run.run_key == f"{webhook_id}:1"  # one run per attempt, however many ticks see it due
        assert run.run_config == {"ops": {"attempt_webhook": {"config": {"webhook_id": webhook_id}}}}
