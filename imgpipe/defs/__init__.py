"""The Dagster layer, thin: the `imgpipe` resource, the partitioned assets, what their materializations record, the
jobs, the sensors and the retention schedule. `imgpipe.definitions` assembles them."""
