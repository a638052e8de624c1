"""The distributed profile's status store: the same tables in PostgreSQL (docs/scaling.md#scaling-out).

A short-lived connection per operation too, every transaction SERIALIZABLE and run again (with the same
jittered backoff) on a serialization failure or deadlock, so that read-then-write methods such as
`claim_webhook` keep the one-writer-at-a-time guarantees.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Sequence

import pandas as pd
import psycopg2
import psycopg2.extensions
from psycopg2.extras import execute_values

from imgpipe.status.schema import EXISTING_COLUMNS, SCHEMA, upgrades
from imgpipe.status.store import StatusStore, T

# SQLSTATEs after which the whole transaction is simply run again: serialization_failure, deadlock_detected.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# Key of the transaction-level advisory lock that serializes schema creation across processes.
SCHEMA_LOCK_KEY = 7_316_248_150_917
# Column types of a DataFrame copied into a temporary table, by `pandas.api.types.infer_dtype`.
_FRAME_SQL_TYPES = {"integer": "BIGINT", "boolean": "BOOLEAN", "floating": "DOUBLE PRECISION",
                    "mixed-integer-float": "DOUBLE PRECISION", "datetime64": "TIMESTAMP", "datetime": "TIMESTAMP"}


def _is_retryable(exc: Exception) -> bool:
    return getattr(exc, "pgcode", None) in RETRYABLE_SQLSTATES


def _plain(value: Any) -> Any:
    """A DataFrame cell as psycopg2 adapts it: None for missing values, Python scalars for NumPy ones."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


class PostgresStatusStore(StatusStore):
    """The same tables in PostgreSQL: a connection per operation, SERIALIZABLE transactions run again on a
    serialization failure or deadlock until `lock_timeout`."""

    CONNECT_TIMEOUT = 10

    def __init__(self, url: str, lock_timeout: float = 60.0):
        self.url = url
        self.lock_timeout = lock_timeout

    def _busy_message(self) -> str:
        params = psycopg2.extensions.parse_dsn(self.url)
        return (f"transactions on PostgreSQL database {params.get('dbname', '?')} at {params.get('host', 'localhost')}"
                " kept failing with serialization failures or deadlocks")

    def _connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(self.url, connect_timeout=self.CONNECT_TIMEOUT, application_name="imgpipe")

    def _transact(self, work: Callable[[psycopg2.extensions.cursor], T]) -> T:
        self.ensure_schema()
        deadline = time.monotonic() + self.lock_timeout
        with contextlib.closing(self._connect()) as con:
            con.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE)

            def attempt() -> T:
                try:
                    with con.cursor() as cur:
                        result = work(cur)
                    con.commit()
                except BaseException:
                    with contextlib.suppress(psycopg2.Error):  # a broken connection must not hide the cause
                        con.rollback()
                    raise
                return result

            return self._retry(attempt, _is_retryable, deadline)

    def _execute(self, con: psycopg2.extensions.cursor, sql: str, params: Sequence = ()) -> psycopg2.extensions.cursor:
        con.execute(sql.replace("%", "%%").replace("?", "%s"), list(params))
        return con

    def _register(self, con: psycopg2.extensions.cursor, name: str, frame: pd.DataFrame) -> None:
        """The frame as a temporary table of the same name, gone at the end of the transaction."""
        columns = ", ".join(
            f'"{column}" {_FRAME_SQL_TYPES.get(pd.api.types.infer_dtype(frame[column], skipna=True), "VARCHAR")}'
            for column in frame.columns)
        con.execute(f'CREATE TEMP TABLE "{name}" ({columns}) ON COMMIT DROP')
        rows = [tuple(_plain(v) for v in row) for row in frame.itertuples(index=False, name=None)]
        execute_values(con, f'INSERT INTO "{name}" VALUES %s', rows, page_size=1000)

    def _schema_key(self) -> str:
        return "postgres:" + self.url

    def _create_schema(self) -> None:
        with contextlib.closing(self._connect()) as con:
            with con, con.cursor() as cur:  # one transaction, committed on leaving
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK_KEY])
                cur.execute(EXISTING_COLUMNS)
                before = set(cur.fetchall())
                cur.execute(SCHEMA)
                cur.execute(EXISTING_COLUMNS)
                for statement in upgrades(before, set(cur.fetchall())):
                    cur.execute(statement)
