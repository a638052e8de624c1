"""The `imgpipe` command: submit through a real API server, retry and status against the store."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import requests

from imgpipe import cli, progress
from imgpipe.settings import load_settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.models import ImageResult

CSV = (b"S. No.,Product Name,Input Image Urls\n"
       b"1,Shoe,\"https://e.com/a.jpg,https://e.com/b.jpg\"\n"
       b"2,Hat,https://e.com/c.jpg\n")
MANIFEST = pd.DataFrame(
    [(1, "1", "Shoe", 1, "https://e.com/a.jpg"), (1, "1", "Shoe", 2, "https://e.com/b.jpg"),
     (2, "2", "Hat", 1, "https://e.com/c.jpg")],
    columns=["row_number", "serial", "product_name", "position", "input_url"],
)


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "products.csv"
    path.write_bytes(CSV)
    return path


@pytest.fixture
def home_store(tmp_path, monkeypatch) -> DuckDBStatusStore:
    monkeypatch.setenv("IMGPIPE_HOME", str(tmp_path / "cli-home"))
    return DuckDBStatusStore(load_settings().db_path)


def fake_pipeline(monkeypatch, *steps):
    """Each poll's pause runs the next step instead of sleeping: the pipeline advances between two polls,
    while the API server (if any) is idle."""
    pending = list(steps)
    monkeypatch.setattr(progress, "time", SimpleNamespace(sleep=lambda seconds: pending.pop(0)()))


def printed_value(output: str, key: str) -> str:
    return next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith(f"{key}: "))


def test_submit_prints_the_request_id_and_status_url(api_server, csv_file, capsys):
    server = api_server()
    assert cli.main(["submit", str(csv_file), "--api", server.url]) == 0
    out = capsys.readouterr().out
    request_id = printed_value(out, "request_id")
    assert printed_value(out, "status_url") == f"{server.url}/requests/{request_id}"
    row = server.store.get_request(request_id)
    assert (row.status, row.source, row.file_name) == ("queued", "api", "products.csv")


def test_submit_sends_token_webhook_and_idempotency_key(api_server, csv_file, capsys, monkeypatch):
    server = api_server(IMGPIPE_API_TOKEN="s3cret")
    assert cli.main(["submit", str(csv_file), "--api", server.url]) == 1
    assert "401" in capsys.readouterr().err

    monkeypatch.setenv("IMGPIPE_API_TOKEN", "s3cret")
    args = ["submit", str(csv_file), "--api", server.url, "--webhook-url", "https://hooks.example.com/x",
            "--idempotency-key", "k1"]
    assert cli.main(args) == 0
    first = printed_value(capsys.readouterr().out, "request_id")
    assert cli.main(args) == 0
    assert printed_value(capsys.readouterr().out, "request_id") == first
    assert server.store.get_request(first).webhook_url == "https://hooks.example.com/x"


def test_submit_of_an_invalid_csv_prints_every_problem_and_exits_2(api_server, tmp_path, capsys):
    server = api_server()
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"S. No.,Product Name,Input Image Urls\n1,,https://e.com/a.jpg\n2,Shoe,ftp://e.com/b.jpg\n")
    assert cli.main(["submit", str(bad), "--api", server.url]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{bad}: row 2, column Product Name: product name is empty",
        f"{bad}: row 3, column Input Image Urls: URL 'ftp://e.com/b.jpg' is not an absolute http(s) URL",
    ]


def test_submit_without_a_reachable_api_exits_1(csv_file, capsys):
    assert cli.main(["submit", str(csv_file), "--api", "http://127.0.0.1:9"]) == 1
    assert "cannot talk to the API" in capsys.readouterr().err


def test_submit_wait_shows_progress_until_the_request_ends(api_server, csv_file, capsys, monkeypatch):
    server = api_server()
    store, settings = server.store, server.settings
    started = []

    def start():
        request_id = store.queued_requests()[0].request_id
        started.append(request_id)
        store.start_processing(request_id, "run-1")
        store.record_results(request_id, [ImageResult("https://e.com/a.jpg", "compressed")])

    def finish():
        request_id = started[0]
        store.record_results(request_id, [
            ImageResult("https://e.com/b.jpg", "compressed"), ImageResult("https://e.com/c.jpg", "failed")])
        (settings.outputs_dir / f"{request_id}.csv").write_text("S. No.\n")
        store.finish_request(request_id, "completed_with_errors")

    fake_pipeline(monkeypatch, start, finish)
    assert cli.main(["submit", str(csv_file), "--api", server.url, "--wait"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"[{'.' * 30}] 0/3 images (0 failed)",
        f"[{'#' * 10}{'.' * 20}] 1/3 images (0 failed)",
        f"[{'#' * 30}] 3/3 images (1 failed)",
    ]
    assert "1 image(s) failed" in captured.out
    assert printed_value(captured.out, "output_csv_url").endswith("/output.csv")
    assert printed_value(captured.out, "report_url") == f"{server.url}/requests/{started[0]}/report"


def seed_processing_request(store: DuckDBStatusStore, request_id: str, manifest: pd.DataFrame = MANIFEST) -> None:
    store.record_accepted(request_id, source="folder", file_name="products.csv", webhook_url=None,
                          manifest=manifest)
    store.start_processing(request_id, "run-1")


def seed_finished_request(store: DuckDBStatusStore, request_id: str) -> None:
    seed_processing_request(store, request_id)
    store.record_results(request_id, [
        ImageResult("https://e.com/a.jpg", "compressed"), ImageResult("https://e.com/b.jpg", "compressed"),
        ImageResult("https://e.com/c.jpg", "failed", error="HTTP 404"),
    ])
    store.finish_request(request_id, "completed_with_errors")


def test_retry_requeues_what_is_not_compressed(home_store, capsys):
    seed_finished_request(home_store, "r1")
    generation = home_store.get_request("r1").generation
    assert cli.main(["retry", "r1"]) == 0
    assert "1 image(s) of request r1 will be processed again" in capsys.readouterr().out
    row = home_store.get_request("r1")
    assert (row.status, row.generation) == ("queued", generation + 1)
    assert [i.status for i in home_store.images("r1")] == ["compressed", "compressed", "pending"]


def test_retry_of_a_request_that_has_not_ended_exits_2_and_changes_nothing(home_store, capsys):
    seed_processing_request(home_store, "r1")
    assert cli.main(["retry", "r1"]) == 2
    assert "request r1 is processing; retry it once it has ended" in capsys.readouterr().err
    row = home_store.get_request("r1")
    assert (row.status, row.generation) == ("processing", 0)


def test_retry_wait_exits_1_when_the_request_fails(home_store, capsys, monkeypatch):
    seed_finished_request(home_store, "r1")
    fake_pipeline(monkeypatch, lambda: home_store.finish_request("r1", "failed", "the run crashed"))
    assert cli.main(["retry", "r1", "--wait"]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "request r1 failed" in err and "the run crashed" in err
    # Its report still says what happened to each image.
    assert printed_value(captured.out, "report_url") == "http://127.0.0.1:8000/requests/r1/report"


def test_retry_of_an_unknown_or_rejected_request_exits_2(home_store, capsys):
    assert cli.main(["retry", "nope"]) == 2
    assert "no request nope" in capsys.readouterr().err
    home_store.record_rejected("bad", source="folder", file_name="x.csv", webhook_url=None,
                               errors=[{"row": 2, "column": "Product Name", "message": "product name is empty"}])
    assert cli.main(["retry", "bad"]) == 2
    assert "rejected" in capsys.readouterr().err


def test_status_prints_what_the_api_answers(api_server, capsys, monkeypatch):
    server = api_server()
    request_id = requests.post(f"{server.url}/requests", data=CSV, headers={"Content-Type": "text/csv"},
                               timeout=10).json()["request_id"]
    monkeypatch.setenv("IMGPIPE_HOME", server.settings.home)
    monkeypatch.setenv("IMGPIPE_PUBLIC_BASE_URL", server.url)
    # The summary by default (a request of 20,000 images is not printed image by image), --products for all.
    assert cli.main(["status", request_id]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == requests.get(f"{server.url}/requests/{request_id}", params={"view": "summary"},
                                   timeout=10).json()
    assert "products" not in printed and printed["products_total"] == 2
    assert printed["report_url"] == f"{server.url}/requests/{request_id}/report"
    assert cli.main(["status", request_id, "--products"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == requests.get(f"{server.url}/requests/{request_id}", timeout=10).json()
    assert len(printed["products"]) == 2
    assert cli.main(["status", "nope"]) == 2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_on_a_terminal_and_logs_tenths_otherwise():
    def counts(done: int) -> dict:
        return {"total": 100, "pending": 100 - done, "processing": 0, "compressed": done, "failed": 0}

    log = io.StringIO()
    bar = progress.ProgressBar(log)
    for done in range(101):
        bar.draw(counts(done))
    lines = log.getvalue().splitlines()
    assert len(lines) == 11
    assert lines[4] == f"[{'#' * 12}{'.' * 18}] 40/100 images (0 failed)"

    terminal = Terminal()
    bar = progress.ProgressBar(terminal)
    bar.draw(counts(45))
    bar.draw(counts(46))
    bar.finish()
    assert terminal.getvalue() == (f"\r[{'#' * 13}{'.' * 17}] 45/100 images (0 failed)"
                                   f"\r[{'#' * 13}{'.' * 17}] 46/100 images (0 failed)\n")


def test_worker_outside_the_distributed_profile_says_how_to_enable_it(capsys):
    assert cli.main(["worker"]) == 2
    assert "set IMGPIPE_PROFILE=distributed" in capsys.readouterr().err


def test_status_into_a_closed_pipe_ends_quietly(home_store, tmp_path):
    # A document larger than a pipe's buffer, so that the writer is still writing when the reader leaves.
    slots = pd.DataFrame([(row, str(row), f"Product {row}", 1, f"https://e.com/{'x' * 100}/{row}.jpg")
                          for row in range(1, 501)], columns=MANIFEST.columns)
    seed_processing_request(home_store, "r-pipe", slots)
    env = {**os.environ, "IMGPIPE_HOME": str(tmp_path / "cli-home")}

    result = subprocess.run(f"'{sys.executable}' -m imgpipe.cli status r-pipe | head -n 1", shell=True,
                            capture_output=True, text=True, env=env, timeout=60)

    assert result.stdout == "{\n"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_purge_prints_each_request_it_removes_and_dry_run_removes_nothing(home_store, capsys):
    for request_id in ("r-old", "r-new"):
        seed_finished_request(home_store, request_id)
    seed_processing_request(home_store, "r-old-running")
    from imgpipe.status.models import utcnow

    long_ago = utcnow().replace(year=2000)
    home_store._run(*[("UPDATE requests SET created_at = ? WHERE request_id = ?", [long_ago, r])
                      for r in ("r-old", "r-old-running")])

    assert cli.main(["purge", "--older-than", "12h", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == ["r-old"]  # a request still processing belongs to its run
    assert home_store.get_request("r-old") is not None
    assert cli.main(["purge", "--older-than", "12h"]) == 0
    assert capsys.readouterr().out.splitlines() == ["r-old"]
    assert home_store.get_request("r-old") is None and home_store.purged_at("r-old") is not None
    assert home_store.get_request("r-new") is not None and home_store.get_request("r-old-running") is not None


def test_purge_refuses_a_request_that_has_not_ended_and_purges_the_others_asked_for(home_store, capsys):
    """Its run would write files after the purge deleted them, and no later purge would find them."""
    seed_finished_request(home_store, "r-ended")
    seed_processing_request(home_store, "r-running")
    home_store.record_accepted("r-queued", source="folder", file_name="p.csv", webhook_url=None, manifest=MANIFEST)

    assert cli.main(["purge", "--older-than", "0s", "--status", "processing,queued,completed_with_errors"]) == 2
    printed = capsys.readouterr()
    assert printed.out.splitlines() == ["r-ended"]
    assert [line for line in printed.err.splitlines() if line.startswith("imgpipe purge: ")] == [
        "imgpipe purge: request r-running is processing: cancel its run first",
        "imgpipe purge: request r-queued is queued: cancel its run first"]
    assert home_store.get_request("r-ended") is None
    for request_id, status in (("r-running", "processing"), ("r-queued", "queued")):
        assert home_store.get_request(request_id).status == status and home_store.purged_at(request_id) is None

    assert cli.main(["purge", "--older-than", "0s", "--status", "processing", "--dry-run"]) == 2
    printed = capsys.readouterr()
    assert (printed.out, printed.err) == ("", "imgpipe purge: request r-running is processing: cancel its run first\n")


@pytest.mark.parametrize(("arguments", "message"), [
    (["--older-than", "soon"], "'soon' is not a duration such as 90s, 15m, 12h or 30d"),
    (["--older-than", "1d", "--status", "done"], "'done' is not a comma list of request statuses"),
])
def test_purge_refuses_what_it_cannot_read(home_store, capsys, arguments, message):
    assert cli.main(["purge", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_submit_wait_with_a_token_ends_with_a_signed_report_link(api_server, csv_file, capsys, monkeypatch):
    server = api_server(IMGPIPE_API_TOKEN="s3cret")
    monkeypatch.setenv("IMGPIPE_API_TOKEN", "s3cret")
    store = server.store

    def finish():
        request_id = store.queued_requests()[0].request_id
        store.start_processing(request_id, "run-1")
        store.record_results(request_id, [ImageResult(url, "compressed") for url in
                                          ("https://e.com/a.jpg", "https://e.com/b.jpg", "https://e.com/c.jpg")])
        (server.settings.outputs_dir / f"{request_id}.csv").write_text("S. No.\n")
        store.finish_request(request_id, "completed")

    fake_pipeline(monkeypatch, finish)
    assert cli.main(["submit", str(csv_file), "--api", server.url, "--wait"]) == 0
    out = capsys.readouterr().out
    link = printed_value(out, "report_url")
    request_id = printed_value(out, "request_id")
    assert link.startswith(f"{server.url}/requests/{request_id}/report?expires=")
    page = requests.get(link, timeout=10)  # no token: the link is signed
    assert page.status_code == 200 and request_id in page.text


def test_progress_board_keeps_a_bar_per_request_under_the_event_lines():
    def counts(done: int, failed: int = 0) -> dict:
        return {"total": 10, "pending": 10 - done, "processing": 0, "compressed": done - failed, "failed": failed}

    log = io.StringIO()
    board = progress.ProgressBoard(log)
    board.draw("r1", counts(0))
    board.draw("r1", counts(0))  # the same tenth: no new line in a log
    board.say("request r2 accepted")
    board.draw("r2", counts(5, 1))
    board.draw("r1", counts(10))
    board.remove("r1")
    assert log.getvalue().splitlines() == [
        f"  r1  [{'.' * 20}] 0/10 images (0 failed)",
        "request r2 accepted",
        f"  r2  [{'#' * 10}{'.' * 10}] 5/10 images (1 failed)",
        f"  r1  [{'#' * 20}] 10/10 images (0 failed)",
    ]

    terminal = Terminal()
    board = progress.ProgressBoard(terminal)
    board.draw("req-1", counts(2))
    board.say("request req-2 accepted")
    board.remove("req-1")
    board.say("done")
    # One line of bars redrawn in place; an event line clears it, is printed, and the bars come back below.
    assert terminal.getvalue() == (f"\r\x1b[Kreq-1 [{'#' * 4}{'.' * 16}] 2/10 images (0 failed)"
                                   f"\r\x1b[Krequest req-2 accepted\nreq-1 [{'#' * 4}{'.' * 16}] 2/10 images (0 failed)"
                                   "\r\x1b[Kdone\n")
