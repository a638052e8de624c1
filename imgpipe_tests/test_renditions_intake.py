"""What a request asks for beside its main outputs, through every way in (contract section 13): the query of
`POST /requests`, a sidecar, the Launchpad's config and `imgpipe submit`; recorded in one form, a wrong value refused
naming it; the settings' default for what a request does not name."""
from __future__ import annotations

import json
import uuid

import pytest
import requests

from imgpipe import cli
from imgpipe.backends import Backends
from imgpipe.definitions import defs
from imgpipe.intake.inbox import Inbox
from imgpipe.processing import renditions_for
from imgpipe.settings import Settings, load_settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.models import RequestRow, utcnow
from imgpipe.storage.local import LocalStorage

GOOD = "S. No.,Product Name,Input Image Urls\n1,Chair,https://img.example/a.jpg\n"


def post(server, **params) -> requests.Response:
    return requests.post(f"{server.url}/requests", params=params, files={"file": ("p.csv", GOOD, "text/csv")},
                         timeout=10)


def asked(store, request_id: str) -> tuple[str | None, str | None]:
    row = store.get_request(request_id)
    return row.renditions, row.widths


def test_the_query_of_post_requests_is_recorded_in_one_form_and_a_wrong_value_refused(api_server):
    server = api_server()
    named = post(server, renditions="AVIF,webp", widths="960, 480")
    none = post(server, renditions="", widths="")
    default = post(server)
    assert {named.status_code, none.status_code, default.status_code} == {202}
    assert asked(server.store, named.json()["request_id"]) == ("webp,avif", "480,960")
    assert asked(server.store, none.json()["request_id"]) == ("", "")  # none, whatever the settings say
    assert asked(server.store, default.json()["request_id"]) == (None, None)  # the settings' default

    refused = post(server, renditions="webp,gif", widths="480px")
    assert refused.status_code == 422
    assert [(e["column"], e["message"]) for e in refused.json()["errors"]] == [
        ("renditions", "renditions 'webp,gif' names 'gif', which is not a rendition format (webp or avif)"),
        ("widths", "widths '480px' names '480px', which is not a width in pixels (a whole number from 1 to 16383)")]
    assert len(list(server.settings.requests_dir.iterdir())) == 3  # the refused upload was not recorded


def test_a_sidecar_names_them_as_a_comma_list_or_a_json_list(tmp_path):
    settings = Settings(home=tmp_path / "home")
    settings.ensure_folders()
    store = DuckDBStatusStore(settings.db_path)
    inbox = Inbox(Backends(settings, store, LocalStorage(settings.home_dir, settings.public_base_url)))
    for stem, sidecar in (("listed", {"renditions": ["avif"], "widths": [960, 480]}),
                          ("comma", {"renditions": "webp, avif", "widths": "320"}),
                          ("wrong", {"renditions": "webp", "widths": "wide"}),
                          ("shape", {"widths": {"w": 480}})):
        (settings.inbox / f"{stem}.json").write_text(json.dumps(sidecar))
        (settings.inbox / f"{stem}.csv").write_text(GOOD)

    results = {r.file_name: r for r in inbox.take()}

    assert asked(store, results["listed.csv"].request_id) == ("avif", "480,960")
    assert asked(store, results["comma.csv"].request_id) == ("webp,avif", "320")
    assert [e.message for e in results["wrong.csv"].errors] == [
        "widths 'wide' names 'wide', which is not a width in pixels (a whole number from 1 to 16383)"]
    assert [e.message for e in results["shape.csv"].errors] == [
        "sidecar shape.json: widths must be a comma list or a JSON list"]
    assert store.get_request(results["wrong.csv"].request_id).status == "rejected"


def test_the_launchpad_config_names_them():
    settings = load_settings()
    name = f"ui-{uuid.uuid4().hex[:6]}.csv"
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    (settings.uploads_dir / name).write_text(GOOD)
    job = defs().resolve_job_def("submit_csv_job")

    result = job.execute_in_process(run_config={"ops": {"submit_csv": {"config": {
        "csv": name, "renditions": "avif", "widths": "480,960"}}}})

    assert asked(DuckDBStatusStore(settings.db_path), result.output_for_node("submit_csv")) == ("avif", "480,960")


def test_imgpipe_submit_sends_them_and_prints_what_is_wrong(api_server, tmp_path, capsys):
    server = api_server()
    csv_file = tmp_path / "products.csv"
    csv_file.write_text(GOOD)

    assert cli.main(["submit", str(csv_file), "--api", server.url, "--renditions", "avif", "--widths", "480"]) == 0
    request_id = next(line.split(": ")[1] for line in capsys.readouterr().out.splitlines()
                      if line.startswith("request_id: "))
    assert asked(server.store, request_id) == ("avif", "480")

    assert cli.main(["submit", str(csv_file), "--api", server.url, "--renditions", "heic"]) == 2
    assert "renditions 'heic' names 'heic', which is not a rendition format" in capsys.readouterr().err


@pytest.mark.parametrize(("recorded", "expected"), [
    ((None, None), (("webp",), (640,))),  # the settings' for both
    (("avif", None), (("avif",), (640,))),  # each key on its own
    (("", ""), ((), ())),  # none, explicitly
])
def test_what_a_request_does_not_name_comes_from_the_settings(recorded, expected):
    settings = Settings.from_env({"IMGPIPE_RENDITIONS": "WEBP", "IMGPIPE_WIDTHS": "640"})
    now = utcnow()
    row = RequestRow("r1", "queued", "api", "p.csv", None, now, now, renditions=recorded[0], widths=recorded[1])
    spec = renditions_for(settings, row)
    assert (spec.formats, spec.widths) == expected


def test_the_settings_are_checked_naming_the_variable():
    with pytest.raises(ValueError, match="IMGPIPE_RENDITIONS='jpeg' names 'jpeg', which is not a rendition format"):
        Settings.from_env({"IMGPIPE_RENDITIONS": "jpeg"})
    with pytest.raises(ValueError, match="IMGPIPE_WIDTHS='9,8,7,6,5,4,3,2,1' names 9 widths, more than 8"):
        Settings.from_env({"IMGPIPE_WIDTHS": "9,8,7,6,5,4,3,2,1"})
    assert Settings.from_env({"IMGPIPE_RENDITIONS": "avif , webp"}).renditions == "webp,avif"
