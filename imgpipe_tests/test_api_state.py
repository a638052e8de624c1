"""The API's serialized status store: the threads of one process take turns at the DuckDB file."""
from __future__ import annotations

import threading

from imgpipe.api.state import SerializedStore
from imgpipe.status.duckdb_store import DuckDBStatusStore


def test_a_held_session_keeps_the_lock_between_its_calls(tmp_path):
    """Another thread's call waits for the whole session. Were the lock taken call by call, that call would take
    it between two of the session's calls and wait for the file the session holds, while the session waited for
    the lock: both stuck until the store's lock timeout."""
    store = SerializedStore(DuckDBStatusStore(tmp_path / "status.duckdb", lock_timeout=3.0), threading.RLock())
    between, go_on = threading.Event(), threading.Event()
    outcomes: list[str] = []

    def session() -> None:
        with store.held():
            store.get_request("a")
            between.set()
            go_on.wait(5)
            store.assign_run_keys({"a": "a:0"})
            outcomes.append("session")

    def call() -> None:
        try:
            store.get_request("b")
            outcomes.append("call")
        except Exception as exc:  # noqa: BLE001 - what the test reports
            outcomes.append(f"call failed: {type(exc).__name__}")

    first = threading.Thread(target=session)
    first.start()
    assert between.wait(5)
    second = threading.Thread(target=call)
    second.start()
    second.join(0.3)
    go_on.set()
    first.join(10)
    second.join(10)
    assert outcomes == ["session", "call"]
