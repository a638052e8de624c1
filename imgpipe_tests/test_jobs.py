"""The Launchpad job: a CSV named by a path under IMGPIPE_HOME or an http(s) URL goes to the inbox."""
from __future__ import annotations

import json
import uuid

import pytest

from imgpipe.definitions import defs
from imgpipe.settings import Settings
from imgpipe.status.store import DuckDBStatusStore

GOOD = "S. No.,Product Name,Input Image Urls\n1,Chair,https://img.example/a.jpg\n"


def launch(csv: str, webhook_url: str | None = None, raise_on_error: bool = True):
    job = defs.resolve_job_def("submit_csv_job")
    config = {"csv": csv, "webhook_url": webhook_url}
    return job.execute_in_process(run_config={"ops": {"submit_csv": {"config": config}}},
                                  raise_on_error=raise_on_error)


def test_a_path_under_home_is_queued_through_the_inbox():
    settings = Settings.from_env()
    name = f"ui-{uuid.uuid4().hex[:6]}.csv"
    (settings.home / "uploads").mkdir(parents=True, exist_ok=True)
    (settings.home / "uploads" / name).write_text(GOOD)

    result = launch(f"uploads/{name}", webhook_url="https://hooks.example/done")

    request_id = result.output_for_node("submit_csv")
    request = DuckDBStatusStore(settings.db_path).get_request(request_id)
    assert (request["status"], request["file_name"], request["webhook_url"]) == (
        "queued", name, "https://hooks.example/done")
    assert (settings.inbox / f"{request_id}.csv").read_text() == GOOD
    assert json.loads((settings.inbox / f"{request_id}.json").read_text())["request_id"] == request_id


def test_a_csv_url_is_fetched_safely(image_server, image_root):
    name = f"remote-{uuid.uuid4().hex[:6]}.csv"
    (image_root / name).write_text(GOOD)
    request_id = launch(image_server.url(f"img/{name}")).output_for_node("submit_csv")
    assert DuckDBStatusStore(Settings.from_env().db_path).get_request(request_id)["file_name"] == name


@pytest.mark.parametrize("csv, reason", [("../../etc/passwd", "outside IMGPIPE_HOME"),
                                         ("/etc/passwd", "outside IMGPIPE_HOME"),
                                         ("http://169.254.169.254/latest/x.csv", "blocked")])
def test_sources_outside_home_or_unsafe_are_refused(csv, reason):
    result = launch(csv, raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert reason in failure.event_specific_data.error.cause.message
