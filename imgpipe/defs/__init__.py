"""The Dagster layer, thin: the `imgpipe` resource, the partitioned assets, the jobs and the sensors.
`imgpipe.definitions` assembles them."""
