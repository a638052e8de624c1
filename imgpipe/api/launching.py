"""The API's launch at once: a request it accepted gets its Dagster run right after the 202 is sent, not at the
inbox sensor's next loop. The code location is loaded in a thread when the API starts, so neither the first
upload nor the API's start waits for it. Where this process has no Dagster instance, or a launch fails, the
request stays queued and the inbox sensor launches it (`imgpipe.runs.launch`)."""
from __future__ import annotations

import logging
import threading

from imgpipe.backends import Backends

log = logging.getLogger("imgpipe.api")
# An upload that comes while the code location is still loading waits this long for it, else the sensor takes it.
READY_TIMEOUT = 5.0
# The daemon makes the instance's storage when it starts; the API, started beside it, waits this long for it.
STORAGE_WAIT = 600.0


class LaunchAtOnce:
    def __init__(self, backends: Backends):
        self._backends = backends
        self._launcher = None
        self._ready = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._load, name="imgpipe-launcher", daemon=True).start()

    def _load(self) -> None:
        try:
            from imgpipe.runs.launch import launcher_at_once

            self._launcher = launcher_at_once(self._backends, start_here=True, wait_for_storage=STORAGE_WAIT)
            if self._launcher is None:
                log.info("no Dagster instance for this process (no dagster.yaml in DAGSTER_HOME, or its storage not "
                         "made by the daemon): the inbox sensor launches the requests' runs")
            else:
                self._launcher.warm_up()
        except Exception:  # the sensor still launches every request; this process only loses the head start
            log.exception("the launch at once is off: loading the code location failed")
            self._launcher = None
        finally:
            self._ready.set()

    def launch(self, request_id: str) -> None:
        """Runs after the 202 is sent (a background task); never raises."""
        if not self._ready.wait(READY_TIMEOUT) or self._launcher is None:
            return
        try:
            run_id = self._launcher.launch(request_id)
        except Exception:
            log.exception("launching the run of request %s failed; the inbox sensor will", request_id)
            return
        if run_id:
            log.info("request %s: run %s launched", request_id, run_id, extra={"event": "launched"})
