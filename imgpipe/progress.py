"""Progress bars: one drawn while waiting for a request to end (`imgpipe submit --wait`, `imgpipe retry
--wait`), and the board of `imgpipe up`, a bar per running request."""
from __future__ import annotations

import shutil
import time
from typing import Callable, TextIO

from imgpipe.status.models import TERMINAL_STATUSES

POLL_INTERVAL = 0.5


def bar(counts: dict, width: int = 30) -> str:
    """`[#####.....] 45/100 images (3 failed)`."""
    total, failed = counts["total"], counts["failed"]
    done = counts["compressed"] + failed
    filled = width * done // total if total else 0
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images ({failed} failed)"


def tenth(counts: dict) -> int:
    """How many tenths of the way a request is: a log gets a progress line each time this changes."""
    total = counts["total"]
    return 10 * (counts["compressed"] + counts["failed"]) // total if total else 0


class ProgressBar:
    """`[#####.....] 45/100 images (3 failed)` on stderr: redrawn in place on a terminal; in a log, one line
    per tenth of the way so that the log stays short."""

    WIDTH = 30

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.in_place = stream.isatty()
        self.last_tenth: int | None = None

    def draw(self, counts: dict) -> None:
        line = bar(counts, self.WIDTH)
        if self.in_place:
            self.stream.write("\r" + line)
        else:
            reached = tenth(counts)
            if reached == self.last_tenth:
                return
            self.last_tenth = reached
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


class ProgressBoard:
    """A bar per running request, for `imgpipe up`, with event lines printed above them. On a terminal the bars
    share one line, redrawn in place (an event line clears it, is printed, and the bars come back under it);
    in a log each request gets a line per tenth of the way."""

    WIDTH = 20

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.in_place = stream.isatty()
        self.counts: dict[str, dict] = {}
        self.tenths: dict[str, int] = {}

    def say(self, line: str) -> None:
        self._clear()
        self.stream.write(line + "\n")
        self._redraw()

    def draw(self, request_id: str, counts: dict) -> None:
        self.counts[request_id] = counts
        if self.in_place:
            self._clear()
            self._redraw()
            return
        reached = tenth(counts)
        if self.tenths.get(request_id) != reached:
            self.tenths[request_id] = reached
            self.stream.write(f"  {request_id}  {bar(counts, self.WIDTH)}\n")
            self.stream.flush()

    def remove(self, request_id: str) -> None:
        self._clear()
        self.counts.pop(request_id, None)
        self.tenths.pop(request_id, None)
        self._redraw()

    def _clear(self) -> None:
        if self.in_place and self.counts:
            self.stream.write("\r\x1b[K")

    def _redraw(self) -> None:
        if self.in_place and self.counts:
            width = shutil.get_terminal_size().columns - 1
            line = "  ".join(f"{request_id[-8:]} {bar(counts, self.WIDTH)}" for request_id, counts in self.counts.items())
            self.stream.write(line[:width])
        self.stream.flush()
