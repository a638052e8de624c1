"""One Idempotency-Key, one request, however many API processes share the status store (contract section 13).

- Two `imgpipe api` processes on one PostgreSQL (the distributed profile, objects in moto's S3 server) and two on
  one DuckDB home: 10 trials of 4 concurrent POSTs with one key give one request each time, and every answer is
  the first one's. A call whose key's first upload is not recorded within the wait answers 503 with Retry-After.
- The store, on both backends: a key is claimed once, and no request is recorded under a key that names another.
- The intake (`take_upload_once`): an upload whose key was claimed waits for the claimant's request; a claimant
  that fails gives its key back; a claim left by an intake that died is taken over once it has expired, and that
  intake, should it still be alive, records nothing and keeps nothing.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests

from imgpipe.backends import Backends
from imgpipe.intake.intake import KEY_WAIT_SECONDS, IntakeResult, KeyPending, Upload, take_upload_once
from imgpipe.settings import Settings
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.idempotency import KeyTaken
from imgpipe.status.models import RequestRow, Source, utcnow
from imgpipe.status.postgres_store import PostgresStatusStore
from imgpipe.storage.keys import input_key
from imgpipe.storage.local import LocalStorage
from imgpipe_tests.api_processes import api_process
from imgpipe_tests.servers import wait_for
from imgpipe_tests.test_api import CSV, CSV_WITH_3_PROBLEMS
from imgpipe_tests.test_status_store import accept

TRIALS = 10
CONCURRENT_POSTS = 4
LONG = timedelta(minutes=2)
EXPIRED = timedelta(0)


@pytest.fixture(params=["postgres", "duckdb"])
def two_apis(request, tmp_path):
    """Two `imgpipe api` processes sharing one status store: PostgreSQL (the distributed profile, each process with
    a home and a TMPDIR of its own) or one DuckDB home. Yields `.urls` and `.store` (the shared store)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("IMGPIPE_", "DAGSTER_"))}
    base["IMGPIPE_WEBHOOK_SECRET"] = os.environ["IMGPIPE_WEBHOOK_SECRET"]
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_url")
        s3 = request.getfixturevalue("s3_storage_env")
        base.update({**s3, "IMGPIPE_PROFILE": "distributed", "IMGPIPE_DATABASE_URL": database_url,
                     # The API never talks to the broker; the profile needs one named.
                     "IMGPIPE_BROKER_URL": "redis://127.0.0.1:6379/0"})
        store = PostgresStatusStore(database_url)
    else:
        base["IMGPIPE_HOME"] = str(tmp_path / "shared-home")
        store = DuckDBStatusStore(tmp_path / "shared-home" / "imgpipe.duckdb")
    with contextlib.ExitStack() as stack:
        urls = []
        for name in ("api1", "api2"):
            own = {"IMGPIPE_HOME": str(tmp_path / name / "home"), "TMPDIR": str(tmp_path / name / "tmp")}
            for folder in own.values():
                os.makedirs(folder, exist_ok=True)
            url, _ = stack.enter_context(api_process({**own, **base}, tmp_path / f"{name}.log"))
            urls.append(url)
        yield SimpleNamespace(urls=urls, store=store)


def post_at_once(urls: list[str], key: str, data: bytes) -> list[requests.Response]:
    """CONCURRENT_POSTS uploads of `data` with `key`, spread over `urls`, released together."""
    start = threading.Barrier(CONCURRENT_POSTS)

    def post(index: int) -> requests.Response:
        start.wait()
        return requests.post(f"{urls[index % len(urls)]}/requests", files={"file": ("same.csv", data, "text/csv")},
                             headers={"Idempotency-Key": key}, timeout=60)

    with ThreadPoolExecutor(CONCURRENT_POSTS) as pool:
        return list(pool.map(post, range(CONCURRENT_POSTS)))


def test_one_key_names_one_request_across_two_api_processes(two_apis):
    requests_per_key, answers_per_key = [], []
    for trial in range(TRIALS):
        key = f"trial-{trial}-{uuid.uuid4().hex[:8]}"
        answers = post_at_once(two_apis.urls, key, CSV)
        answers_per_key.append(answers)
        requests_per_key.append(len(keyed_requests(two_apis.store, key)))
    print(f"requests per key over {TRIALS} trials: {requests_per_key}")

    assert requests_per_key == [1] * TRIALS
    for answers in answers_per_key:
        assert [a.status_code for a in answers] == [202] * CONCURRENT_POSTS, [a.text for a in answers]
        assert len({a.json()["request_id"] for a in answers}) == 1
        assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == CONCURRENT_POSTS - 1

    # A rejected upload's key: four 422s naming one rejected request, three of them replays.
    answers = post_at_once(two_apis.urls, "rejected-once", CSV_WITH_3_PROBLEMS)
    assert [a.status_code for a in answers] == [422] * CONCURRENT_POSTS
    assert len({a.json()["request_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == CONCURRENT_POSTS - 1
    assert len(keyed_requests(two_apis.store, "rejected-once")) == 1


def test_a_key_whose_first_upload_is_not_recorded_within_the_wait_answers_503(api_server):
    server = api_server()
    server.store.claim_idempotency_key("stuck", "20260101-000000-dead", LONG)  # its process was killed, say
    started = time.monotonic()

    answer = requests.post(f"{server.url}/requests", files={"file": ("a.csv", CSV, "text/csv")},
                           headers={"Idempotency-Key": "stuck"}, timeout=60)

    assert KEY_WAIT_SECONDS <= time.monotonic() - started < KEY_WAIT_SECONDS + 5
    assert (answer.status_code, answer.headers.get("Retry-After")) == (503, "1")
    assert answer.json()["error"]["message"] == ("request 20260101-000000-dead, the first with this Idempotency-Key, "
                                                 "is still being recorded; send the upload again in a moment")
    assert keyed_requests(server.store, "stuck") == []


# ---------------------------------------------------------------------- the store and the intake, on both backends


def test_a_key_is_claimed_once_and_names_no_other_request(store):
    assert store.claim_idempotency_key("k", "r-first", LONG) == "r-first"
    assert store.claim_idempotency_key("k", "r-second", LONG) == "r-first"

    with pytest.raises(KeyTaken, match="names request r-first"):
        accept(store, "r-second", idempotency_key="k")
    with pytest.raises(KeyTaken):
        store.record_rejected("r-third", source="api", file_name="a.csv", webhook_url=None,
                              errors=[{"row": 1, "column": None, "message": "bad"}], idempotency_key="k")
    assert store.get_request("r-second") is None and store.get_request("r-third") is None

    accept(store, "r-first", idempotency_key="k")
    store.release_idempotency_key("k", "r-first")  # a recorded request keeps its key, expired or not
    assert store.claim_idempotency_key("k", "r-fourth", EXPIRED) == "r-first"
    accept(store, "r-unclaimed", idempotency_key="k2")  # recording claims a key nobody claimed first
    assert store.claim_idempotency_key("k2", "r-fifth", LONG) == "r-unclaimed"

    store.purge_request("r-first")  # a purged request's key is free again, as its ID is gone
    assert store.claim_idempotency_key("k", "r-sixth", LONG) == "r-sixth"


def test_a_claim_never_recorded_is_given_back_or_taken_over_once_expired(store):
    store.claim_idempotency_key("k", "r-died", LONG)
    assert store.claim_idempotency_key("k", "r-next", LONG) == "r-died"
    assert store.claim_idempotency_key("k", "r-next", EXPIRED) == "r-next"
    store.release_idempotency_key("k", "r-died")  # no longer its claim: nothing changes
    assert store.claim_idempotency_key("k", "r-later", LONG) == "r-next"
    store.release_idempotency_key("k", "r-next")
    assert store.claim_idempotency_key("k", "r-later", LONG) == "r-later"


class GatedStorage(LocalStorage):
    """Local storage whose `keep_input` says when it is entered, then waits for `proceed`."""

    def __init__(self, home):
        super().__init__(home, "http://127.0.0.1:8000")
        self.entered = threading.Event()
        self.proceed = threading.Event()
        self.kept: list[str] = []

    def keep_input(self, request_id: str, data: bytes) -> None:
        self.kept.append(request_id)
        self.entered.set()
        assert self.proceed.wait(30)
        super().keep_input(request_id, data)


@pytest.fixture
def intake(store, tmp_path):
    """`.take(storage, **options)`: take_upload_once of one upload with key "k" over `store` and `storage` (by
    default `.storage`, local folders under `.settings`)."""
    settings = Settings(home=tmp_path / "home")
    plain = LocalStorage(settings.home_dir, settings.public_base_url)
    upload = Upload(CSV, "keyed.csv", Source.API, idempotency_key="k")
    return SimpleNamespace(
        store=store, settings=settings, storage=plain,
        take=lambda storage=plain, **options: take_upload_once(Backends(settings, store, storage), upload, **options))


def in_thread(function) -> list:
    """Starts `function` in a thread; the list gets its result."""
    result: list = []
    threading.Thread(target=lambda: result.append(function()), daemon=True).start()
    return result


def keyed_requests(store, key: str) -> list[str]:
    return [r.request_id for r in store.requests_updated_since(utcnow() - timedelta(hours=1))
            if r.idempotency_key == key]


def test_an_upload_whose_key_is_claimed_waits_for_the_claimant_and_gets_its_request(intake):
    slow = GatedStorage(intake.settings.home_dir)
    first = in_thread(lambda: intake.take(slow))
    assert slow.entered.wait(30)  # the first has claimed the key and is keeping its file
    threading.Timer(0.5, slow.proceed.set).start()
    started = time.monotonic()

    second = intake.take()

    assert time.monotonic() - started >= 0.4
    assert isinstance(second, RequestRow) and second.status == "queued"
    assert wait_for(lambda: first, step=0.02) and isinstance(first[0], IntakeResult) and first[0].accepted
    assert second.request_id == first[0].request_id
    assert keyed_requests(intake.store, "k") == [second.request_id]


def test_an_intake_that_fails_gives_its_key_back(intake):
    class FullDisk(LocalStorage):
        def keep_input(self, request_id: str, data: bytes) -> None:
            raise OSError("the disk is full")

    with pytest.raises(OSError, match="the disk is full"):
        intake.take(FullDisk(intake.settings.home_dir, intake.settings.public_base_url))
    started = time.monotonic()
    retried = intake.take()
    assert isinstance(retried, IntakeResult) and retried.accepted and time.monotonic() - started < 5
    assert keyed_requests(intake.store, "k") == [retried.request_id]


def test_a_claim_left_by_an_intake_that_died_holds_its_key_until_it_expires(intake):
    intake.store.claim_idempotency_key("k", "20260101-000000-dead", LONG)
    started = time.monotonic()
    with pytest.raises(KeyPending, match="request 20260101-000000-dead, the first with this Idempotency-Key"):
        intake.take(wait=0.5)
    assert 0.5 <= time.monotonic() - started < 5

    taken = intake.take(expiry=EXPIRED)
    assert isinstance(taken, IntakeResult) and taken.accepted
    assert keyed_requests(intake.store, "k") == [taken.request_id]


def test_an_intake_that_outlives_its_claim_records_nothing_and_keeps_nothing(intake):
    """Its claim expires while it keeps its file; another upload takes the key over and is recorded; when the slow
    intake records, the store refuses it, and it answers with the other's request."""
    slow = GatedStorage(intake.settings.home_dir)
    late = in_thread(lambda: intake.take(slow))
    assert slow.entered.wait(30)

    taken = intake.take(expiry=EXPIRED)
    slow.proceed.set()

    assert isinstance(taken, IntakeResult) and taken.accepted
    assert wait_for(lambda: late, step=0.02) and isinstance(late[0], RequestRow)
    assert late[0].request_id == taken.request_id
    assert keyed_requests(intake.store, "k") == [taken.request_id]
    [late_id] = slow.kept
    assert late_id != taken.request_id and not intake.storage.exists(input_key(late_id))

