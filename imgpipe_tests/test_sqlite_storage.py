"""The embedded profile's Dagster storages (`imgpipe/runs/sqlite_storage.py`), on real SQLite files through the
shipped dagster.yaml: Dagster's own databases where its defaults put them, each checked once per process and
reached through one engine, and what one process's instance writes read by the next instance and another process."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
from dagster._core.storage.runs.sqlite import sqlite_run_storage
from dagster._core.storage.schedules.sqlite import sqlite_schedule_storage

from imgpipe.instance import instance_at
from imgpipe.runs import sqlite_storage
from imgpipe.runs.sqlite_storage import EmbeddedEventLogStorage, EmbeddedRunStorage, EmbeddedScheduleStorage
from imgpipe_tests.servers import REPO

EMBEDDED_YAML = REPO / "imgpipe" / "package_data" / "dagster.yaml"


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(EMBEDDED_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _count_calls(monkeypatch, module, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _add_run(instance: DagsterInstance, run_id: str) -> None:
    instance.add_run(DagsterRun(job_name="compress_request", run_id=run_id, status=DagsterRunStatus.NOT_STARTED))


def test_the_shipped_instance_keeps_dagsters_files_where_dagster_puts_them(dagster_home):
    with instance_at(dagster_home) as instance:
        assert isinstance(instance._run_storage, EmbeddedRunStorage)
        assert isinstance(instance._event_storage, EmbeddedEventLogStorage)
        assert isinstance(instance._schedule_storage, EmbeddedScheduleStorage)
        _add_run(instance, "a" * 32)
    # The files of Dagster's defaults (and of imgpipe before these classes): an existing home keeps its history.
    for name in ("history/runs.db", "schedules/schedules.db", "event_log.db"):
        assert (dagster_home / name).is_file(), name


def test_the_schema_is_checked_by_the_first_instance_of_a_process_only(dagster_home, monkeypatch):
    run_checks = _count_calls(monkeypatch, sqlite_run_storage, "check_alembic_revision")
    schedule_checks = _count_calls(monkeypatch, sqlite_schedule_storage, "check_alembic_revision")
    with instance_at(dagster_home) as first:
        _add_run(first, "b" * 32)
    for _ in range(3):  # as the code server makes one for every sensor tick
        with instance_at(dagster_home) as later:
            assert later.get_run_by_id("b" * 32).status == DagsterRunStatus.NOT_STARTED
            assert later.all_instigator_state() == []
    assert (len(run_checks), len(schedule_checks)) == (1, 1)


def test_each_database_has_one_engine_in_a_process(dagster_home, monkeypatch):
    made = _count_calls(monkeypatch, sqlite_storage.sqlalchemy, "create_engine")
    with instance_at(dagster_home) as instance:
        for _ in range(5):
            _add_run(instance, os.urandom(16).hex())
            instance.get_runs()
            instance.all_instigator_state()
            instance.report_engine_event("an event", instance.get_runs()[0])
    assert len(made) == 3  # runs, schedules, events: one each, however many uses


def test_what_one_process_writes_another_reads(dagster_home):
    with instance_at(dagster_home) as instance:
        _add_run(instance, "c" * 32)
        instance.report_engine_event("written here", instance.get_run_by_id("c" * 32))
    read = subprocess.run(
        [sys.executable, "-c", (
            "import sys; from imgpipe.instance import instance_at; from pathlib import Path;"
            "i = instance_at(Path(sys.argv[1]));"
            "print(i.get_run_by_id('c' * 32).status.value, [e.dagster_event.message for e in i.all_logs('c' * 32)])"),
         str(dagster_home)], capture_output=True, text=True, env={**os.environ, "DAGSTER_HOME": str(dagster_home)})
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == "NOT_STARTED ['written here']"


def test_a_forked_child_uses_the_parents_engine_without_sharing_a_connection(dagster_home):
    with instance_at(dagster_home) as instance:
        _add_run(instance, "d" * 32)
        # Forked while another thread holds the engines' lock, as can happen in the warm run server.
        held, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=lambda: (sqlite_storage._engines_lock.acquire(), held.set(), release.wait(),
                                                  sqlite_storage._engines_lock.release()))
        holder.start()
        held.wait()
        sqlite_storage._engines.clear()  # so that the child must take the lock to make its engine
        pid = os.fork()
        if pid == 0:  # as the warm run server's workers are forked from it, instance and all
            try:
                instance.report_engine_event("from the child", instance.get_run_by_id("d" * 32))
                os._exit(0)
            except BaseException:
                os._exit(1)
        release.set()
        holder.join()
        assert _exit_code(pid, within=20) == 0
        instance.report_engine_event("from the parent", instance.get_run_by_id("d" * 32))
        assert [e.dagster_event.message for e in instance.all_logs("d" * 32)] == ["from the child", "from the parent"]


def _exit_code(pid: int, within: float) -> int | None:
    """The child's exit code; None, the child killed, if it has not ended `within` seconds (it hangs)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


def test_processes_making_the_databases_at_once_make_each_once(dagster_home):
    """`imgpipe up` starts Dagster's processes and the REST API together on a new home: each makes the databases
    it finds missing, and two stamping one at once left it with two schema heads, which no process could open."""
    script = ("import sys; from pathlib import Path; from imgpipe.instance import instance_at;"
              "i = instance_at(Path(sys.argv[1])); i.get_runs(); i.all_instigator_state(); print('ok')")
    for attempt in range(3):
        home = dagster_home.parent / f"home-{attempt}"
        home.mkdir()
        shutil.copy(EMBEDDED_YAML, home / "dagster.yaml")
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        makers = [subprocess.Popen([sys.executable, "-c", script, str(home)], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(6)]
        for maker in makers:
            out, err = maker.communicate(timeout=120)
            assert maker.returncode == 0 and out.strip() == "ok", err[-2000:]
        # (Dagster's event log storage leaves its stamp uncommitted: none there, and so none twice.)
        for database, stamps in (("history/runs.db", 1), ("schedules/schedules.db", 1), ("event_log.db", 0)):
            with sqlite3.connect(home / database) as db:
                assert db.execute("SELECT count(*) FROM alembic_version").fetchone() == (stamps,), database
