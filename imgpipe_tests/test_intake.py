"""The inbox intake: accepted and rejected files, names never picked up, no collisions, crash recovery."""
from __future__ import annotations

import json
import os

import pytest

from imgpipe.intake.intake import Intake
from imgpipe.settings import Settings
from imgpipe.status.store import DuckDBStatusStore

GOOD = "S. No.,Product Name,Input Image Urls\n1,Chair,\"https://img.example/a.jpg, https://img.example/b.jpg\"\n"
BAD = "S. No.,Product Name\n1,,\n"


@pytest.fixture
def setup(tmp_path):
    settings = Settings.from_env({"IMGPIPE_HOME": str(tmp_path / "home")})
    settings.ensure_folders()
    store = DuckDBStatusStore(settings.db_path)
    return settings, store, Intake(settings, store)


def test_accepted_file_moves_to_its_request_folder(setup):
    settings, store, intake = setup
    (settings.inbox / "chairs.json").write_text(json.dumps({"webhook_url": "https://hooks.example/x"}))
    (settings.inbox / "chairs.csv").write_text(GOOD)

    [result] = intake.take_inbox()

    assert result.accepted and result.file_name == "chairs.csv"
    assert (settings.requests_dir / result.request_id / "input.csv").read_text() == GOOD
    assert sorted(p.name for p in settings.inbox.iterdir()) == []
    row = store.get_request(result.request_id)
    assert (row["status"], row["source"], row["file_name"], row["webhook_url"]) == (
        "queued", "folder", "chairs.csv", "https://hooks.example/x")
    assert intake.take_inbox() == []


def test_rejected_file_is_kept_byte_for_byte_with_every_error(setup):
    settings, store, intake = setup
    raw = b"S. No.,Product Name,Input Image Urls\r\n1,,ftp://x/y.jpg\r\n2,Lamp,\r\n"
    (settings.inbox / "bad.csv").write_bytes(raw)

    [result] = intake.take_inbox()

    assert not result.accepted
    folder = settings.rejected_dir / result.request_id
    assert (folder / "bad.csv").read_bytes() == raw
    doc = json.loads((folder / "errors.json").read_text())
    assert doc["request_id"] == result.request_id and doc["file_name"] == "bad.csv"
    assert len(doc["errors"]) >= 3
    assert all({"row", "column", "message"} <= set(e) for e in doc["errors"])
    row = store.get_request(result.request_id)
    assert row["status"] == "rejected" and row["error"] and row["completed_at"] is not None


def test_missing_column_is_named(setup):
    settings, _, intake = setup
    (settings.inbox / "cols.csv").write_text(BAD)
    [result] = intake.take_inbox()
    assert any("Input Image Urls" in e.message or e.column == "Input Image Urls" for e in result.errors)


def test_hidden_and_temporary_names_are_never_taken(setup):
    settings, _, intake = setup
    for name in (".hidden.csv", "upload.csv.tmp", "upload.csv.part", "lonely.json"):
        (settings.inbox / name).write_text(GOOD)
    assert intake.take_inbox() == []
    assert len(list(settings.inbox.iterdir())) == 4


def test_two_files_of_the_same_name_never_collide(setup):
    settings, _, intake = setup
    (settings.inbox / "same.csv").write_text(BAD)
    [first] = intake.take_inbox()
    (settings.inbox / "same.csv").write_text(BAD + "2,x,\n")
    [second] = intake.take_inbox()
    assert first.request_id != second.request_id
    assert (settings.rejected_dir / first.request_id / "same.csv").read_text() == BAD
    assert (settings.rejected_dir / second.request_id / "same.csv").read_text() == BAD + "2,x,\n"


def test_a_crash_after_the_move_is_recorded_on_the_next_pass(setup, monkeypatch):
    settings, store, intake = setup
    (settings.inbox / "crash.csv").write_text(GOOD)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("daemon killed")

    monkeypatch.setattr(store, "create_request", crash)
    with pytest.raises(KeyboardInterrupt):
        intake.take_inbox()
    monkeypatch.undo()
    [folder] = list(settings.requests_dir.iterdir())
    assert store.get_request(folder.name) is None

    assert intake.take_inbox() == []  # nothing left in the inbox to take twice
    assert store.get_request(folder.name)["file_name"] == "crash.csv"


def test_a_crash_before_the_move_leaves_the_file_to_be_taken_once(setup):
    settings, store, intake = setup
    (settings.inbox / "early.csv").write_text(GOOD)
    half_done = settings.requests_dir / "20260101-000000-deadbeef"
    half_done.mkdir()
    (half_done / "request.json").write_text(json.dumps({"request_id": half_done.name, "file_name": "early.csv",
                                                         "source": "folder", "webhook_url": None}))
    [result] = intake.take_inbox()
    assert not half_done.exists()
    assert result.accepted and store.known_request_ids([result.request_id]) == {result.request_id}
    assert len(os.listdir(settings.requests_dir)) == 1
