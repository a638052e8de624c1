"""Standard Webhooks signing, checked against the reference implementation (`standardwebhooks`)."""
from __future__ import annotations

import base64
import multiprocessing
import secrets
import stat
import time
from datetime import datetime, timezone

import pytest
import standardwebhooks

from imgpipe.webhooks.signing import load_or_create_secret, sign, signed_headers, verify

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
BODY = b'{"type":"request.completed","request_id":"r1"}'


def headers_now(secret: str = SECRET, body: bytes = BODY, msg_id: str = "msg_r1_0") -> dict:
    return signed_headers(secret, msg_id, int(time.time()), body)


def test_signature_matches_the_reference_implementation():
    timestamp = 1_700_000_000
    sent_at = datetime.fromtimestamp(timestamp, timezone.utc)
    reference = standardwebhooks.Webhook(SECRET).sign("msg_r1_0", sent_at, BODY.decode())
    assert sign(SECRET, "msg_r1_0", timestamp, BODY) == reference


def test_signed_headers_verify_with_the_reference_implementation():
    headers = headers_now()
    assert standardwebhooks.Webhook(SECRET).verify(BODY, headers) == {"type": "request.completed",
                                                                      "request_id": "r1"}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "imgpipe-webhook/1"
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "user-agent"}


def test_round_trip_and_every_kind_of_tampering():
    headers = headers_now()
    assert verify(SECRET, headers, BODY)
    assert verify(SECRET, {name.title(): value for name, value in headers.items()}, BODY)

    tampered_body = BODY.replace(b"r1", b"r2")
    assert not verify(SECRET, headers, tampered_body)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(tampered_body, headers)

    assert not verify(SECRET, {**headers, "webhook-id": "msg_other"}, BODY)
    other_secret = "whsec_" + base64.b64encode(b"x" * 32).decode()
    assert not verify(other_secret, headers, BODY)
    assert not verify(SECRET, {k: v for k, v in headers.items() if k != "webhook-signature"}, BODY)


def test_a_signature_older_than_the_tolerance_fails():
    old = int(time.time()) - 600
    headers = signed_headers(SECRET, "msg_r1_0", old, BODY)
    assert not verify(SECRET, headers, BODY)
    assert verify(SECRET, headers, BODY, tolerance=900)


def test_any_of_several_signatures_may_match():
    headers = headers_now()
    other = headers_now(secret="whsec_" + base64.b64encode(b"y" * 32).decode())
    both = {**headers, "webhook-signature": f"{other['webhook-signature']} {headers['webhook-signature']}"}
    assert verify(SECRET, both, BODY)
    assert not verify(SECRET, {**headers, "webhook-signature": other["webhook-signature"]}, BODY)


def test_configured_secret_is_used_and_nothing_is_written(tmp_path):
    assert load_or_create_secret(tmp_path, SECRET) == SECRET
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["", "secret", "whsec_", "whsec_not*base64!", base64.b64encode(b"k" * 32).decode()])
def test_a_bad_configured_secret_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="webhook secret"):
        load_or_create_secret(tmp_path, bad)


def test_secret_is_generated_once_privately_and_reused(tmp_path):
    home = tmp_path / "home"
    secret = load_or_create_secret(home, None)
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    path = home / "webhook_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(home, None) == secret
    assert [p.name for p in home.iterdir()] == ["webhook_secret"]
    assert verify(secret, headers_now(secret=secret), BODY)


def _race_for_secret(home, all_generating, results):
    generate = secrets.token_bytes

    def generate_once_everyone_is_here(n):
        # Holding every racer here means each one found no secret file and is about to create it.
        all_generating.wait(timeout=20)
        return generate(n)

    secrets.token_bytes = generate_once_everyone_is_here
    results.put(load_or_create_secret(home, None))


def test_processes_racing_to_create_the_secret_all_get_the_same_one(tmp_path):
    context = multiprocessing.get_context("fork")
    racers = 8
    all_generating, results = context.Barrier(racers), context.Queue()
    processes = [context.Process(target=_race_for_secret, args=(tmp_path, all_generating, results))
                 for _ in range(racers)]
    for process in processes:
        process.start()
    secrets_seen = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert len(set(secrets_seen)) == 1
    assert (tmp_path / "webhook_secret").read_text().strip() == secrets_seen[0]
    assert [p.name for p in tmp_path.iterdir()] == ["webhook_secret"]
