"""Where imgpipe's CPU per image goes beyond the codec: each part measured on its own, then the whole batch.

    .venv/bin/python bench/breakdown.py [--images 400] [--corpus photo] [--label NAME] [--isolation process]
                                        [--no-profilers]

Without Dagster: a step's `BatchRunner` over N images served from 127.0.0.1 by a server in a process of its own
(so that its CPU is not counted), a real DuckDB status store and local storage, exactly as `compress_batch` runs
it. Measured, as CPU milliseconds per image (user + system, from /proc and getrusage):

1. parts alone, in this process, one at a time: the image policy in-process (`compress_image`), the same without
   its two thumbnails, a download with imgpipe's fetcher (SSRF checks, pinned connection, HTTP parsing) and with
   plain `requests` (the baseline's), SHA-256 of the input, the storage writes of a fresh image (image + two
   thumbnails) and of a kept one (three files by content, three hard links), and the status writes
   (`record_results`, in groups as `BatchRunner.run` reports them);
2. the whole batch (`BatchRunner.run`), by process: the step process, the fork server, the image processes
   (reaped children of the server, or live pool workers), with their minor page faults and wall time; as any
   new upload runs it (reuse on: each new image's SHA-256 looked up among kept outputs, and kept by it), and as
   a `fresh` request runs it (reuse off);
3. with profilers (unless --no-profilers): `perf stat` (task clock, page faults, context switches, CPU
   migrations) of the whole batch's tree, `strace -c -f` of the fork server and its children over a batch
   (syscall counts per image), and `py-spy` of the step process (where its CPU goes, by part).

Writes bench-results/breakdown-<label>.json and prints a table.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import RESULTS, ImageServer, ensure_images  # noqa: E402
from procstat import cpu_times, this_process_cpu, tree  # noqa: E402

import requests  # noqa: E402

from imgpipe.backends import Backends  # noqa: E402
from imgpipe.images import compressor, image_policy  # noqa: E402
from imgpipe.images.batch import BatchRunner, WorkItem  # noqa: E402
from imgpipe.images.image_policy import POLICY_VERSION, compress_image  # noqa: E402
from imgpipe.net.download import FetchLimits, fetch  # noqa: E402
from imgpipe.net.host_slots import HostSlots  # noqa: E402
from imgpipe.net.url_safety import AllowList  # noqa: E402
from imgpipe.processing import reuse_for  # noqa: E402
from imgpipe.settings import Settings  # noqa: E402
from imgpipe.status.duckdb_store import DuckDBStatusStore  # noqa: E402
from imgpipe.status.models import ImageResult, ImageStatus, Source  # noqa: E402
from imgpipe.storage.local import LocalStorage  # noqa: E402

LIMITS = {"max_pixels": 50_000_000, "max_frames": 1000}


def per_image_ms(function, count: int) -> float:
    before = this_process_cpu()
    function()
    return round(1000 * (this_process_cpu() - before) / count, 2)


def setup_request(home: Path, request_id: str, urls: list[str]) -> Backends:
    settings = Settings.from_env({"IMGPIPE_HOME": str(home), "IMGPIPE_ALLOW_PRIVATE_HOSTS": "127.0.0.1",
                                  "IMGPIPE_ISOLATION": os.environ.get("IMGPIPE_ISOLATION", "process")})
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    store = DuckDBStatusStore(settings.db_path)
    products = [(str(row + 1), f"Product {row + 1}", urls[row * 10:(row + 1) * 10])
                for row in range((len(urls) + 9) // 10)]
    record_request(store, request_id, products)
    return Backends(settings, store, LocalStorage(settings.home_dir, settings.public_base_url))


def record_request(store, request_id: str, products) -> None:
    from imgpipe.intake.csv_schema import parse_upload
    import csv as csv_module
    import io
    out = io.StringIO()
    writer = csv_module.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for serial, name, urls in products:
        writer.writerow([serial, name, ", ".join(urls)])
    manifest = parse_upload(out.getvalue().encode(), limits=Settings())
    store.record_accepted(request_id, source=Source.FOLDER, file_name="bench.csv", webhook_url=None,
                          manifest=manifest)


def server_pids() -> list[int]:
    return [pid for pid, parent in tree(os.getpid()).items()
            if "imgpipe.images.fork_server" in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")]


def process_cpu() -> dict:
    """CPU s of this process, of the fork server(s), and of the image processes (reaped + live)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    result = {"step process": own.ru_utime + own.ru_stime, "step faults": own.ru_minflt,
              "fork server": 0.0, "image processes": 0.0, "server faults": 0, "image faults": 0}
    for server in server_pids():
        times = cpu_times(server)
        if not times:
            continue
        result["fork server"] += times[0]
        result["image processes"] += times[1]
        result["server faults"] += times[2]
        result["image faults"] += times[3]
        for pid, parent in tree(server).items():
            if pid != server and (child := cpu_times(pid)):
                result["image processes"] += child[0]
                result["image faults"] += child[2]
    return result


def run_batch(backends: Backends, request_id: str, urls: list[str], keep: bool) -> dict:
    store = backends.store
    items = [WorkItem(url, f"r{i // 10 + 1}-p{i % 10 + 1}") for i, url in enumerate(urls)]
    store.mark_processing(request_id, urls)
    # As `compress_batch` makes it (imgpipe.processing.reuse_for): what earlier requests left, unless `fresh`.
    reuse = reuse_for(backends, store.get_request(request_id), items) if keep else None
    runner = BatchRunner(backends.settings, backends.storage, request_id, reuse)
    report_ms = []

    def report(done):  # this thread's CPU only (the others go on meanwhile)
        started = time.thread_time()
        store.record_results(request_id, done, POLICY_VERSION)
        report_ms.append(time.thread_time() - started)

    before, started = process_cpu(), time.perf_counter()
    results = runner.run(items, report=report)
    seconds = time.perf_counter() - started
    after = process_cpu()
    failed = [r.error for r in results if r.status != ImageStatus.COMPRESSED]
    if failed:
        raise RuntimeError(f"{len(failed)} failed: {failed[:3]}")
    n = len(urls)
    delta = {k: after[k] - before[k] for k in after}
    return {"images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
            "cpu_ms": {k: round(1000 * delta[k] / n, 2) for k in ("step process", "fork server", "image processes")},
            "cpu_ms_total": round(1000 * sum(delta[k] for k in ("step process", "fork server", "image processes")) / n, 2),
            "minor_faults_per_image": {k: round(delta[k] / n) for k in ("step faults", "server faults", "image faults")},
            "status_writes_ms": round(1000 * sum(report_ms) / n, 2), "reports": len(report_ms)}


def parts(urls: list[str], datas: list[bytes], home: Path) -> dict:
    """Each part alone, in this process, CPU ms per image."""
    n = len(datas)
    out = {}
    out["policy in-process (compress_image)"] = per_image_ms(lambda: [compress_image(d, **LIMITS) for d in datas], n)
    with mock.patch.multiple(image_policy, _thumbnail=lambda image: b"",
                             _thumbnail_of_encoded=lambda encoded, fallback: b""):
        out["policy without the two thumbnails"] = per_image_ms(lambda: [compress_image(d, **LIMITS) for d in datas], n)
    out["thumbnails (difference)"] = round(out["policy in-process (compress_image)"]
                                           - out["policy without the two thumbnails"], 2)
    settings = Settings.from_env({"IMGPIPE_HOME": str(home), "IMGPIPE_ALLOW_PRIVATE_HOSTS": "127.0.0.1"})
    allow, limits, hosts = AllowList.parse(settings.allow_private_hosts), FetchLimits.from_settings(settings), \
        HostSlots(settings.per_host_connections)

    def imgpipe_fetch():
        with ThreadPoolExecutor(8) as threads:
            list(threads.map(lambda u: fetch(u, allow=allow, limits=limits, hosts=hosts,
                                             deadline=time.monotonic() + 60), urls))

    def plain_requests():
        session = requests.Session()
        for url in urls:
            session.get(url, timeout=30).content

    out["download, imgpipe fetcher (8 threads)"] = per_image_ms(imgpipe_fetch, n)
    out["download, plain requests.Session (the baseline's)"] = per_image_ms(plain_requests, n)
    out["SHA-256 of the input"] = per_image_ms(lambda: [hashlib.sha256(d).hexdigest() for d in datas], n)
    images = [compress_image(d, **LIMITS) for d in datas[:100]]
    storage = LocalStorage(home, settings.public_base_url)

    def fresh_writes():
        for i, image in enumerate(images):
            storage.write_image("rw", f"i{i}{image.extension}", image.data)
            storage.write_thumbnails("rw", f"i{i}", image.thumbnail_before, image.thumbnail_after)

    def kept_writes():
        for i, image in enumerate(images):
            sha = hashlib.sha256(datas[i]).hexdigest()
            storage.keep_content(POLICY_VERSION, sha, image.extension, image.data, image.thumbnail_before,
                                 image.thumbnail_after)
            storage.link_content(POLICY_VERSION, sha, image.extension, "rk", f"i{i}")

    out["storage, fresh image (3 files)"] = per_image_ms(fresh_writes, len(images))
    out["storage, kept image (3 files by content + 3 hard links)"] = per_image_ms(kept_writes, len(images))
    # Status writes: groups as the batch reports them, about once a second (some tens of images each).
    store = setup_request(home / "status", "rs", urls).store
    results = [ImageResult(url, ImageStatus.COMPRESSED, output_path=f"/x/{i}.jpg", output_url=f"http://x/{i}.jpg",
                           bytes_in=180_000, bytes_out=90_000, quality_in=80, quality_out=40, format_out="JPEG",
                           input_sha256=f"{i:064x}", download_seconds=0.01, compress_seconds=0.02,
                           etag=None, last_modified="Mon, 01 Dec 2026 00:00:00 GMT", validated_url=url,
                           kept_extension=".jpg") for i, url in enumerate(urls)]
    out["reuse lookup by SHA-256 (content_output: a DuckDB session)"] = per_image_ms(
        lambda: [store.content_output(hashlib.sha256(d).hexdigest(), POLICY_VERSION) for d in datas[:50]], 50)
    out["status writes (record_results, 50 a group)"] = per_image_ms(
        lambda: [store.record_results("rs", results[i:i + 50], POLICY_VERSION) for i in range(0, n, 50)], n)
    return out


# ---------------------------------------------------------------- profilers

def perf_stat(pid_list: list[int], seconds_hint: float, out: Path):
    """`perf stat` of the given processes (and, by inheritance, their children forked later) until stopped."""
    if not shutil.which("perf"):
        return None
    events = "task-clock,page-faults,minor-faults,major-faults,context-switches,cpu-migrations"
    return subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-o", str(out), "-p",
                             ",".join(map(str, pid_list))], stderr=subprocess.DEVNULL)


def parse_perf(path: Path) -> dict:
    values = {}
    for line in path.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 3 and fields[2] and not line.startswith("#"):
            try:
                values[fields[2]] = float(fields[0])
            except ValueError:
                values[fields[2]] = fields[0]
    return values


CATEGORIES = [  # (part, pattern in a frame "function (file:line)"); the first that a stack holds counts it
    ("reuse lookup by SHA-256 (a DuckDB session per new image)", r"content_output|find_output|kept_content"),
    ("status writes (DuckDB: record_results, mark_processing)", r"status/(store|image_rows)\.py|duckdb"),
    ("storage writes and links", r"imgpipe/storage/|imgpipe/files\.py"),
    ("SHA-256", r"hashlib|hexdigest|\(batch\.py:\d+\).*sha256|sha256"),
    ("compressor client (pickle, pipe, answers)", r"images/(compressor|fork_server_protocol)\.py"),
    ("download: SSRF checks and DNS", r"url_safety\.py|getaddrinfo"),
    ("download: HTTP (fetcher, urllib3, http.client, sockets)", r"imgpipe/net/|urllib3|http/client\.py|socket\.py|ssl\.py"),
    ("thread pool and waiting", r"concurrent/futures|threading\.py"),
]


def categorize(raw: Path) -> dict:
    """py-spy's raw output (collapsed stacks: 'frame;frame;... count') by part."""
    counts: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for name, pattern in CATEGORIES:
            if re.search(pattern, stack):
                counts[name] += int(count)
                break
        else:
            counts["other"] += int(count)
    return {"samples": total, **{k: round(100 * v / total, 1) for k, v in counts.most_common()}}


def strace_counts(out: Path, images: int) -> dict:
    """Calls per image by syscall, from `strace -c`'s table."""
    counts = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and not line.startswith("100.00"):
            name = fields[-1]
            calls = int(fields[3])
            counts[name] = round(calls / images, 2)
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:15])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--corpus", default="photo")
    parser.add_argument("--label", default="now")
    parser.add_argument("--isolation", default="process")
    parser.add_argument("--no-profilers", action="store_true")
    parser.add_argument("--skip-parts", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each whole batch (the one of least CPU is kept)")
    args = parser.parse_args()
    os.environ["IMGPIPE_ISOLATION"] = args.isolation
    folder = ensure_images(args.corpus, args.images)
    datas = [(folder / f"{i:05d}.jpg").read_bytes() for i in range(args.images)]
    result = {"label": args.label, "images": args.images, "corpus": args.corpus, "isolation": args.isolation,
              "load_1min": [os.getloadavg()[0]]}
    try:
        with ImageServer({"i": folder}) as server, \
                tempfile.TemporaryDirectory(dir=RESULTS, prefix="breakdown-") as tmp:
            tmp = Path(tmp)
            urls = server.urls("i", args.images)
            if not args.skip_parts:
                result["parts_ms"] = parts(urls, datas, tmp / "parts")
                print(json.dumps(result["parts_ms"], indent=1), flush=True)
            # Warm the fork server up, then the whole batch, twice (fresh requests: nothing to reuse yet).
            backends = setup_request(tmp / "home", "warm", urls[:8])
            run_batch(backends, "warm", urls[:8], keep=True)
            for keep, name in ((True, "batch"), (False, "batch_fresh")):
                batches = []
                for attempt in range(args.repeat):
                    home = tmp / f"home-{name}-{attempt}"
                    backends = setup_request(home, f"b{attempt}", urls)
                    batches.append({"load_1min": os.getloadavg()[0],
                                    **run_batch(backends, f"b{attempt}", urls, keep=keep)})
                    print(name, json.dumps(batches[-1]), flush=True)
                    shutil.rmtree(home, ignore_errors=True)
                result[name] = min(batches, key=lambda b: b["cpu_ms_total"])
                result[name + "_runs"] = batches
            if not args.no_profilers:
                result["profilers"] = profile(tmp, urls, args.label)
    finally:
        compressor._client.close()
    result["load_1min"].append(os.getloadavg()[0])
    out = RESULTS / f"breakdown-{args.label}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_runs")}, indent=1))
    print(f"written {out}")


def strace_batch(tmp: Path, request_id: str, pid: int, urls: list[str]) -> dict:
    """System calls per image of process `pid` (and its children) while a batch of `urls` runs."""
    backends = setup_request(tmp / f"strace-{request_id}", request_id, urls)
    out = tmp / f"strace-{request_id}.txt"
    proc = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(1)
    run_batch(backends, request_id, urls, keep=True)
    proc.send_signal(signal.SIGINT)
    proc.wait()
    return strace_counts(out, len(urls))


def profile(tmp: Path, urls: list[str], label: str) -> dict:
    found = {}
    n = len(urls)
    # perf stat over this process and the fork server (children inherit the counters).
    backends = setup_request(tmp / "perf", "p", urls)
    perf_out = tmp / "perf.txt"
    perf = perf_stat([os.getpid(), *server_pids()], 0, perf_out)
    if perf:
        time.sleep(0.5)
        batch = run_batch(backends, "p", urls, keep=True)
        perf.send_signal(signal.SIGINT)
        perf.wait()
        values = parse_perf(perf_out)
        found["perf_stat"] = {"per_image": {k: round(v / n, 2) if isinstance(v, float) else v
                                            for k, v in values.items()}, "batch": batch}
    # strace -c of the fork server and its children.
    if shutil.which("strace") and server_pids():
        found["strace_fork_server_and_children_calls_per_image"] = strace_batch(tmp, "s", server_pids()[0], urls[:150])
        # and of the step process (this one), its threads
        found["strace_step_process_calls_per_image"] = strace_batch(tmp, "s2", os.getpid(), urls[:150])
    py_spy = Path(sys.executable).parent / "py-spy"
    if py_spy.exists():
        backends = setup_request(tmp / "pyspy", "y", urls)
        raw = tmp / "pyspy.txt"
        proc = subprocess.Popen([str(py_spy), "record", "--pid", str(os.getpid()), "--format", "raw", "--rate", "250",
                                 "--nonblocking", "--threads", "-o", str(raw)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        run_batch(backends, "y", urls, keep=True)
        proc.send_signal(signal.SIGINT)
        proc.wait()
        if raw.exists():
            found["py_spy_step_process_percent_of_on_cpu_samples"] = categorize(raw)
            shutil.copy(raw, RESULTS / f"breakdown-{label}-pyspy-raw.txt")
    return found


if __name__ == "__main__":
    main()
