"""The sensors, evaluated against a real Dagster instance: intake, run requests, partitions, failed runs."""
from __future__ import annotations

import uuid

from dagster import DagsterInstance, build_sensor_context, instance_for_test

from imgpipe.definitions import defs
from imgpipe.defs.sensors import inbox_sensor
from imgpipe.settings import Settings
from imgpipe.status.store import DuckDBStatusStore
from imgpipe_tests.servers import drop_into_inbox

GOOD = "S. No.,Product Name,Input Image Urls\n1,Chair,https://img.example/a.jpg\n"


def evaluate(instance: DagsterInstance):
    with build_sensor_context(instance=instance, resources=defs.resources, sensor_name="inbox_sensor") as context:
        return inbox_sensor(context)


def test_a_dropped_file_becomes_a_partition_and_one_run_request():
    name = f"sensor-{uuid.uuid4().hex[:6]}.csv"
    drop_into_inbox(Settings.from_env().home, name, GOOD)
    with instance_for_test() as instance:
        result = evaluate(instance)
        store = DuckDBStatusStore(Settings.from_env().db_path)
        request_id = store.latest_request_for_file(name)["request_id"]
        [run] = [r for r in result.run_requests if r.partition_key == request_id]
        assert run.run_key == f"{request_id}:0"
        assert run.tags["imgpipe/request_id"] == request_id and run.tags["imgpipe/file_name"] == name
        [add] = result.dynamic_partitions_requests
        assert request_id in add.partition_keys and add.partitions_def_name == "requests"


def test_a_rejected_file_launches_nothing():
    name = f"bad-{uuid.uuid4().hex[:6]}.csv"
    drop_into_inbox(Settings.from_env().home, name, "S. No.,Product Name,Input Image Urls\n1,,ftp://x/y.jpg\n")
    with instance_for_test() as instance:
        result = evaluate(instance)
        request = DuckDBStatusStore(Settings.from_env().db_path).latest_request_for_file(name)
        assert request["status"] == "rejected"
        assert all(r.partition_key != request["request_id"] for r in result.run_requests)


def test_a_retried_request_gets_a_new_run_key():
    name = f"again-{uuid.uuid4().hex[:6]}.csv"
    drop_into_inbox(Settings.from_env().home, name, GOOD)
    store = DuckDBStatusStore(Settings.from_env().db_path)
    with instance_for_test() as instance:
        evaluate(instance)
        request_id = store.latest_request_for_file(name)["request_id"]
        store.finish_request(request_id, "completed_with_errors")
        assert all(r.partition_key != request_id for r in evaluate(instance).run_requests)
        store.requeue_for_retry(request_id)
        [run] = [r for r in evaluate(instance).run_requests if r.partition_key == request_id]
        assert run.run_key == f"{request_id}:1"
