"""The limits of `POST /requests` while the body streams in (imgpipe.api.uploads), over real HTTP.

The security audit's item 2: a 280 KB multipart upload whose part header held thousands of parameters drove the
former `email.parser` reader to about 3 GB; three of them got the API OOM-killed. The first test replays that
attack against the API in a process of its own and measures its memory.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from imgpipe.api.uploads import (
    MAX_HEADER_LINE_BYTES,
    MAX_HEADERS_PER_PART,
    MAX_PARTS,
    MAX_WEBHOOK_FIELD_BYTES,
    MULTIPART_ENVELOPE_BYTES,
)
from imgpipe_tests.api_processes import api_process as running_api
from imgpipe_tests.test_api import (
    CSV,
    inbox,
    kept_inputs,
    nothing_recorded,
    raw_request,
    upload,
)

MIB = 1024 * 1024
BOUNDARY = "imgpipe-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def part(headers: list[bytes], content: bytes) -> bytes:
    return b"--" + BOUNDARY.encode() + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + content + b"\r\n"


def form(*parts: bytes, epilogue: bytes = b"") -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n" + epilogue


def file_part(content: bytes = CSV, disposition: bytes = b'form-data; name="file"; filename="a.csv"') -> bytes:
    return part([b"Content-Disposition: " + disposition, b"Content-Type: text/csv"], content)


def field_part(name: str, value: bytes) -> bytes:
    return part([b'Content-Disposition: form-data; name="' + name.encode() + b'"'], value)


def post_form(server, body, headers=None) -> requests.Response:
    return requests.post(f"{server.url}/requests", data=body, headers={"Content-Type": MULTIPART, **(headers or {})},
                         timeout=10)


def error_of(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"]["code"], body["error"]["message"]


# ---------------------------------------------------------------------- the audit's attack, in a process of its own


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in KiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0])
    return figures


@pytest.fixture
def api_process(tmp_path):
    """`imgpipe api` in a process of its own over a fresh IMGPIPE_HOME; yields (url, pid)."""
    env = {**os.environ, "IMGPIPE_HOME": str(tmp_path / "home")}
    env.pop("IMGPIPE_API_TOKEN", None)
    env.pop("IMGPIPE_PUBLIC_BASE_URL", None)  # the process's own URL
    with running_api(env, tmp_path / "api.log") as (url, pid):
        yield url, pid


def hostile_uploads() -> list[tuple[str, bytes]]:
    """About 280 KB each, the whole of it one Content-Disposition header line."""
    start = b'form-data; name="file"; filename="a.csv"'
    return [
        ("56,000 parameters", file_part(disposition=start + b"; a=b" * 56_000)),
        ("one 280 KB filename", file_part(disposition=b'form-data; name="file"; filename="' + b"x" * 280_000 + b'"')),
        ("an open quote and 280 KB of ';'",
         file_part(disposition=b'form-data; name="file"; filename="' + b';' * 280_000)),
    ]


def test_a_part_header_of_thousands_of_parameters_costs_no_memory(api_process):
    url, pid = api_process
    # Warm up every path the attack takes (a good upload, a malformed one) before taking the baseline.
    assert requests.post(f"{url}/requests", files={"file": ("a.csv", CSV)}, timeout=10).status_code == 202
    assert requests.post(f"{url}/requests", data=b"junk", headers={"Content-Type": MULTIPART},
                         timeout=10).status_code == 400
    before = memory_kib(pid)
    print(f"\nAPI process {pid} before: VmRSS {before['VmRSS'] / 1024:.1f} MiB, "
          f"VmHWM {before['VmHWM'] / 1024:.1f} MiB")
    for label, part_bytes in hostile_uploads():
        body = form(part_bytes)
        started = time.monotonic()
        response = requests.post(f"{url}/requests", data=body, headers={"Content-Type": MULTIPART}, timeout=30)
        elapsed = time.monotonic() - started
        now = memory_kib(pid)
        print(f"  {label}: {len(body) / 1000:.0f} KB body -> {response.status_code} in {elapsed:.3f} s "
              f"({response.json()['error']['message']}); VmRSS {now['VmRSS'] / 1024:.1f} MiB, "
              f"VmHWM {now['VmHWM'] / 1024:.1f} MiB")
        assert 270_000 < len(body) < 300_000
        assert response.status_code == 400
        assert elapsed < 5
    after = memory_kib(pid)
    growth_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(f"API process {pid} after: VmRSS {after['VmRSS'] / 1024:.1f} MiB, VmHWM {after['VmHWM'] / 1024:.1f} MiB; "
          f"peak grew by {growth_mib:.1f} MiB")
    assert growth_mib < 200
    # Still serving.
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200


# ---------------------------------------------------------------------- the other limits, in a thread


def test_a_part_header_line_is_bounded(api_server):
    server = api_server()
    at_limit = b'form-data; name="file"; filename="' + b"n" * 100 + b'"; x="'
    at_limit += b"y" * (MAX_HEADER_LINE_BYTES - len(b"Content-Disposition: ") - len(at_limit) - 1) + b'"'
    assert len(b"Content-Disposition: " + at_limit) == MAX_HEADER_LINE_BYTES
    accepted = post_form(server, form(file_part(disposition=at_limit)))
    assert accepted.status_code == 202, accepted.text
    assert server.store.get_request(accepted.json()["request_id"]).file_name == "n" * 100

    over = post_form(server, form(file_part(disposition=at_limit + b" ")))
    assert error_of(over) == (400, "bad_request",
                              f"a part's header line is longer than {MAX_HEADER_LINE_BYTES:,} bytes")
    # A long header name, or a long header other than Content-Disposition, just the same.
    for header in (b"X-" + b"h" * MAX_HEADER_LINE_BYTES + b": v", b"X-Long: " + b"v" * MAX_HEADER_LINE_BYTES):
        refused = post_form(server, form(part([b'Content-Disposition: form-data; name="file"', header], CSV)))
        assert refused.status_code == 400
    assert kept_inputs(server) == [accepted.json()["request_id"]]


def test_a_part_has_few_header_lines(api_server):
    server = api_server()
    headers = [b'Content-Disposition: form-data; name="file"; filename="a.csv"']
    fine = headers + [b"X-Extra: 1"] * (MAX_HEADERS_PER_PART - 1)
    assert post_form(server, form(part(fine, CSV))).status_code == 202
    refused = post_form(server, form(part(fine + [b"X-Extra: 1"], CSV)))
    assert error_of(refused) == (400, "bad_request", f"a part has more than {MAX_HEADERS_PER_PART} header lines")


def test_a_form_has_few_parts(api_server):
    server = api_server()
    others = [field_part("other", b"x")] * (MAX_PARTS - 1)
    assert post_form(server, form(file_part(), *others)).status_code == 202
    refused = post_form(server, form(file_part(), *others, field_part("other", b"x")))
    assert error_of(refused) == (400, "bad_request", f"the form has more than {MAX_PARTS} parts")
    assert len(kept_inputs(server)) == 1


def test_the_webhook_field_is_bounded(api_server):
    server = api_server()
    # Within the field's bound but longer than a URL may be: a 422 that names it, nothing recorded.
    long_url = b"https://hooks.example.com/" + b"a" * (MAX_WEBHOOK_FIELD_BYTES - 26)
    assert len(long_url) == MAX_WEBHOOK_FIELD_BYTES
    invalid = post_form(server, form(file_part(), field_part("webhook_url", long_url)))
    assert invalid.status_code == 422
    assert [e["column"] for e in invalid.json()["errors"]] == ["webhook_url"]
    too_large = post_form(server, form(file_part(), field_part("webhook_url", long_url + b"a")))
    assert error_of(too_large) == (
        413, "payload_too_large",
        f"the webhook_url field is larger than the limit of {MAX_WEBHOOK_FIELD_BYTES:,} bytes")
    assert nothing_recorded(server)


def test_the_file_and_the_body_are_bounded_while_streaming(api_server):
    limit = 1000
    server = api_server(IMGPIPE_MAX_CSV_BYTES=str(limit))
    row_start, row_end = b"2,Hat,https://e.com/", b".jpg\n"
    csv_at_limit = CSV + row_start + b"x" * (limit - len(CSV) - len(row_start) - len(row_end)) + row_end
    assert len(csv_at_limit) == limit
    assert post_form(server, form(file_part(csv_at_limit))).status_code == 202
    over = post_form(server, form(file_part(csv_at_limit + b"\n")))
    assert error_of(over) == (413, "payload_too_large", f"the CSV is larger than the limit of {limit:,} bytes")

    def chunked(body: bytes):
        return (body[i:i + 4096] for i in range(0, len(body), 4096))

    # Chunked (no Content-Length): the file, then a skipped field that only the whole body's bound stops.
    big_file = post_form(server, chunked(form(file_part(CSV * 1000))))
    assert big_file.request.headers.get("Transfer-Encoding") == "chunked"
    assert error_of(big_file)[:2] == (413, "payload_too_large")
    envelope = limit + MULTIPART_ENVELOPE_BYTES
    big_other = post_form(server, chunked(form(file_part(), field_part("other", b"o" * envelope))))
    assert error_of(big_other) == (413, "payload_too_large",
                                   f"the upload is larger than the limit of {envelope:,} bytes")
    # A declared length over the bound is refused before any of the body is read (it never comes).
    status, _ = raw_request(server.url, "POST", "/requests", body=b"--",
                               headers={"Content-Type": MULTIPART, "Content-Length": str(envelope + 1)})
    assert status == 413
    assert len(kept_inputs(server)) == 1 and inbox(server) == []


def test_form_details(api_server):
    server = api_server()
    # The first `file` part counts; a name in UTF-8 is kept, its folders dropped; an epilogue is ignored.
    response = post_form(server, form(
        field_part("note", b"ignored"),
        file_part(disposition='form-data; name="file"; filename="C:\\Users\\me\\été.csv"'.encode()),
        file_part(b"not,a,csv\n", disposition=b'form-data; name="file"; filename="second.csv"'),
        epilogue=b"trailing words\r\n"))
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    assert server.store.get_request(request_id).file_name == "été.csv"
    assert (server.settings.requests_dir / request_id / "input.csv").read_bytes() == CSV
    # A name that is not UTF-8 is kept readable.
    latin1 = post_form(server, form(file_part(disposition=b'form-data; name="file"; filename="caf\xe9.csv"')))
    assert server.store.get_request(latin1.json()["request_id"]).file_name == "caf\ufffd.csv"
    # Without a name, the default one; the `requests` library's own multipart encoder is understood too.
    unnamed = post_form(server, form(file_part(disposition=b'form-data; name="file"')))
    assert server.store.get_request(unnamed.json()["request_id"]).file_name == "upload.csv"
    assert upload(server).status_code == 202
    # A quoted boundary in the Content-Type; a Content-Type too long to be one.
    quoted = requests.post(f"{server.url}/requests", data=form(file_part()),
                           headers={"Content-Type": f'multipart/form-data; boundary="{BOUNDARY}"'}, timeout=10)
    assert quoted.status_code == 202
    long_type = requests.post(f"{server.url}/requests", data=form(file_part()),
                              headers={"Content-Type": MULTIPART + "; x=" + "y" * 2000}, timeout=10)
    assert error_of(long_type)[:2] == (400, "bad_request")
