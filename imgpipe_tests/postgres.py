"""Fresh PostgreSQL databases for tests of the distributed profile.

The server is the local one on 127.0.0.1:5432 with trust authentication for user `postgres` (`make services`
starts it, and installs it as root where it is missing). Each database is created through the `postgres`
maintenance database and dropped, connections and all, when the block ends. A server that does not answer
fails the test as root (CI) and skips it otherwise (`imgpipe_tests/services.py`).
"""
from __future__ import annotations

import contextlib
import uuid
from typing import Iterator

import psycopg2
from psycopg2 import sql

from imgpipe_tests.services import POSTGRESQL, ServiceUnavailable, unavailable

HOST = "127.0.0.1"
PORT = 5432
USER = "postgres"
ADMIN_URL = f"postgresql://{USER}@{HOST}:{PORT}/postgres"


class PostgresUnavailable(ServiceUnavailable):
    """The test PostgreSQL server is not answering (as root, where `make test` should have started it)."""


def _admin() -> psycopg2.extensions.connection:
    try:
        con = psycopg2.connect(ADMIN_URL, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        unavailable(POSTGRESQL, str(exc).strip().splitlines()[0], PostgresUnavailable)
    con.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return con


@contextlib.contextmanager
def fresh_database(prefix: str = "imgpipe_test_") -> Iterator[str]:
    """Create a uniquely named empty database; yield its URL; drop it afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    with contextlib.closing(_admin()) as con, con.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://{USER}@{HOST}:{PORT}/{name}"
    finally:
        with contextlib.closing(_admin()) as con, con.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
