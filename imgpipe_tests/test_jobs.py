"""The Launchpad job: a CSV from $IMGPIPE_HOME/uploads/ or an http(s) URL goes through the one intake."""
from __future__ import annotations

import uuid

import pytest

from imgpipe.backends import Backends, open_storage
from imgpipe.definitions import defs
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.settings import load_settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.models import Source

GOOD = "S. No.,Product Name,Input Image Urls\n1,Chair,https://img.example/a.jpg\n"


def launch(csv: str, webhook_url: str | None = None, raise_on_error: bool = True):
    job = defs().resolve_job_def("submit_csv_job")
    config = {"csv": csv, "webhook_url": webhook_url}
    return job.execute_in_process(run_config={"ops": {"submit_csv": {"config": config}}},
                                  raise_on_error=raise_on_error)


def test_a_file_in_the_uploads_folder_is_taken_in_directly():
    settings = load_settings()
    name = f"ui-{uuid.uuid4().hex[:6]}.csv"
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    (settings.uploads_dir / name).write_text(GOOD)

    result = launch(name, webhook_url="https://hooks.example/done")

    request_id = result.output_for_node("submit_csv")
    request = DuckDBStatusStore(settings.db_path).get_request(request_id)
    assert (request.status, request.source, request.file_name, request.webhook_url) == (
        "queued", "folder", name, "https://hooks.example/done")
    assert (settings.requests_dir / request_id / "input.csv").read_text() == GOOD
    assert not any(settings.inbox.glob(f"{request_id}*"))  # never through the inbox


def test_a_rejected_csv_fails_the_launch_with_every_problem_and_is_kept():
    settings = load_settings()
    name = f"ui-bad-{uuid.uuid4().hex[:6]}.csv"
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    (settings.uploads_dir / name).write_text("S. No.,Product Name,Input Image Urls\n1,,ftp://x/y.jpg\n")

    result = launch(name, raise_on_error=False)

    assert not result.success
    [failure] = result.get_step_failure_events()
    assert f"{name} was rejected with 2 problem(s)" in failure.event_specific_data.error.message
    request = DuckDBStatusStore(settings.db_path).latest_request_for_file(name)
    assert request.status == "rejected" and len(request.errors) == 2
    assert (settings.rejected_dir / request.request_id / name).is_file()


def test_a_csv_url_is_fetched_safely(image_server, image_root):
    name = f"remote-{uuid.uuid4().hex[:6]}.csv"
    (image_root / name).write_text(GOOD)
    request_id = launch(image_server.url(f"img/{name}")).output_for_node("submit_csv")
    assert DuckDBStatusStore(load_settings().db_path).get_request(request_id).file_name == name


@pytest.mark.parametrize("csv, reason", [("../../etc/passwd", "not a file under"),
                                         ("/etc/passwd", "not a file under"),
                                         ("../webhook_secret", "not a file under"),
                                         ("../requests", "not a file under"),
                                         ("http://169.254.169.254/latest/x.csv", "blocked")])
def test_sources_outside_the_uploads_folder_or_unsafe_are_refused(csv, reason):
    result = launch(csv, raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert reason in failure.event_specific_data.error.cause.message


def test_a_private_file_under_the_home_is_never_published():
    """The audit's case: the generated webhook secret named as the CSV. Nothing is read, recorded or kept."""
    settings = load_settings()
    secret = settings.home_dir / "webhook_secret.csv"
    secret.write_text("whsec_dGhpcyBpcyBzZWNyZXQ=\n")
    before = DuckDBStatusStore(settings.db_path).latest_request_for_file("webhook_secret.csv")
    result = launch("../webhook_secret.csv", raise_on_error=False)
    assert not result.success
    assert DuckDBStatusStore(settings.db_path).latest_request_for_file("webhook_secret.csv") == before


def test_the_end_of_a_dead_run_ends_its_request_once_and_leaves_it_to_a_retry():
    """The run-status sensors and their backstop may each end one dead run; the later end must not undo a retry."""
    settings = load_settings()
    store = DuckDBStatusStore(settings.db_path)
    upload = Upload(GOOD.encode(), f"dead-{uuid.uuid4().hex[:6]}.csv", Source.API)
    request_id = take_upload(Backends(settings, store, open_storage(settings)), upload).request_id
    store.start_processing(request_id, "dead-run")

    def end_the_dead_run():
        config = {"request_ids": [request_id], "run_id": "dead-run", "reason": "its worker died"}
        defs().resolve_job_def("end_failed_run_job").execute_in_process(
            run_config={"ops": {"end_failed_request": {"config": config}}})

    end_the_dead_run()
    ended = store.get_request(request_id)
    assert (ended.status, ended.error) == ("failed", "its worker died")
    store.requeue_for_retry(request_id)
    end_the_dead_run()  # the second end asked for the same dead run, after the retry
    assert store.get_request(request_id).status == "queued"
