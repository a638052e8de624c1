"""The webhook's payload, one delivery attempt against a real receiver, and the retry schedule."""
from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import standardwebhooks

from imgpipe.webhooks.signing import signed_headers
from imgpipe.net.url_safety import AllowList
from imgpipe.settings import Settings
from imgpipe.webhooks.attempt import attempt_delivery
from imgpipe.webhooks.message import build_payload, event_type, message_id
from imgpipe.webhooks.retry import RetryPolicy
from imgpipe_tests.servers import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"webhook-test-secret-32-bytes-abc").decode()
LOOPBACK = AllowList.parse("127.0.0.1")
# Short, so that closing a server (which waits for its loop to notice) does not slow every test.
POLL_INTERVAL = 0.02
COUNTS = {"pending": 0, "processing": 0, "compressed": 3, "failed": 1, "total": 4}


@pytest.fixture
def receivers():
    opened = []

    def open_receiver(*replies):
        opened.append(WebhookReceiver(replies))
        return opened[-1]

    yield open_receiver
    for receiver in opened:
        receiver.close()


def deliver(url, body=b'{"type":"request.completed"}', allow=LOOPBACK, **timeouts):
    headers = signed_headers(SECRET, "msg_r1_0", int(time.time()), body)
    return attempt_delivery(url, body, headers, allow=allow, **timeouts)


# ---------------------------------------------------------------------------------------------- payload


def test_event_types():
    assert event_type("completed") == "request.completed"
    assert event_type("completed_with_errors") == "request.completed"
    assert event_type("failed") == "request.failed"
    with pytest.raises(ValueError):
        event_type("processing")


def test_payload_has_exactly_the_contract_keys_in_compact_json():
    finished = datetime(2024, 5, 1, 14, 30, 5, 250000, tzinfo=timezone(timedelta(hours=2)))
    body = build_payload("r1", "completed_with_errors", COUNTS, "http://x/requests/r1/output.csv", finished)
    payload = json.loads(body)
    assert list(payload) == ["type", "request_id", "status", "counts", "output_csv_url", "timestamp"]
    assert payload == {
        "type": "request.completed",
        "request_id": "r1",
        "status": "completed_with_errors",
        "counts": COUNTS,
        "output_csv_url": "http://x/requests/r1/output.csv",
        "timestamp": "2024-05-01T12:30:05.250Z",
    }
    assert body == json.dumps(payload, separators=(",", ":")).encode()


def test_payload_of_a_failed_request_and_a_naive_utc_time():
    payload = json.loads(build_payload("r2", "failed", COUNTS, "http://x/o.csv", datetime(2024, 5, 1, 12, 0)))
    assert payload["type"] == "request.failed"
    assert payload["timestamp"] == "2024-05-01T12:00:00.000Z"


def test_message_id_is_stable_per_request_and_run():
    run_a, run_b = "0f3c9a1e-aaaa-bbbb", "77d2c4b0-cccc-dddd"
    assert message_id("r1", run_a) == message_id("r1", run_a)
    assert message_id("r1", run_a).startswith("msg_")
    assert len({message_id("r1", run_a), message_id("r1", run_b), message_id("r2", run_a)}) == 3


# ---------------------------------------------------------------------------------------------- one attempt


@pytest.mark.parametrize("code", [200, 204])
def test_2xx_is_delivered_signed(receivers, code):
    receiver = receivers(code)
    body = build_payload("r1", "completed", COUNTS, "http://x/o.csv", datetime.now(timezone.utc))
    result = deliver(receiver.url(), body)
    assert (result.outcome, result.status_code, result.error) == ("delivered", code, None)
    [call] = receiver.calls
    assert call["body"] == body
    assert standardwebhooks.Webhook(SECRET).verify(call["body"], call["headers"])["request_id"] == "r1"
    assert call["headers"]["webhook-id"] == "msg_r1_0"
    assert call["headers"]["content-type"] == "application/json"
    assert call["headers"]["user-agent"] == "imgpipe-webhook/1"


def test_410_means_gone(receivers):
    result = deliver(receivers(410).url())
    assert (result.outcome, result.status_code) == ("gone", 410)
    assert "410" in result.error


def test_404_is_rejected_not_retried(receivers):
    result = deliver(receivers(404).url())
    assert (result.outcome, result.status_code) == ("rejected", 404)


def test_a_redirect_is_not_followed(receivers):
    elsewhere = receivers()
    redirecting = receivers((302, {"Location": elsewhere.url()}))
    result = deliver(redirecting.url())
    assert (result.outcome, result.status_code) == ("rejected", 302)
    assert elsewhere.url() in result.error
    assert len(redirecting.calls) == 1
    assert elsewhere.calls == []


def test_503_is_retried_after_the_time_it_asks_for(receivers):
    result = deliver(receivers((503, {"Retry-After": "42"})).url())
    assert (result.outcome, result.status_code, result.retry_after) == ("retry", 503, 42.0)


def test_429_is_retried(receivers):
    result = deliver(receivers(429).url())
    assert (result.outcome, result.status_code) == ("retry", 429)


def test_a_closed_port_is_a_network_error_to_retry():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    result = deliver(f"http://127.0.0.1:{closed_port}/hook")
    assert (result.outcome, result.status_code) == ("retry", None)
    assert result.error


def test_a_receiver_too_slow_to_answer_is_retried(receivers):
    class Stalling(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            time.sleep(3)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,), daemon=True).start()
    try:
        started = time.monotonic()
        result = deliver(f"http://127.0.0.1:{server.server_address[1]}/hook", read_timeout=0.5)
        assert time.monotonic() - started < 2.5
    finally:
        server.shutdown()
        server.server_close()
    assert (result.outcome, result.status_code) == ("retry", None)


def test_the_metadata_address_is_blocked_without_connecting():
    started = time.monotonic()
    result = deliver("http://169.254.169.254/latest/meta-data/", connect_timeout=5)
    assert (result.outcome, result.status_code) == ("blocked", None)
    assert "169.254.169.254" in result.error
    assert time.monotonic() - started < 1  # no connection attempt, which would wait for the connect timeout


def test_loopback_that_is_not_allowed_is_blocked_and_never_reached(receivers):
    receiver = receivers()
    result = deliver(receiver.url(), allow=AllowList.parse(""))
    assert result.outcome == "blocked"
    assert receiver.calls == []


# ---------------------------------------------------------------------------------------------- schedule

POLICY = RetryPolicy()
# The longest a failed attempt takes: the connect timeout plus the read timeout.
SLOWEST_ATTEMPT = 5 + 10


def attempt_times(policy, retry_after=lambda attempts_made: None, duration=0.0):
    """When each attempt starts, measured from the first, if every attempt fails after `duration` seconds."""
    starts = [0.0]
    while True:
        attempts_made, now = len(starts), starts[-1] + duration
        delay = policy.next_delay(attempts_made, retry_after(attempts_made), now)
        if delay is None:
            return starts
        assert delay > 0
        starts.append(now + delay)


@pytest.mark.parametrize("duration", [0.0, SLOWEST_ATTEMPT])
def test_first_three_attempts_within_a_minute_then_backing_off_for_a_day(duration):
    starts = attempt_times(POLICY, duration=duration)
    assert starts[2] <= 60
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert gaps[2] >= 300  # then minutes ...
    assert max(gaps) >= 3600  # ... then hours
    assert starts[-1] <= POLICY.horizon
    assert starts[-1] > POLICY.horizon - 3600  # still trying late on the last day


def test_only_the_first_two_retries_are_inline():
    assert POLICY.is_inline(1, None, 0)
    assert POLICY.is_inline(2, None, 5)
    assert not POLICY.is_inline(3, None, 25)


def test_retry_after_is_honoured_when_longer_than_the_schedule():
    assert POLICY.next_delay(1, 12, 0) == 12 and POLICY.is_inline(1, 12, 0)
    assert POLICY.next_delay(1, 2, 0) == 5
    assert POLICY.next_delay(4, 4000, 400) == 4000
    starts = attempt_times(POLICY, retry_after=lambda n: 25)
    assert starts[:3] == [0, 25, 50]


def test_retry_after_beyond_the_inline_window_hands_the_attempt_to_the_later_schedule():
    assert not POLICY.is_inline(1, 120, 0)
    assert POLICY.next_delay(1, 120, 0) == 300
    assert POLICY.next_delay(1, 900, 0) == 900
    assert not POLICY.is_inline(2, 30, 40)  # would land at 70 s
    starts = attempt_times(POLICY, retry_after=lambda n: 120 if n == 1 else None)
    assert starts[1] >= 120
    assert starts[-1] <= POLICY.horizon


def test_gives_up_at_the_horizon():
    assert POLICY.next_delay(5, None, POLICY.horizon) is None
    assert POLICY.next_delay(5, None, POLICY.horizon + 1) is None
    # Retry-After never pushes the last attempt past the horizon.
    assert POLICY.next_delay(5, 10 * POLICY.horizon, POLICY.horizon - 100) == 100
    starts = attempt_times(POLICY, retry_after=lambda n: 7 * 3600)
    assert starts[-1] == POLICY.horizon


def test_a_fast_schedule_from_the_environment():
    settings = Settings.from_env({"IMGPIPE_WEBHOOK_RETRY_DELAYS": "0.5, 1, 2,4"})
    policy = RetryPolicy.from_delays(settings.webhook_delays)
    assert (policy.inline_delays, policy.later_delays) == ((0.5, 1.0), (2.0, 4.0))
    assert attempt_times(policy) == [0, 0.5, 1.5, 3.5, 7.5]
    assert RetryPolicy.from_delays(Settings().webhook_delays) == RetryPolicy()
    for bad in ("soon", "1,0", "1,-2"):
        with pytest.raises(ValueError, match="IMGPIPE_WEBHOOK_RETRY_DELAYS"):
            Settings.from_env({"IMGPIPE_WEBHOOK_RETRY_DELAYS": bad})
