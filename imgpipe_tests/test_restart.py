"""A stack that dies while a request is processing, and the stack started again on the same home: the cut
request ends `failed` with one `request.failed` webhook (its run's worker is found gone by run monitoring),
`imgpipe retry` completes it, nothing of the earlier stack is left running, and new requests still run.
SIGKILL of every process group of the stack (`dagster-daemon run` beside `imgpipe api`) and Ctrl-C of `imgpipe up`,
three times in a row each; and `imgpipe up` killed alone with kill -9, whose children die with it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from imgpipe_tests.images import save_jpeg
from imgpipe_tests.servers import REPO, WebhookReceiver, free_port, product_csv, wait_for
from imgpipe_tests.stack import BIN, TERMINAL, Stack, stack_processes

# Three restarts, each with a run monitoring finds dead and a retry: minutes, not the suite's 300 s per test.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
RESTARTS = 3
ENDED_WITHIN = 120  # seconds from the restart to the cut request's terminal status


def photographs(image_root: Path, image_server, count: int) -> list[str]:
    folder = uuid.uuid4().hex[:8]
    for i in range(count):
        save_jpeg(image_root / folder / f"{i}.jpg", quality=85, seed=i)
    return [image_server.url(f"img/{folder}/{i}.jpg") for i in range(count)]


def post(api: str, csv_text: str, webhook_url: str) -> str:
    answer = requests.post(f"{api}/requests", files={"file": ("cut.csv", csv_text)}, data={"webhook_url": webhook_url},
                           timeout=30)
    assert answer.status_code == 202, answer.text
    return answer.json()["request_id"]


def status_of(api: str, request_id: str) -> dict:
    try:
        return requests.get(f"{api}/requests/{request_id}?view=summary", timeout=5).json()
    except (requests.RequestException, ValueError):
        return {}


def cut_request(api: str, image_root: Path, image_server, receiver: WebhookReceiver, name: str) -> str:
    """A request caught mid-processing: two images done, a third one slow to download."""
    fast = photographs(image_root, image_server, 3)
    slow = fast[2].replace("/img/", "/slow/10/")  # under the 15 s read timeout: the retry gets it
    request_id = post(api, product_csv([[fast[0], fast[1]], [slow]]), receiver.url(name))
    assert wait_for(lambda: status_of(api, request_id).get("counts", {}).get("compressed") == 2, 60), \
        status_of(api, request_id)
    assert status_of(api, request_id)["status"] == "processing"
    return request_id


def assert_ended_failed_once_then_retried(api: str, env: dict, receiver: WebhookReceiver, name: str,
                                          request_id: str, restarted_at: float) -> None:
    ended = wait_for(lambda: status_of(api, request_id).get("status") in TERMINAL, ENDED_WITHIN)
    assert ended, f"still {status_of(api, request_id).get('status')} {ENDED_WITHIN} s after the restart"
    assert time.monotonic() - restarted_at <= ENDED_WITHIN
    assert status_of(api, request_id)["status"] == "failed"
    assert wait_for(lambda: receiver.calls_to(name), 30)
    time.sleep(3)  # a second webhook for the same end would have come by now
    [call] = receiver.calls_to(name)
    assert json.loads(call["body"])["type"] == "request.failed"
    retried = subprocess.run([str(BIN / "imgpipe"), "retry", request_id, "--wait"], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=180)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert status_of(api, request_id)["status"] == "completed"


def assert_all_gone(dagster_home: Path) -> None:
    """No process of the stack over `dagster_home` (daemon, API, UI, code server, warm run servers, run workers,
    image fork servers) is left alive: nothing of a stack that was stopped outlives it."""
    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False

    left = lambda: [pid for pid in stack_processes(dagster_home) if alive(pid)]  # noqa: E731
    assert wait_for(lambda: not left(), 45), [Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in left()]


def test_a_stack_killed_three_times_mid_request_ends_each_cut_request_and_runs_the_next(
        tmp_path, image_server, image_root):
    receiver = WebhookReceiver()
    stack = Stack(tmp_path)
    stack.start()
    try:
        for restart in range(RESTARTS):
            name = f"cut-{restart}"
            request_id = cut_request(stack.api, image_root, image_server, receiver, name)
            stack.kill()
            assert_all_gone(stack.dagster_home)
            stack.start()
            restarted_at = time.monotonic()
            assert_ended_failed_once_then_retried(stack.api, stack.env, receiver, name, request_id, restarted_at)
        request_id = post(stack.api, product_csv([photographs(image_root, image_server, 2)]), receiver.url("after"))
        assert stack.wait_terminal(request_id, 60).status == "completed"
    finally:
        stack.stop()
        receiver.close()


def ctrl_c(up: subprocess.Popen) -> None:
    up.send_signal(signal.SIGINT)
    assert up.wait(timeout=15) == 0


def kill_9_its_process_group(up: subprocess.Popen) -> None:
    """What a lost terminal or `kill -9 -- -PGID` of `make run` does: `imgpipe up` dies at once, stopping nothing."""
    os.killpg(up.pid, signal.SIGKILL)
    up.wait(timeout=15)


@pytest.mark.parametrize("stop, times", [(ctrl_c, RESTARTS), (kill_9_its_process_group, 1)],
                         ids=["ctrl-c three times", "kill -9 of its process group"])
def test_imgpipe_up_stopped_mid_request_ends_each_cut_request(stop, times, tmp_path, image_server, image_root):
    receiver = WebhookReceiver()
    home = tmp_path / "home"
    api_port, ui_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGPIPE_", "DAGSTER_"))}
    env.update({"IMGPIPE_HOME": str(home), "IMGPIPE_ALLOW_PRIVATE_HOSTS": "127.0.0.1",
                "IMGPIPE_SENSOR_INTERVAL": "1", "IMGPIPE_WEBHOOK_SECRET": os.environ["IMGPIPE_WEBHOOK_SECRET"]})
    command = [str(BIN / "imgpipe"), "up", "--no-sample", "--api-port", str(api_port), "--ui-port", str(ui_port),
               "--samples-port", str(free_port())]

    log = tmp_path / "up.log"
    log.touch()

    def start() -> subprocess.Popen:
        written = len(log.read_text())
        up = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=open(log, "ab"),
                              stderr=subprocess.STDOUT, start_new_session=True)
        # Ready as `imgpipe up` says it: the API and the UI (and so the daemon) answer. A first start on a clean
        # clone once took over 180 s beside the rest of the suite on a slow afternoon; the stack's own logs say why.
        if not wait_for(lambda: "Ctrl-C stops everything" in log.read_text()[written:], 300):
            logs = "\n".join(f"== {path.name}\n{path.read_text()[-3000:]}"
                             for path in sorted((home / "logs").glob("*.log")))
            pytest.fail(f"imgpipe up was not ready within 300 s:\n{log.read_text()[-2000:]}\n{logs}")
        return up

    up = start()
    try:
        for restart in range(times):
            name = f"cut-{restart}"
            request_id = cut_request(api, image_root, image_server, receiver, name)
            stop(up)
            assert_all_gone(home / "dagster_home")
            up = start()
            assert_ended_failed_once_then_retried(api, env, receiver, name, request_id, time.monotonic())
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=15)
        receiver.close()
