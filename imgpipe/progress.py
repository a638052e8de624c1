"""A progress bar drawn while waiting for a request to end: for `imgpipe submit --wait`, `imgpipe retry
--wait` and `imgpipe up`."""
from __future__ import annotations

import time
from typing import Callable, TextIO

from imgpipe.status.models import TERMINAL_STATUSES

POLL_INTERVAL = 0.5


class ProgressBar:
    """`[#####.....] 45/100 images (3 failed)` on stderr: redrawn in place on a terminal; in a log, one line
    per tenth of the way so that the log stays short."""

    WIDTH = 30

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.in_place = stream.isatty()
        self.last_tenth: int | None = None

    def draw(self, counts: dict) -> None:
        total, failed = counts["total"], counts["failed"]
        done = counts["compressed"] + failed
        filled = self.WIDTH * done // total if total else 0
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} images ({failed} failed)"
        if self.in_place:
            self.stream.write("\r" + line)
        else:
            tenth = 10 * done // total if total else 0
            if tenth == self.last_tenth:
                return
            self.last_tenth = tenth
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.in_place:
            self.stream.write("\n")
            self.stream.flush()


def wait_until_terminal(fetch: Callable[[], dict], stream: TextIO, interval: float = POLL_INTERVAL) -> dict:
    """Poll the request document until its status is terminal, drawing the progress bar; return it."""
    progress = ProgressBar(stream)
    try:
        while True:
            document = fetch()
            progress.draw(document["counts"])
            if document["status"] in TERMINAL_STATUSES:
                return document
            time.sleep(interval)
    finally:  # also on an error or Ctrl-C, so that what is printed next starts on a line of its own
        progress.finish()
