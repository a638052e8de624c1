"""The names runs are known by: the jobs that process requests, and the tags the run coordinator, the sensors and
the Runs page find runs by. Apart from the jobs' definitions, so that launchers and jobs can both name them."""

# The code location's module, and its name in workspace.yaml: runs created outside the daemon must name it.
CODE_LOCATION_NAME = "imgpipe.definitions"
# A request alone in its run: its partition of the asset job, each asset a step.
REQUEST_ASSET_JOB = "process_request"
# Requests (one or several) processed and ended each on its own in the one step of a run.
PROCESS_REQUESTS_JOB = "process_requests_job"
RUN_KEY_TAG = "imgpipe/run_key"
# Processing runs are limited to what the machine can take at once; the short jobs that end requests and
# deliver webhooks never wait behind them.
KIND_TAG = "imgpipe/kind"
# The request of a run that holds one request only (a request's own run, or the end of a dead run's one request).
SINGLE_REQUEST_TAG = "imgpipe/request_id"


def request_tag(request_id: str) -> str:
    """A tag of every processing run that holds the request, its own or shared: the Runs page filters by it."""
    return f"imgpipe-request/{request_id}"  # one "/" only: Dagster deprecates keys of more sections
