"""The status store's interface: every statement and public method, written once
(docs/getting-started.md#status).

A backend (`DuckDBStatusStore`, the embedded default; `PostgresStatusStore`, the distributed profile) differs
only in how a transaction is opened, how parameters are spelled and how a DataFrame reaches a statement. Every
method is one short transaction on a connection of its own, so no process holds the database between
operations. Rows come back typed (`imgpipe.status.models`). The statements are grouped by what they are about,
each group a class of its own mixed into `StatusStore`; the tables they read and write are in
`imgpipe.status.schema`.
"""
from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import Any, Callable, Iterator, Sequence, TypeVar

import pandas as pd

from imgpipe.status.dashboard_reads import DashboardReads
from imgpipe.status.idempotency import IdempotencyKeys
from imgpipe.status.image_rows import ImageRows
from imgpipe.status.models import row_dicts
from imgpipe.status.rendition_rows import RenditionRows
from imgpipe.status.request_rows import RequestRows
from imgpipe.status.retention_rows import RetentionRows
from imgpipe.status.webhook_outbox import WebhookOutbox

T = TypeVar("T")
R = TypeVar("R")


class StoreBusy(RuntimeError):
    """The database stayed locked by (or kept conflicting with) other processes for longer than the store is
    willing to wait."""


class StatusStore(RequestRows, ImageRows, RetentionRows, WebhookOutbox, DashboardReads, IdempotencyKeys,
                  RenditionRows):
    """Every statement and public method of the status store, written once with `?` placeholders.

    A backend supplies `_transact` (run a function inside one transaction on a fresh connection, retrying
    while the database is busy), `_execute` (one statement; returns something with `fetchone`, `fetchall`
    and `description`), `_register` (make a DataFrame readable by name within the transaction),
    `_schema_key`/`_create_schema` (the schema is created once per process and database) and `_busy_message`."""

    _schema_ready: set[str] = set()
    _schema_lock = threading.Lock()

    lock_timeout: float

    # ------------------------------------------------------------------ backend

    def _transact(self, work: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def _execute(self, con: Any, sql: str, params: Sequence = ()) -> Any:
        raise NotImplementedError

    def _register(self, con: Any, name: str, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def _schema_key(self) -> str:
        raise NotImplementedError

    def _create_schema(self) -> None:
        raise NotImplementedError

    def _busy_message(self) -> str:
        """What StoreBusy says, before "for <lock_timeout> s"."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared machinery

    def _retry(self, attempt: Callable[[], T], busy: Callable[[Exception], bool], deadline: float) -> T:
        """`attempt()` until it does not fail with an exception `busy` accepts, with jittered exponential
        backoff; StoreBusy once `deadline` (time.monotonic) has passed."""
        delay = 0.005
        while True:
            try:
                return attempt()
            except Exception as exc:
                if not busy(exc):
                    raise
                if time.monotonic() > deadline:
                    raise StoreBusy(f"{self._busy_message()} for {self.lock_timeout:.0f} s") from exc
            # Jitter keeps several waiting writers from retrying in lock-step.
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.2)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Operations of this thread inside share what an operation would otherwise open for itself; each is still
        its own transaction. Nothing to share here (a server's connections are cheap); see DuckDBStatusStore."""
        yield

    def ensure_schema(self) -> None:
        """The schema made, once per process and database (every operation asks first). A process that forks
        workers asks before it forks, so that they find it done."""
        key = self._schema_key()
        if key in StatusStore._schema_ready:
            return
        with StatusStore._schema_lock:
            if key in StatusStore._schema_ready:
                return
            self._create_schema()
            StatusStore._schema_ready.add(key)

    def _rows(self, sql: str, params: Sequence = ()) -> list[dict]:
        return self._transact(lambda con: row_dicts(self._execute(con, sql, params)))

    def _typed(self, cls: type[R], sql: str, params: Sequence = ()) -> list[R]:
        return [cls.from_mapping(row) for row in self._rows(sql, params)]

    def _run(self, *statements: tuple[str, Sequence]) -> None:
        """Several statements in one transaction."""
        def work(con) -> None:
            for sql, params in statements:
                self._execute(con, sql, params)

        self._transact(work)
