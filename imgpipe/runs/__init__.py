"""How a request's Dagster run is launched and supervised: at once from whichever way the request came in
(`launch.py`), in a worker forked from a warm process that already holds Dagster and the code location
(`warm_server.py`), by a run launcher that knows its workers and so supports Dagster's run monitoring
(`launcher.py`); the requests' partitions, and their end when a request is purged (`partitions.py`)."""
