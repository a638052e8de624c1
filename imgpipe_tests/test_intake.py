"""The one intake (`take_upload`) and the folder drop that feeds it (`Inbox`): accepted and rejected files,
names never picked up, no collisions, crash recovery, and one bad file never stopping the others."""
from __future__ import annotations

import json
import os

import pytest

from imgpipe.backends import Backends, open_backends
from imgpipe.intake import inbox as inbox_module
from imgpipe.intake import intake as intake_module
from imgpipe.intake.inbox import CLAIM_META, CLAIMED_SIDECAR, CLAIMS, Inbox
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.settings import Settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.models import Source
from imgpipe.storage.keys import input_key
from imgpipe.storage.local import LocalStorage
from imgpipe_tests.servers import drop_into_inbox

GOOD = "S. No.,Product Name,Input Image Urls\n1,Chair,\"https://img.example/a.jpg, https://img.example/b.jpg\"\n"
BAD = "S. No.,Product Name\n1,,\n"


@pytest.fixture
def setup(tmp_path):
    settings = Settings(home=tmp_path / "home")
    settings.ensure_folders()
    store = DuckDBStatusStore(settings.db_path)
    return settings, store, Inbox(Backends(settings, store, LocalStorage(settings.home_dir, settings.public_base_url)))


def inbox_names(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.inbox.iterdir() if p.name != CLAIMS)


def test_accepted_file_moves_to_its_request_folder_with_its_slots(setup):
    settings, store, inbox = setup
    (settings.inbox / "chairs.json").write_text(json.dumps({"webhook_url": "https://hooks.example/x"}))
    (settings.inbox / "chairs.csv").write_text(GOOD)

    [result] = inbox.take()

    assert result.accepted and result.file_name == "chairs.csv"
    assert (settings.requests_dir / result.request_id / "input.csv").read_text() == GOOD
    assert inbox_names(settings) == [] and os.listdir(settings.inbox / CLAIMS) == []
    row = store.get_request(result.request_id)
    assert (row.status, row.source, row.file_name, row.webhook_url, row.total_images) == (
        "queued", "folder", "chairs.csv", "https://hooks.example/x", 2)
    assert [i.input_url for i in store.images(result.request_id)] == ["https://img.example/a.jpg",
                                                                      "https://img.example/b.jpg"]
    assert inbox.take() == []


def test_rejected_file_is_kept_byte_for_byte_with_every_error(setup):
    settings, store, inbox = setup
    raw = b"S. No.,Product Name,Input Image Urls\r\n1,,ftp://x/y.jpg\r\n2,Lamp,\r\n"
    (settings.inbox / "bad.csv").write_bytes(raw)

    [result] = inbox.take()

    assert not result.accepted
    folder = settings.rejected_dir / result.request_id
    assert (folder / "bad.csv").read_bytes() == raw
    doc = json.loads((folder / "errors.json").read_text())
    assert doc["request_id"] == result.request_id and doc["file_name"] == "bad.csv"
    assert len(doc["errors"]) >= 3
    assert all({"row", "column", "message"} <= set(e) for e in doc["errors"])
    row = store.get_request(result.request_id)
    assert row.status == "rejected" and row.error and row.completed_at is not None
    assert row.errors == doc["errors"]


def test_a_file_over_the_size_limit_is_kept_without_being_read(tmp_path):
    settings = Settings(home=tmp_path / "home", max_csv_bytes=100)
    settings.ensure_folders()
    store = DuckDBStatusStore(settings.db_path)
    (settings.inbox / "huge.csv").write_bytes(GOOD.encode() * 10)
    [result] = Inbox(Backends(settings, store, LocalStorage(settings.home_dir, settings.public_base_url))).take()
    assert [e.message for e in result.errors] == [f"file is {len(GOOD) * 10:,} bytes, more than the limit of 100"]
    assert (settings.rejected_dir / result.request_id / "huge.csv").read_bytes() == GOOD.encode() * 10


def test_missing_column_is_named(setup):
    settings, _, inbox = setup
    (settings.inbox / "cols.csv").write_text(BAD)
    [result] = inbox.take()
    assert any("Input Image Urls" in e.message or e.column == "Input Image Urls" for e in result.errors)


def test_hidden_and_temporary_names_are_never_taken(setup):
    settings, _, inbox = setup
    for name in (".hidden.csv", "upload.csv.tmp", "upload.csv.part", "lonely.json"):
        (settings.inbox / name).write_text(GOOD)
    assert inbox.take() == []
    assert len(inbox_names(settings)) == 4


def test_two_files_of_the_same_name_never_collide(setup):
    settings, _, inbox = setup
    (settings.inbox / "same.csv").write_text(BAD)
    [first] = inbox.take()
    (settings.inbox / "same.csv").write_text(BAD + "2,x,\n")
    [second] = inbox.take()
    assert first.request_id != second.request_id
    assert (settings.rejected_dir / first.request_id / "same.csv").read_text() == BAD
    assert (settings.rejected_dir / second.request_id / "same.csv").read_text() == BAD + "2,x,\n"


def test_a_file_dropped_again_while_the_first_is_validated_is_its_own_request(setup, monkeypatch):
    """The bytes validated are the bytes kept: the first file was claimed out of the inbox before it was read,
    so the second one, dropped under the same name meanwhile, waits for the next pass."""
    settings, store, inbox = setup
    (settings.inbox / "nightly.csv").write_text(GOOD)
    replacement = GOOD.replace("Chair", "Table")
    real_take_upload = inbox_module.take_upload

    def drop_again_then_take(*args, **kwargs):
        (settings.inbox / "nightly.csv").write_text(replacement)
        return real_take_upload(*args, **kwargs)

    monkeypatch.setattr(inbox_module, "take_upload", drop_again_then_take)
    [first] = inbox.take()
    monkeypatch.undo()
    [second] = inbox.take()

    assert (settings.requests_dir / first.request_id / "input.csv").read_text() == GOOD
    assert (settings.requests_dir / second.request_id / "input.csv").read_text() == replacement
    assert [p.product_name for p in store.products(first.request_id)] == ["Chair"]
    assert [p.product_name for p in store.products(second.request_id)] == ["Table"]


@pytest.mark.parametrize(("first", "second"), [(GOOD, GOOD.replace("Chair", "Table")), (GOOD, BAD), (BAD, GOOD)],
                         ids=["valid-by-valid", "valid-by-invalid", "invalid-by-valid"])
def test_a_file_replaced_while_it_is_validated_is_recorded_as_what_was_validated(setup, monkeypatch, first, second):
    """The swap race: a file dropped again under the same name while the first is validated must neither be
    recorded under the first one's request, unvalidated, nor make the first one vanish; it is its own request."""
    settings, store, inbox = setup
    drop_into_inbox(settings.home_dir, "nightly.csv", first)
    real_parse = intake_module.parse_upload

    def drop_again_then_parse(data: bytes, **kwargs):
        drop_into_inbox(settings.home_dir, "nightly.csv", second)
        return real_parse(data, **kwargs)

    monkeypatch.setattr(intake_module, "parse_upload", drop_again_then_parse)
    [taken] = inbox.take()
    monkeypatch.undo()
    [next_one] = inbox.take()

    for result, text in ((taken, first), (next_one, second)):
        assert result.accepted is (text != BAD)
        if result.accepted:
            assert (settings.requests_dir / result.request_id / "input.csv").read_text() == text
            assert len(store.images(result.request_id)) == 2
            assert store.products(result.request_id)[0].product_name in text
        else:
            assert (settings.rejected_dir / result.request_id / "nightly.csv").read_text() == text
            assert store.get_request(result.request_id).status == "rejected"
    assert inbox_names(settings) == []


def test_a_crash_after_the_claim_is_recorded_once_on_the_next_pass(setup, monkeypatch):
    settings, store, inbox = setup
    (settings.inbox / "crash.json").write_text(json.dumps({"webhook_url": "https://hooks.example/x"}))
    (settings.inbox / "crash.csv").write_text(GOOD)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("daemon killed")

    monkeypatch.setattr(store, "record_accepted", crash)
    with pytest.raises(KeyboardInterrupt):
        inbox.take()
    monkeypatch.undo()
    [claim] = list((settings.inbox / CLAIMS).iterdir())
    assert store.get_request(claim.name) is None and inbox_names(settings) == []

    [result] = inbox.take()  # the recovery, under the claim's request ID
    assert result.request_id == claim.name and result.accepted
    row = store.get_request(claim.name)
    assert (row.file_name, row.webhook_url) == ("crash.csv", "https://hooks.example/x")
    assert inbox.take() == [] and not claim.exists()


def test_a_crash_before_the_commit_gives_the_sidecar_back_to_its_file(setup):
    settings, store, inbox = setup
    (settings.inbox / "early.csv").write_text(GOOD)
    half_done = settings.inbox / CLAIMS / "20260101-000000-deadbeef"
    half_done.mkdir(parents=True)
    (half_done / CLAIM_META).write_text(json.dumps({"file_name": "early.csv"}))
    (half_done / CLAIMED_SIDECAR).write_text(json.dumps({"webhook_url": "https://hooks.example/early"}))

    [result] = inbox.take()

    assert not half_done.exists()
    assert result.accepted and result.request_id != half_done.name
    assert store.get_request(result.request_id).webhook_url == "https://hooks.example/early"
    assert store.get_request(half_done.name) is None


def test_a_sidecar_goes_with_its_file_and_is_never_adopted_by_the_next_drop(setup, monkeypatch):
    settings, store, inbox = setup
    (settings.inbox / "shop.json").write_text(json.dumps({"webhook_url": "https://hooks.example/first"}))
    (settings.inbox / "shop.csv").write_text(GOOD)
    monkeypatch.setattr(store, "record_accepted", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        inbox.take()
    monkeypatch.undo()
    assert inbox_names(settings) == []  # the sidecar left the inbox with its file, crash or not
    (settings.inbox / "shop.csv").write_text(GOOD)  # the next drop, without a sidecar

    results = inbox.take()  # the interrupted claim, and the new drop

    assert len(results) == 2 and {r.file_name for r in results} == {"shop.csv"}
    webhooks = sorted((store.get_request(r.request_id).webhook_url or "") for r in results)
    assert webhooks == ["", "https://hooks.example/first"]


def test_a_symlinked_sidecar_is_not_read(setup, tmp_path):
    settings, store, inbox = setup
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"webhook_url": "https://attacker.example/"}))
    (settings.inbox / "linked.json").symlink_to(secret)
    (settings.inbox / "linked.csv").write_text(GOOD)
    [result] = inbox.take()
    assert result.accepted and store.get_request(result.request_id).webhook_url is None


def test_a_poisoned_sidecar_rejects_its_own_upload_and_no_other(setup):
    settings, store, inbox = setup
    (settings.inbox / "poison.json").write_text("[" * 5000 + "]" * 5000)
    (settings.inbox / "poison.csv").write_text(GOOD)
    (settings.inbox / "fine.csv").write_text(GOOD)

    results = {r.file_name: r for r in inbox.take()}

    assert results["fine.csv"].accepted
    assert not results["poison.csv"].accepted
    assert [e.message for e in results["poison.csv"].errors] == [
        "sidecar poison.json is not valid JSON: nested too deeply"]
    assert store.get_request(results["poison.csv"].request_id).status == "rejected"


def test_whatever_one_file_raises_leaves_the_others_alone(setup, monkeypatch):
    settings, store, inbox = setup
    for name in ("a.csv", "b.csv", "c.csv"):
        (settings.inbox / name).write_text(GOOD)
    real_take_upload = inbox_module.take_upload

    def fails_on_b(backends, upload, request_id=None):
        if upload.file_name == "b.csv":
            raise RuntimeError("an unforeseen bug")
        return real_take_upload(backends, upload, request_id)

    monkeypatch.setattr(inbox_module, "take_upload", fails_on_b)
    assert sorted(r.file_name for r in inbox.take()) == ["a.csv", "c.csv"]
    monkeypatch.undo()
    assert [r.file_name for r in inbox.take()] == ["b.csv"]  # taken once the fault is gone


def test_one_pass_takes_a_bounded_number_of_files(setup):
    settings, _, _ = setup
    store = DuckDBStatusStore(settings.db_path)
    for index in range(5):
        (settings.inbox / f"f{index}.csv").write_text(GOOD)
    inbox = Inbox(Backends(settings, store, LocalStorage(settings.home_dir, settings.public_base_url)), max_files=2)
    assert [len(inbox.take()) for _ in range(4)] == [2, 2, 1, 0]


def test_a_request_is_seen_queued_only_once_its_file_and_every_slot_are_stored(tmp_path, monkeypatch, store_factory):
    """What launches runs (the inbox sensor, the API's launch) lists the queued requests: one it lists must have its
    input in the storage and every product and image slot recorded, or its run would find less than was accepted.
    Looked at through another connection after each transaction the intake commits."""
    settings = Settings(home=tmp_path / "home")
    store, reader = store_factory(), store_factory()
    storage = LocalStorage(settings.home_dir, settings.public_base_url)
    seen = []
    commit = store._transact

    def commit_then_look(work):
        result = commit(work)
        seen.extend((storage.exists(input_key(row.request_id)), len(reader.products(row.request_id)),
                     reader.counts(row.request_id)["total"], row.total_images) for row in reader.queued_requests())
        return result

    monkeypatch.setattr(store, "_transact", commit_then_look)
    result = take_upload(Backends(settings, store, storage), Upload(GOOD.encode(), "a.csv", Source.API))

    assert result.accepted and seen and set(seen) == {(True, 1, 2, 2)}


def test_taking_an_upload_again_under_its_id_changes_nothing(tmp_path):
    settings = Settings(home=tmp_path / "home")
    backends = open_backends(settings)
    store = backends.store
    upload = Upload(GOOD.encode(), "twice.csv", Source.API, idempotency_key="k1")
    first = take_upload(backends, upload)
    again = take_upload(backends, upload, request_id=first.request_id)
    assert again.request_id == first.request_id and store.counts(first.request_id)["total"] == 2
    assert store.known_request_ids([first.request_id]) == {first.request_id}
