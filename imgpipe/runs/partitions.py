"""The requests' dynamic partitions, one per request: added when its run is asked for, forgotten when the request
is purged (`imgpipe.retention`), by `imgpipe purge` and the retention schedule alike."""
from __future__ import annotations

from typing import Callable

from dagster import DagsterInstance, DynamicPartitionsDefinition, RunsFilter

from imgpipe.runs.tags import SINGLE_REQUEST_TAG

requests_partitions = DynamicPartitionsDefinition(name="requests")


def partition_forgetter(instance: DagsterInstance, delete_runs: bool) -> Callable[[str], None]:
    """Removes a purged request's dynamic partition (its materializations go with it from the asset's view), and
    with `delete_runs` its runs too."""
    def forget(request_id: str) -> None:
        if delete_runs:
            for record in instance.get_run_records(RunsFilter(tags={SINGLE_REQUEST_TAG: request_id})):
                instance.delete_run(record.dagster_run.run_id)
        if instance.has_dynamic_partition(requests_partitions.name, request_id):
            instance.delete_dynamic_partition(requests_partitions.name, request_id)

    return forget
