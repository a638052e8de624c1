"""Throughput benchmark: imgpipe end to end against a warm process pool doing the same image work.

    .venv/bin/python bench/run_bench.py [--sizes 500,2000] [--quick]

Generates photo-like JPEGs once (cached in bench-results/images-<N>/), serves them from 127.0.0.1, then times
1. the baseline: a persistent pool of one process per core that downloads each image and re-encodes it with
   imgpipe's own policy (`compress_image`), writing the output files and nothing else;
2. imgpipe: a real `dagster-daemon` with a fresh IMGPIPE_HOME and DAGSTER_HOME, one CSV dropped into the inbox
   per size, timed from the drop to the request's terminal status (end to end) and from the Dagster run's
   start to its end (the run alone).
A one-image request and two sizes tell fixed cost from marginal throughput: (n2 - n1) / (t2 - t1). Each size
runs through the baseline and then through imgpipe, so that load from elsewhere on the machine hits both alike.
Peak memory is the sum of VmRSS (and of PSS, which does not count pages shared after fork twice) over the
daemon's process tree, or the pool's workers, sampled every 0.2 s. Everything is printed and written to
bench-results/bench.json.
"""
from __future__ import annotations

import argparse
import csv
import functools
import http.server
import io
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
import requests
from PIL import Image, ImageDraw

from imgpipe.images.image_policy import compress_image
from imgpipe.settings import Settings, load_settings
from imgpipe.status.duckdb_store import DuckDBStatusStore

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench-results"
BIN = Path(sys.executable).parent
CPUS = os.cpu_count() or 2
TERMINAL = {"completed", "completed_with_errors", "failed"}
# 1 s unless IMGPIPE_SENSOR_INTERVAL says otherwise; Dagster's sensor daemon loops every 5 s in any case.
SENSOR_INTERVAL = int(os.environ.get("IMGPIPE_SENSOR_INTERVAL") or 1)
WIDTH, HEIGHT = 1600, 1200
URLS_PER_PRODUCT = 10


# ---------------------------------------------------------------- images and their server

def make_image(path: Path, seed: int) -> None:
    """A gradient, a dozen flat shapes and per-pixel noise: JPEG-compresses roughly like a photo."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, WIDTH, dtype=np.float32)[None, :, None]
    base, slope_x, slope_y = rng.uniform(-128, 255, (3, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(base + slope_x * x + slope_y * y, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, x1 = sorted(rng.integers(0, WIDTH, 2))
        y0, y1 = sorted(rng.integers(0, HEIGHT, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (HEIGHT, WIDTH, 3), dtype=np.int16)
    quality = 40 + (seed * 37) % 56  # spread over 40..95
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=quality)


def ensure_images(count: int) -> Path:
    folder = RESULTS / f"images-{count}"
    done = folder / ".complete"
    if not done.exists():
        print(f"generating {count} images of {WIDTH}x{HEIGHT} in {folder} (once)", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        with multiprocessing.Pool(CPUS) as pool:
            pool.starmap(make_image, [(folder / f"{i:05d}.jpg", i) for i in range(count)], chunksize=8)
        done.touch()
    return folder


class ImageServer:
    """The image folder over HTTP on 127.0.0.1, in a thread of this process."""

    def __init__(self, folder: Path):
        class QuietHandler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def urls(self, count: int) -> list[str]:
        return [f"{self.base}/{i:05d}.jpg" for i in range(count)]

    def __enter__(self) -> "ImageServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- memory of a process tree

def _tree(root: int) -> dict[int, int]:
    """`root` and all its descendants, each with its parent."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = {root: 0}, [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            tree[child] = pid
            todo.append(child)
    return tree


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:  # the process ended meanwhile
        pass
    return 0


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        args = [""]
    if not args[0]:
        return "(ended)"
    return " ".join([Path(args[0]).name, *args[1:6]])[:80]


class TreeMemory:
    """Samples the summed VmRSS and PSS of `processes()` ({pid: parent pid}) every 0.2 s; keeps the peaks and
    the processes at the RSS peak."""

    def __init__(self, processes: Callable[[], dict[int, int]]):
        self.processes = processes
        self._lock = threading.Lock()
        self._reset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _reset(self) -> None:
        self.peak_rss = self.peak_pss = 0
        self.at_peak: list[dict] = []

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def _sample(self) -> None:
        tree = self.processes()
        usage = {pid: (_kib(f"/proc/{pid}/status", "VmRSS:"), _kib(f"/proc/{pid}/smaps_rollup", "Pss:"))
                 for pid in tree}
        rss, pss = (sum(u[i] for u in usage.values()) for i in (0, 1))
        with self._lock:
            self.peak_pss = max(self.peak_pss, pss)
            if rss > self.peak_rss:
                self.peak_rss = rss
                self.at_peak = [{"pid": pid, "ppid": tree[pid], "command": _command(pid), "rss_mib": r // 1024,
                                 "pss_mib": p // 1024} for pid, (r, p) in usage.items() if r]

    def take_peaks(self) -> dict:
        """The peaks since the last call (at least the present use), in MiB."""
        self._sample()
        with self._lock:
            peaks = {"peak_rss_mib": round(self.peak_rss / 1024), "peak_pss_mib": round(self.peak_pss / 1024),
                     "processes_at_peak": self.at_peak}
            self._reset()
        return peaks

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- the baseline

def _start_worker() -> None:
    global _session, _limits
    _session, _limits = requests.Session(), Settings()


def _download_and_compress(url: str, out_path: str) -> int:
    response = _session.get(url, timeout=30)
    response.raise_for_status()
    image = compress_image(response.content, max_pixels=_limits.max_pixels, max_frames=_limits.max_frames)
    Path(out_path).write_bytes(image.data)
    return len(image.data)


def time_baseline(pool, urls: list[str], out: Path) -> dict:
    out.mkdir()
    started = time.perf_counter()
    pool.starmap(_download_and_compress, [(url, str(out / f"{i:05d}.jpg")) for i, url in enumerate(urls)],
                 chunksize=1)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "images_per_s": round(len(urls) / seconds, 1)}


# ---------------------------------------------------------------- imgpipe under a real daemon

def _utc_epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


class Daemon:
    """`dagster-daemon run` on a fresh IMGPIPE_HOME and DAGSTER_HOME, in a process group of its own.

    Dagster is imported only here, so that the baseline's forked workers do not carry it."""

    def __init__(self, work: Path):
        self.home, self.dagster_home = work / "imgpipe_home", work / "dagster_home"
        self.dagster_home.mkdir(parents=True)
        shutil.copy(REPO / "dagster.yaml", self.dagster_home / "dagster.yaml")
        self.inbox = self.home / "inbox"
        self.store = DuckDBStatusStore(self.home / "imgpipe.duckdb")
        self.log = RESULTS / "daemon.log"
        # Other IMGPIPE_* settings (IMGPIPE_EXECUTOR, IMGPIPE_COMPRESS_WORKERS, ...) pass through.
        self.env = {**os.environ, "IMGPIPE_HOME": str(self.home), "DAGSTER_HOME": str(self.dagster_home),
                    "IMGPIPE_ALLOW_PRIVATE_HOSTS": "127.0.0.1", "IMGPIPE_SENSOR_INTERVAL": str(SENSOR_INTERVAL)}

    def __enter__(self) -> "Daemon":
        from dagster import DagsterInstance
        # The instance's SQLite files first: two processes creating them at once can both stamp the schema
        # (alembic then finds two heads and the code location fails to load).
        self.instance = DagsterInstance.from_config(str(self.dagster_home))
        self.proc = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=REPO,
                                     env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def __exit__(self, *exc) -> None:
        self.instance.dispose()
        tree = _tree(self.proc.pid)
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        for pid in tree:  # also any descendant that left the group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def drop(self, name: str, urls: list[str]) -> float:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
        for row, start in enumerate(range(0, len(urls), URLS_PER_PRODUCT), 1):
            writer.writerow([row, f"Product {row}", ", ".join(urls[start:start + URLS_PER_PRODUCT])])
        self.inbox.mkdir(parents=True, exist_ok=True)
        temporary = self.inbox / f".{name}.tmp"
        temporary.write_text(out.getvalue())
        os.replace(temporary, self.inbox / name)
        return time.time()

    def wait(self, what: str, get, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited; see {self.log}")
            if found := get():
                return found
            time.sleep(0.5)
        raise TimeoutError(f"{what} not within {timeout:.0f} s; see {self.log}")

    def process(self, name: str, urls: list[str], timeout: float) -> dict:
        """Drop a CSV of `urls`, wait for the terminal status and the end of the run, and measure both."""
        from dagster import RunsFilter
        dropped = self.drop(name, urls)
        request = self.wait(f"terminal status of {name}", lambda: (
            (r := self.store.latest_request_for_file(name)) and r.status in TERMINAL and r), timeout)
        request_id = request.request_id
        if request.status != "completed":  # every benchmark image is valid: anything else is a fault
            raise RuntimeError(f"request {request_id} ended {request.status}: {request.error}")
        record = self.wait(f"end of the run of {request_id}", lambda: next(
            (r for r in self.instance.get_run_records(RunsFilter(tags={"dagster/partition": request_id}))
             if r.end_time), None), 60)
        created, terminal = _utc_epoch(request.created_at), _utc_epoch(request.completed_at)
        return {
            "request_id": request_id,
            "status": request.status,
            "counts": self.store.counts(request_id),
            "end_to_end_s": round(terminal - dropped, 3),
            "drop_to_request_s": round(created - dropped, 3),
            "request_to_run_start_s": round(record.start_time - created, 3),
            "run_s": round(record.end_time - record.start_time, 3),
            "run_launch_to_end_s": round(record.end_time - _utc_epoch(record.create_timestamp), 3),
            **self.timeline(record),
        }

    def timeline(self, record) -> dict:
        """Steps of the run from its event log: launch (worker starting -> step start) and work of each."""
        from dagster import DagsterEventType as T
        marks: dict[str, dict[T, float]] = {}
        created = dequeued = _utc_epoch(record.create_timestamp)
        for entry in self.instance.all_logs(record.dagster_run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.step_key:
                marks.setdefault(event.step_key, {}).setdefault(event.event_type, entry.timestamp)
            elif event.event_type == T.RUN_DEQUEUED:
                dequeued = entry.timestamp
        start = record.start_time
        steps = []
        for key, m in marks.items():
            if T.STEP_START not in m:
                continue
            launched = m.get(T.STEP_WORKER_STARTING, m[T.STEP_START])
            ended = m.get(T.STEP_SUCCESS, m.get(T.STEP_FAILURE, record.end_time))
            steps.append({"step": key, "launched_at_s": round(launched - start, 3),
                          "launch_s": round(m[T.STEP_START] - launched, 3),
                          "work_s": round(ended - m[T.STEP_START], 3), "ended_at_s": round(ended - start, 3)})
        steps.sort(key=lambda s: s["launched_at_s"])
        compress = [s for s in steps if ".compress_batch[" in s["step"]]
        return {
            "steps": len(steps),
            "run_phases_s": {"queued": round(dequeued - created, 3),
                             "worker_start": round(start - dequeued, 3),
                             "first_step_launch": steps[0]["launched_at_s"],
                             "after_last_step": round(record.end_time - start - max(s["ended_at_s"] for s in steps), 3)},
            "compress_window_s": round(max(s["ended_at_s"] for s in compress)
                                       - min(s["launched_at_s"] for s in compress), 3),
            "step_timeline": steps,
        }


def run_all(pool, workers: dict[int, int], urls: list[str], counts: list[int], work: Path) -> tuple[dict, dict]:
    baseline, imgpipe = {}, {}
    with (Daemon(work) as daemon, TreeMemory(lambda: workers) as pool_memory,
          TreeMemory(functools.partial(_tree, daemon.proc.pid)) as daemon_memory):
        print("warming up the pool, and the daemon with a one-image request", flush=True)
        time_baseline(pool, urls[:CPUS], work / "warm-up")
        daemon.process("warm-up.csv", urls[:1], timeout=300)
        for count in counts:
            pool_memory.take_peaks()
            baseline[count] = {**time_baseline(pool, urls[:count], work / f"baseline-{count}"),
                               **pool_memory.take_peaks(), "load_1min": os.getloadavg()[0]}
            daemon_memory.take_peaks()
            imgpipe[count] = {**daemon.process(f"bench-{count}.csv", urls[:count], timeout=120 + count),
                              **daemon_memory.take_peaks(), "load_1min": os.getloadavg()[0]}
            print(f"{count:>5} images: baseline {baseline[count]['seconds']:.2f} s, imgpipe "
                  f"{imgpipe[count]['end_to_end_s']:.2f} s end to end, {imgpipe[count]['run_s']:.2f} s run, "
                  f"{imgpipe[count]['status']}", flush=True)
    return baseline, imgpipe


# ---------------------------------------------------------------- report

def marginal(runs: dict, key: str, low: int, high: int) -> float:
    return round((high - low) / (runs[high][key] - runs[low][key]), 1)


def report(sizes: list[int], baseline: dict, imgpipe: dict) -> dict:
    low, high = sizes[0], sizes[-1]
    counts = [1, *sizes]
    base_marginal = marginal(baseline, "seconds", low, high)
    e2e_marginal = marginal(imgpipe, "end_to_end_s", low, high)
    run_marginal = marginal(imgpipe, "run_s", low, high)
    columns = [  # title, value of (images, baseline run, imgpipe run)
        ("images", lambda n, b, i: n),
        ("pool s", lambda n, b, i: b["seconds"]),
        ("pool img/s", lambda n, b, i: b["images_per_s"]),
        ("e2e s", lambda n, b, i: i["end_to_end_s"]),
        ("e2e img/s", lambda n, b, i: n / i["end_to_end_s"]),
        ("e2e ratio", lambda n, b, i: b["seconds"] / i["end_to_end_s"]),
        ("run s", lambda n, b, i: i["run_s"]),
        ("run img/s", lambda n, b, i: n / i["run_s"]),
        ("run ratio", lambda n, b, i: b["seconds"] / i["run_s"]),
        ("compress img/s", lambda n, b, i: n / i["compress_window_s"]),
        ("drop>req s", lambda n, b, i: i["drop_to_request_s"]),
        ("req>run s", lambda n, b, i: i["request_to_run_start_s"]),
        ("steps", lambda n, b, i: i["steps"]),
        ("pool RSS MiB", lambda n, b, i: b["peak_rss_mib"]),
        ("tree RSS MiB", lambda n, b, i: i["peak_rss_mib"]),
        ("tree PSS MiB", lambda n, b, i: i["peak_pss_mib"]),
        ("load 1 min", lambda n, b, i: i["load_1min"]),
    ]
    print("\npool = the baseline; e2e = imgpipe from the folder drop to the terminal status; run = the Dagster"
          "\nrun alone; ratio = imgpipe img/s over the pool's; compress = from the launch of the first compress_batch"
          "\nstep to the end of the last")
    print(" | ".join(title for title, _ in columns))
    for n in counts:
        cells = (value(n, baseline[n], imgpipe[n]) for _, value in columns)
        print(" | ".join(f"{c:>{len(t)}.2f}" if isinstance(c, float) else f"{c:>{len(t)}}"
                         for (t, _), c in zip(columns, cells)))
    print(f"marginal images/s ({low}->{high}): baseline {base_marginal}, imgpipe end to end {e2e_marginal} "
          f"(ratio {e2e_marginal / base_marginal:.2f}), imgpipe run {run_marginal} "
          f"(ratio {run_marginal / base_marginal:.2f})")
    print(f"fixed cost (intercept at 0 images): baseline {baseline[low]['seconds'] - low / base_marginal:.2f} s, "
          f"imgpipe end to end {imgpipe[low]['end_to_end_s'] - low / e2e_marginal:.2f} s, "
          f"run {imgpipe[low]['run_s'] - low / run_marginal:.2f} s")
    for n in (1, high):
        print(f"\nimgpipe {n} image(s): run phases {imgpipe[n]['run_phases_s']}")
        for step in imgpipe[n]["step_timeline"]:
            print(f"  {step['step']:<32} launched at {step['launched_at_s']:6.2f} s, launch {step['launch_s']:5.2f} s, "
                  f"work {step['work_s']:6.2f} s")
    one = imgpipe[1]
    targets = {
        "marginal_ratio_at_least_0.6": round(e2e_marginal / base_marginal, 2),
        "one_image_run_launch_to_end_at_most_5s": one["run_launch_to_end_s"],
        "one_image_run_start_to_end_at_most_5s": one["run_s"],
        f"one_image_drop_to_terminal_at_most_{SENSOR_INTERVAL + 5}s": one["end_to_end_s"],
        f"peak_tree_rss_mib_at_{high}_at_most_1024": imgpipe[high]["peak_rss_mib"],
        f"steps_per_run_at_{high}_at_most_{4 * CPUS}_plus_a_few": imgpipe[high]["steps"],
    }
    print(f"\nimgpipe {high} images, processes at the RSS peak (pid<ppid, RSS / PSS MiB):")
    for proc in sorted(imgpipe[high]["processes_at_peak"], key=lambda p: -p["rss_mib"]):
        print(f"  {proc['pid']:>7}<{proc['ppid']:<7} {proc['rss_mib']:>5} / {proc['pss_mib']:>4}  {proc['command']}")
    print("\ntargets:", json.dumps(targets, indent=1))
    return {"base_marginal": base_marginal, "e2e_marginal": e2e_marginal, "run_marginal": run_marginal,
            "targets": targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="500,2000", help="two or more image counts, comma-separated")
    parser.add_argument("--quick", action="store_true", help="sizes 50 and 200")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in ("50,200" if args.quick else args.sizes).split(","))
    settings = load_settings()
    print(f"imgpipe executor {settings.executor}, {settings.compress_slots} compress workers; sizes {sizes}")
    RESULTS.mkdir(exist_ok=True)
    load_at_start = os.getloadavg()
    folder = ensure_images(sizes[-1])
    pool = multiprocessing.Pool(CPUS, initializer=_start_worker)  # forked before any thread of ours starts
    workers = {child.pid: os.getpid() for child in multiprocessing.active_children()}
    # From here on `kill` also stops the daemon. Not before: pool workers must keep the default handler.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with pool, tempfile.TemporaryDirectory(dir=RESULTS, prefix="work-") as tmp, ImageServer(folder) as server:
        baseline, imgpipe = run_all(pool, workers, server.urls(sizes[-1]), [1, *sizes], Path(tmp))
    summary = report(sizes, baseline, imgpipe)
    result = {
        "machine": {"cpus": CPUS, "python": platform.python_version(), "loadavg_at_start": load_at_start,
                    "loadavg_at_end": os.getloadavg(),
                    **{p: version(p) for p in ("dagster", "pillow", "duckdb")}},
        "image": {"width": WIDTH, "height": HEIGHT, "quality_range": [40, 95]},
        "sizes": sizes,
        "baseline": {"workers": CPUS, "runs": baseline, "marginal_images_per_s": summary["base_marginal"]},
        "imgpipe": {"sensor_interval_s": SENSOR_INTERVAL, "executor": settings.executor,
                    "compress_workers": settings.compress_slots, "download_threads": settings.download_threads,
                    "runs": imgpipe,
                    "marginal_images_per_s_end_to_end": summary["e2e_marginal"],
                    "marginal_images_per_s_run": summary["run_marginal"]},
        "targets": summary["targets"],
    }
    out = RESULTS / "bench.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nload average (1, 5, 15 min) at start {load_at_start}, at end {os.getloadavg()}; written {out}")


if __name__ == "__main__":
    main()
