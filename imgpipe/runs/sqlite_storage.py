"""The embedded profile's Dagster storages (`package_data/dagster.yaml`): Dagster's own SQLite run, schedule and
event log storages, the same files and tables, with two costs paid once per process instead of on every use.

- Dagster's SQLite storages build a SQLAlchemy engine for every connection, about 1 ms of CPU each: its dialect,
  its pool and their event listeners, for an engine used once. Here each database file has one engine per process.
  It keeps no connection open (`NullPool`, as Dagster's), so each use still opens the file afresh, from any
  thread, and a process forked from this one (the warm run server's workers) shares nothing open with it.
- The run and schedule storages check their database's schema version (alembic) whenever one is made, and Dagster
  makes an instance, so these storages, for every sensor tick in the code server: alembic reads all of Dagster's
  migration scripts each time, about 60 ms of CPU for an idle stack's tick. Here the first storage of a database in
  a process checks it (creating or stamping it as Dagster does); later ones in that process trust that check.

`home` is the instance's folder, DAGSTER_HOME: the databases are where Dagster's defaults put them
(history/runs.db, schedules/schedules.db, and the event log's one file in the home itself).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator

import sqlalchemy
from dagster import StringSource
from dagster._core.storage.event_log import ConsolidatedSqliteEventLogStorage
from dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log import SQLITE_EVENT_LOG_FILENAME
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS, create_db_conn_string
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import NullPool

_engines_lock = threading.Lock()
_engines: dict[str, sqlalchemy.Engine] = {}
_check_lock = threading.Lock()
_checked: set[str] = set()  # the databases whose schema this process has checked


def _fresh_locks() -> None:
    # A child forked while another thread of its parent held a lock would wait for it for ever. Its engines (no
    # connection in them) and the checks its parent made stand.
    global _engines_lock, _check_lock
    _engines_lock, _check_lock = threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_fresh_locks)


def engine_for(conn_string: str) -> sqlalchemy.Engine:
    """This process's one engine for the database at `conn_string`."""
    with _engines_lock:
        if conn_string not in _engines:
            _engines[conn_string] = sqlalchemy.create_engine(
                conn_string, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        return _engines[conn_string]


@contextlib.contextmanager
def _first_in_this_process(database: str) -> Iterator[bool]:
    """True the first time this process opens the `database` file, which is then made or checked (Dagster's own
    set-up) inside this block; False after that. Held all along, in this process (a second thread must not use a
    database still being made) and across processes, by a lock file beside it: two processes making a new database
    at once both stamped its schema, and no process could open it after that (alembic found two heads)."""
    with _check_lock:
        if database in _checked:
            yield False
            return
        os.makedirs(os.path.dirname(database), exist_ok=True)
        with open(database + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield True
        _checked.add(database)


class _InHome:
    """What the three storages share: their config, `home`, and a transaction on this process's engine."""

    @classmethod
    def config_type(cls):
        return {"home": StringSource}

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlalchemy.Connection]:
        with engine_for(self._conn_string).connect() as conn, conn.begin():
            yield conn


class _CheckedOncePerProcess(_InHome):
    """Dagster's SQLite run or schedule storage (the class after this one) in `home`/`folder`/`database`.db."""

    folder: str
    database: str

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value):
        base_dir = os.path.join(config_value["home"], cls.folder)
        with _first_in_this_process(os.path.join(base_dir, f"{cls.database}.db")) as first:
            if first:
                return cls.from_local(base_dir, inst_data)
            return cls(create_db_conn_string(base_dir, cls.database), inst_data)

    def connect(self):
        return self._transaction()


class EmbeddedRunStorage(_CheckedOncePerProcess, SqliteRunStorage):
    folder, database = "history", "runs"


class EmbeddedScheduleStorage(_CheckedOncePerProcess, SqliteScheduleStorage):
    folder, database = "schedules", "schedules"


class EmbeddedEventLogStorage(_InHome, ConsolidatedSqliteEventLogStorage):
    """Dagster's `ConsolidatedSqliteEventLogStorage`: every run's events in one file in `home`. (It makes the
    database only when the file is missing, and checks nothing otherwise: the first of a process looks under the
    lock of `_first_in_this_process`.)"""

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value) -> "EmbeddedEventLogStorage":
        home = config_value["home"]
        with _first_in_this_process(os.path.join(home, SQLITE_EVENT_LOG_FILENAME + ".db")):
            return cls(home, inst_data)

    def _connect(self):
        return self._transaction()

    def has_table(self, table_name: str) -> bool:
        engine = engine_for(self._conn_string)
        with engine.connect() as conn:
            return bool(engine.dialect.has_table(conn, table_name))
