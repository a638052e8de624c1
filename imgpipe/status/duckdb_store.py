"""The embedded status store: one DuckDB file under IMGPIPE_HOME.

DuckDB lets one process at a time open the file, so no connection outlives an operation: every method opens,
works inside one transaction and closes, retrying with jittered backoff while another process holds the lock.
Readers (the REST API, the contract's checks) get in between writes the same way.
"""
from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import duckdb
import pandas as pd

from imgpipe.status.schema import EXISTING_COLUMNS, SCHEMA, upgrades
from imgpipe.status.store import StatusStore, T


def _is_lock_conflict(exc: Exception) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


class DuckDBStatusStore(StatusStore):
    """Short-lived DuckDB connections with retry; the schema is created on first use."""

    def __init__(self, path: Path | str, lock_timeout: float = 60.0):
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._held = threading.local()  # the session this thread holds, if any

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """This thread's operations inside share one session, opened once: opening the file costs DuckDB more CPU
        than most operations. Other processes wait for the file meanwhile, so a caller holds it only around a few
        quick operations, never around a download or a call to another store of the same file."""
        if getattr(self._held, "con", None) is not None:
            yield
            return
        self.ensure_schema()
        with self._session() as con:
            self._held.con = con
            try:
                yield
            finally:
                self._held.con = None

    def _busy_message(self) -> str:
        return f"{self.path} stayed locked"

    @contextlib.contextmanager
    def _session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection held under an exclusive lock on `<db>.lock`, from connect to close.

        DuckDB's own file lock alone lost an update now and then with eight writing processes (a process could
        open the file while another was still checkpointing it on close); our processes therefore take turns
        through this lock, and DuckDB's lock only has to keep out readers from outside (retried here)."""
        deadline = time.monotonic() + self.lock_timeout
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock_file:
            self._retry(lambda: fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB),
                        lambda exc: isinstance(exc, BlockingIOError), deadline)
            try:
                con = self._retry(lambda: duckdb.connect(str(self.path)),
                                  lambda exc: isinstance(exc, duckdb.IOException) and _is_lock_conflict(exc),
                                  deadline)
                try:
                    yield con
                finally:
                    con.close()
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _transact(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Always read-write: within one process DuckDB refuses a read-only and a read-write connection to the
        same file at once, and across processes either kind takes the whole file anyway."""
        held = getattr(self._held, "con", None)
        if held is not None:
            return self._in_transaction(held, work)
        self.ensure_schema()
        with self._session() as con:
            return self._in_transaction(con, work)

    @staticmethod
    def _in_transaction(con: duckdb.DuckDBPyConnection, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        con.begin()
        try:
            result = work(con)
            con.commit()
        except BaseException:
            con.rollback()
            raise
        return result

    def _execute(self, con: duckdb.DuckDBPyConnection, sql: str, params: Sequence = ()) -> duckdb.DuckDBPyConnection:
        return con.execute(sql, list(params))

    def _register(self, con: duckdb.DuckDBPyConnection, name: str, frame: pd.DataFrame) -> None:
        con.register(name, frame)

    def _schema_key(self) -> str:
        return "duckdb:" + str(self.path.resolve())

    def _create_schema(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def create(con: duckdb.DuckDBPyConnection) -> None:
            before = set(con.execute(EXISTING_COLUMNS).fetchall())
            con.execute(SCHEMA)
            for statement in upgrades(before, set(con.execute(EXISTING_COLUMNS).fetchall())):
                con.execute(statement)

        with self._session() as con:
            self._in_transaction(con, create)  # an upgrade interrupted half-way is done again whole
