"""Throughput benchmark: imgpipe end to end against a warm process pool doing the same image work.

    .venv/bin/python bench/run_bench.py [--corpus photo,synthetic] [--isolation process,pool] [--sizes 500,2000]
                                        [--repeat 2] [--quick] [--reuse 500] [--many 40] [--huge]

For each corpus (`bench/corpus.py`: real photographs, and the synthetic noise-heavy images) and each isolation
mode (IMGPIPE_ISOLATION), it serves the images from 127.0.0.1 and times, size by size and `--repeat` times:
1. the baseline: a persistent pool of one process per core that downloads each image and does the codec's work
   alone (decode, a Huffman-optimised encode at half the estimated quality, as bench/codec_floor.py's floor),
   writing the output file and nothing else: the physical limit of the job; with `--baseline policy`, imgpipe's
   own policy instead (`compress_image`, thumbnails included);
2. imgpipe: a real `dagster-daemon` with a fresh IMGPIPE_HOME and DAGSTER_HOME, one CSV dropped into the inbox
   per size, timed from the drop to the request's terminal status (end to end) and from the Dagster run's start
   to its end (the run alone). Every run's images are new to imgpipe by URL and by content (a JPEG comment of
   its own, which imgpipe drops), so that no run reuses another's outputs: the path of any new upload, reuse
   lookups included. `--fresh` adds a `fresh` sidecar instead (reuse skipped altogether), for comparison.
Each size runs through the baseline and then through imgpipe, so that load from elsewhere hits both alike. The
marginal throughput, (n2 - n1) / (t2 - t1) over the medians of the repeats, is what a sceptic measures: it leaves
out fixed costs (the sensor's pick-up, the run's start) that a larger request does not pay again. It is given
from the drop, and from the request's creation (the same without the sensor's 0-5 s pick-up jitter).

CPU: user + system seconds of the daemon's whole tree per kind of process (daemon, code servers, run worker,
fork server, image processes), and of the pool's workers, for each timed request: CPU per image beside
throughput. Memory: peak summed RSS of the tree, sampled every 0.2 s, and PSS, every 1 s (see procstat).

`--reuse N`: the same N-image catalogue uploaded twice (no `fresh`), `--repeat` times with catalogues of their own: the
second comes from 304s and kept outputs; each pair's speed-ups and their medians.
`--many N`: N requests of 5 images (the first corpus) dropped together against one request of the same 5N (each `fresh`), and
the fixed cost of a one-image request: what many small sellers cost over one big upload.
`--huge`: requests of 2,000 and 20,000 small images (800x600 photographs, four per product) with the REST API
running beside the daemon, polled all along (`GET /requests/{id}?view=summary` and pages of 100 products):
per-image cost ratio, peak tree RSS, the worst status answer, and the code servers started meanwhile.
`--lifecycle N` (bench/lifecycle.py): N one-image requests through the REST API and N through the inbox, each timed
to its signed webhook, and the `--reuse` catalogue POSTed twice, timed from the POST.
`--renditions N` (bench/renditions.py): the WebP and AVIF quality calibration on N photographs per JPEG quality,
their bytes and SSIMULACRA2 against the JPEG of the same width, and the CPU of an image with renditions.

Everything is printed and written to bench-results/bench.json (bench-results/huge.json for --huge).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from codec_floor import codec_floor  # noqa: E402
from corpus import CORPORA, CPUS, RESULTS, SMALL, SMALL_FILES, ImageServer, corpus_stats, ensure_images  # noqa: E402
from procstat import TreeMonitor, own_cpu_seconds  # noqa: E402

from imgpipe.images.image_policy import compress_image  # noqa: E402
from imgpipe.settings import Settings, load_settings  # noqa: E402
from daemon import SENSOR_INTERVAL, TERMINAL, Daemon, load, utc_epoch  # noqa: E402
import lifecycle  # noqa: E402
import renditions as renditions_bench  # noqa: E402

HUGE_URLS_PER_PRODUCT = 4


# ---------------------------------------------------------------- the baseline

def _start_worker() -> None:
    global _session, _limits
    _session, _limits = requests.Session(), Settings()


def _policy_output(data: bytes) -> bytes:
    return compress_image(data, max_pixels=_limits.max_pixels, max_frames=_limits.max_frames).data


# The pool's work on each image's bytes, by --baseline: imgpipe's policy, or the codec alone.
BASELINES = {"policy": _policy_output, "codec": codec_floor}


def _download_and_write(baseline: str, url: str, out_path: str) -> int:
    response = _session.get(url, timeout=30)
    response.raise_for_status()
    data = BASELINES[baseline](response.content)
    Path(out_path).write_bytes(data)
    return len(data)


def time_baseline(pool, workers: list[int], urls: list[str], out: Path, baseline: str) -> dict:
    out.mkdir(parents=True)
    cpu_before, load_before = own_cpu_seconds(workers), load()
    started = time.perf_counter()
    pool.starmap(_download_and_write, [(baseline, url, str(out / f"{i:05d}.jpg")) for i, url in enumerate(urls)],
                 chunksize=1)
    seconds = time.perf_counter() - started
    cpu = own_cpu_seconds(workers) - cpu_before
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": round(seconds, 3), "images_per_s": round(len(urls) / seconds, 1),
            "cpu_s": round(cpu, 2), "cpu_ms_per_image": round(1000 * cpu / len(urls), 1),
            "load_1min": [load_before, load()]}



# ---------------------------------------------------------------- throughput runs

def run_mode(isolation: str, pool, workers: list[int], server: ImageServer, corpora: list[str], sizes: list[int],
             repeat: int, reuse_count: int, work: Path, fresh: bool, baseline: str) -> dict:
    """Every corpus and size through the pool (doing `baseline`'s work) and through imgpipe under one daemon in
    `isolation` mode."""
    result: dict = {"corpora": {}}
    with Daemon(work / isolation, isolation) as daemon, \
            TreeMonitor(daemon.processes) as monitor:
        print(f"\n== IMGPIPE_ISOLATION={isolation}: warming up the pool, and the daemon with a one-image request",
              flush=True)
        time_baseline(pool, workers, server.urls(corpora[0], CPUS, tag="warm"), work / "warm-up", baseline)
        daemon.process(f"warm-up-{isolation}.csv", server.urls(corpora[0], 1, tag=f"warm-{isolation}"), timeout=300)
        one = daemon.process(f"one-{isolation}.csv", server.urls(corpora[0], 1, tag=f"one-{isolation}"), timeout=300,
                             monitor=monitor)
        result["one_image"] = one
        print(f"one image: {one['end_to_end_s']:.2f} s from the drop, run {one['run_s']:.2f} s", flush=True)
        for corpus in corpora:
            runs: dict[int, dict[str, list]] = {n: {"pool": [], "imgpipe": []} for n in sizes}
            for rep in range(repeat):
                for n in sizes:
                    # Images new to imgpipe by URL and by content (see corpus.ImageServer), so that nothing is
                    # reused from an earlier run, without the `fresh` opt-out: the path of any new upload.
                    urls = server.urls(corpus, n, tag=f"{isolation}-{n}-{rep}")
                    base = time_baseline(pool, workers, urls, work / f"baseline-{corpus}-{n}", baseline)
                    mine = daemon.process(f"{corpus}-{n}-{isolation}-{rep}.csv", urls, timeout=120 + n,
                                          monitor=monitor, fresh=fresh)
                    runs[n]["pool"].append(base)
                    runs[n]["imgpipe"].append(mine)
                    print(f"{corpus:>9} {n:>5} images, run {rep + 1}/{repeat}: pool {base['seconds']:6.2f} s "
                          f"({base['cpu_ms_per_image']:5.1f} ms CPU/img) | imgpipe {mine['end_to_end_s']:6.2f} s "
                          f"from the drop, {mine['created_to_terminal_s']:6.2f} s from the request, run "
                          f"{mine['run_s']:6.2f} s ({mine['cpu_ms_per_image']:5.1f} ms CPU/img) | tree RSS "
                          f"{mine['peak_rss_mib']} MiB | load {base['load_1min'][0]}-{mine['load_1min'][1]}",
                          flush=True)
            result["corpora"][corpus] = {"runs": {str(n): r for n, r in runs.items()},
                                         **summarize(runs, sizes)}
        if reuse_count:
            result["reuse"] = run_reuse(daemon, server, corpora[0], isolation, reuse_count, repeat, monitor)
    return result


# A re-upload's speed-ups over the first upload: (the timing compared, its name in the results).
REUSE_SPEEDUPS = (("run_s", "speedup_run"), ("created_to_terminal_s", "speedup_from_request"),
                  ("end_to_end_s", "speedup_from_drop"))


def run_reuse(daemon: "Daemon", server: ImageServer, corpus: str, isolation: str, count: int, repeat: int,
              monitor: TreeMonitor) -> dict:
    """The same catalogue twice, as a shop's nightly export, `repeat` times with catalogues of their own: the second
    upload comes from 304s and kept outputs. Each pair's speed-ups (the run alone; from the request's creation to
    its terminal status; from the drop), and their medians: one pair varies with what else the machine does."""
    pairs = []
    for rep in range(repeat):
        urls = server.urls(corpus, count, tag=f"reuse-{isolation}-{rep}")
        pair = {}
        for night in ("first", "second"):
            pair[night] = daemon.process(f"reuse-{night}-{isolation}-{rep}.csv", urls, timeout=120 + count,
                                         fresh=False, monitor=monitor)
            print(f"reuse {rep + 1}/{repeat}, {night} upload of {count}: {pair[night]['end_to_end_s']:.2f} s from "
                  f"the drop, {pair[night]['created_to_terminal_s']:.2f} s from the request, run "
                  f"{pair[night]['run_s']:.2f} s, obtained {pair[night]['obtained']}", flush=True)
        for key, label in REUSE_SPEEDUPS:
            pair[label] = round(pair["first"][key] / pair["second"][key], 2)
        print(f"reuse {rep + 1}/{repeat}: second upload {pair['speedup_run']}x faster in the run, "
              f"{pair['speedup_from_request']}x from the request, {pair['speedup_from_drop']}x from the drop",
              flush=True)
        pairs.append(pair)
    medians = {label: statistics.median(p[label] for p in pairs) for _, label in REUSE_SPEEDUPS}
    print(f"reuse, medians of {repeat}: {medians}", flush=True)
    return {"pairs": pairs, "medians": medians}


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarize(runs: dict[int, dict[str, list]], sizes: list[int]) -> dict:
    """Medians per size, and marginal throughput between the smallest and the largest size."""
    low, high = sizes[0], sizes[-1]

    def marginal(side: str, key: str) -> float:
        return round((high - low) / (_median(runs[high][side], key) - _median(runs[low][side], key)), 1)

    pool = marginal("pool", "seconds")
    table = {}
    for n in sizes:
        pool_runs, mine = runs[n]["pool"], runs[n]["imgpipe"]
        cpu_by_kind: dict[str, float] = {}
        for r in mine:
            for k, v in r["cpu_s"].items():
                cpu_by_kind[k] = cpu_by_kind.get(k, 0) + v / len(mine) / n * 1000
        table[n] = {
            "pool_s": _median(pool_runs, "seconds"), "pool_cpu_ms": _median(pool_runs, "cpu_ms_per_image"),
            "e2e_s": _median(mine, "end_to_end_s"), "created_to_terminal_s": _median(mine, "created_to_terminal_s"),
            "run_s": _median(mine, "run_s"), "cpu_ms": _median(mine, "cpu_ms_per_image"),
            "cpu_ms_by_kind": {k: round(v, 1) for k, v in cpu_by_kind.items()},
            "peak_rss_mib": max(r["peak_rss_mib"] for r in mine), "peak_pss_mib": max(r["peak_pss_mib"] for r in mine),
            "load_1min": [min(r["load_1min"][0] for r in pool_runs), max(r["load_1min"][1] for r in mine)],
        }
    e2e, created, run = marginal("imgpipe", "end_to_end_s"), marginal("imgpipe", "created_to_terminal_s"), \
        marginal("imgpipe", "run_s")
    return {"by_size": {str(n): v for n, v in table.items()},
            "cpu_over_pool": round(table[high]["cpu_ms"] / table[high]["pool_cpu_ms"], 2),
            "marginal_images_per_s": {"pool": pool, "from_drop": e2e, "from_request": created, "run": run},
            "marginal_ratio": {"from_drop": round(e2e / pool, 2), "from_request": round(created / pool, 2),
                               "run": round(run / pool, 2)}}


# ---------------------------------------------------------------- many small requests

def run_many_small(server: ImageServer, work: Path, corpus: str, count: int, per_request: int = 5) -> dict:
    """`count` requests of `per_request` images dropped together against one request of all their images (the
    same images, each upload `fresh` so that every one is fetched and encoded), and a one-image request: what a
    marketplace of many small sellers costs over one big upload."""
    urls = server.urls(corpus, count * per_request, tag="many")
    with Daemon(work / "many", "process") as daemon:
        print(f"\n== many small requests: {count} of {per_request} images against one of {len(urls)}", flush=True)
        daemon.process("many-warm-up.csv", server.urls(corpus, 1, tag="many-warm"), timeout=300)
        one = daemon.process("many-one.csv", server.urls(corpus, 1, tag="many-one"), timeout=300, fresh=True)
        big = daemon.process("many-together.csv", urls, timeout=300, fresh=True, per_product=per_request)
        names = [f"many-{i:03d}.csv" for i in range(count)]
        first_drop = time.time()
        for i, name in enumerate(names):
            daemon.drop(name, urls[i * per_request:(i + 1) * per_request], fresh=True, per_product=per_request)

        def all_terminal():
            rows = [daemon.store.latest_request_for_file(name) for name in names]
            return rows if all(r is not None and r.status in TERMINAL for r in rows) else None

        rows = daemon.wait(f"{count} small requests", all_terminal, 600 + 10 * count)
        from dagster import RunsFilter

        from imgpipe.runs.tags import request_tag
        run_ids = {r.dagster_run.run_id for row in rows
                   for r in daemon.instance.get_run_records(RunsFilter(tags={request_tag(row.request_id): "true"}))}
    small_s = max(utc_epoch(r.completed_at) for r in rows) - first_drop
    result = {
        "requests": count, "images_per_request": per_request,
        "one_image_s": {"from_drop": one["end_to_end_s"], "from_request": one["created_to_terminal_s"],
                        "run": one["run_s"]},
        "one_request_s": big["end_to_end_s"],
        "small_requests_s": round(small_s, 2),
        "small_requests_statuses": sorted({r.status for r in rows}),
        "runs_for_small_requests": len(run_ids),
        "ratio": round(small_s / big["end_to_end_s"], 2),
        "load_1min": load(),
    }
    print(f"one request of {len(urls)}: {big['end_to_end_s']:.1f} s from the drop; {count} requests of "
          f"{per_request}: {small_s:.1f} s from the first drop to the last terminal status, in {len(run_ids)} runs "
          f"(ratio {result['ratio']}, goal <= 3); one image: {one['end_to_end_s']:.2f} s from the drop, "
          f"{one['created_to_terminal_s']:.2f} s from the request", flush=True)
    return result


# ---------------------------------------------------------------- the 20,000-image request

def status_probe_urls(api: str, request_id: str, products: int, rng: random.Random) -> list[tuple[str, str]]:
    """The status calls timed while a huge request runs: the summary and one page of 100 products at a random
    offset (contract section 12), or the plain document where the API does not have those parameters yet."""
    if not _api_has_views(api):
        return [("document", f"{api}/requests/{request_id}")]
    offset = rng.randrange(0, max(1, products), 100)
    return [("summary", f"{api}/requests/{request_id}?view=summary"),
            ("page of 100", f"{api}/requests/{request_id}?limit=100&offset={offset}")]


def _api_has_views(api: str) -> bool:
    document = requests.get(f"{api}/openapi.json", timeout=10).json()
    operation = document.get("paths", {}).get("/requests/{request_id}", {}).get("get", {})
    return {"view", "limit", "offset"} <= {p.get("name") for p in operation.get("parameters", [])}


def poll_status(api: str, products: int):
    """`while_running` for `Daemon.process`: the status API polled every 0.25 s; the worst and median answer per
    call, and every full document's time (fetched every 5 s, for comparison only)."""
    def poll(request_id: str, stop: threading.Event) -> dict:
        rng, times, full, errors = random.Random(1), {}, [], []
        next_full = time.monotonic()
        while not stop.is_set():
            for name, url in status_probe_urls(api, request_id, products, rng):
                started = time.perf_counter()
                try:
                    response = requests.get(url, timeout=30)
                    if response.status_code != 200:
                        errors.append(f"{name}: HTTP {response.status_code}")
                except requests.RequestException as exc:
                    errors.append(f"{name}: {exc}")
                times.setdefault(name, []).append(time.perf_counter() - started)
            if time.monotonic() >= next_full:
                started = time.perf_counter()
                requests.get(f"{api}/requests/{request_id}", timeout=60)
                full.append(time.perf_counter() - started)
                next_full = time.monotonic() + 5
            stop.wait(0.25)
        return {"calls": {name: {"count": len(t), "worst_s": round(max(t), 3), "median_s": round(statistics.median(t), 3)}
                          for name, t in times.items()},
                "worst_s": round(max((max(t) for t in times.values()), default=0), 3),
                "full_document": {"count": len(full), "worst_s": round(max(full, default=0), 3)},
                "errors": errors[:10]}
    return poll


def run_huge(server: ImageServer, isolation: str, work: Path, sizes=(2000, 20000)) -> dict:
    result: dict = {"isolation": isolation, "image": f"{SMALL[0]}x{SMALL[1]} photographs", "runs": {}}
    with Daemon(work / f"huge-{isolation}", isolation, api=True) as daemon, \
            TreeMonitor(daemon.processes) as monitor:
        api = daemon.api_url
        print(f"\n== requests of {', '.join(map(str, sizes))} small images, IMGPIPE_ISOLATION={isolation}, "
              f"REST API at {api}", flush=True)
        daemon.process(f"huge-warm-up-{isolation}.csv", server.urls("small", 4, tag="warm"), timeout=300,
                       per_product=HUGE_URLS_PER_PRODUCT)
        code_servers = monitor.seen("code server")
        for n in sizes:
            urls = server.urls("small", n, tag=f"{n}")  # each URL its own bytes: nothing reused
            run = daemon.process(f"huge-{n}-{isolation}.csv", urls, timeout=300 + n / 10, monitor=monitor,
                                 per_product=HUGE_URLS_PER_PRODUCT,
                                 while_running=poll_status(api, n // HUGE_URLS_PER_PRODUCT))
            run["per_image_ms"] = {"from_request": round(1000 * run["created_to_terminal_s"] / n, 2),
                                   "run": round(1000 * run["run_s"] / n, 2),
                                   "compress_window": round(1000 * run["compress_window_s"] / n, 2),
                                   "cpu": run["cpu_ms_per_image"]}
            result["runs"][str(n)] = run
            print(f"{n:>6} images: {run['created_to_terminal_s']:.1f} s from the request, run {run['run_s']:.1f} s, "
                  f"per image {run['per_image_ms']} ms, tree RSS peak {run['peak_rss_mib']} MiB, worst status "
                  f"answer {run['status_api']['worst_s']} s ({run['status_api']['calls']}), full document worst "
                  f"{run['status_api']['full_document']['worst_s']} s, load {run['load_1min']}", flush=True)
        # The daemon serves the code location from the code server started beside it (as the README starts it
        # headless, deploy/code-server-workspace.yaml); any it started meanwhile would be a process seen here.
        result["code_servers"] = {"at_start": len(code_servers),
                                  "started_since": len(monitor.seen("code server") - code_servers)}
    low, high = (result["runs"][str(n)] for n in sizes)
    result["cost_ratio"] = {k: round(high["per_image_ms"][k] / low["per_image_ms"][k], 2) for k in low["per_image_ms"]}
    result["peak_rss_mib"] = high["peak_rss_mib"]
    result["worst_status_s"] = high["status_api"]["worst_s"]
    print(f"cost per image, {sizes[1]} over {sizes[0]}: {result['cost_ratio']} (goal <= 1.25); peak tree RSS "
          f"{result['peak_rss_mib']} MiB (goal <= 1280); worst status answer {result['worst_status_s']} s (goal <= 2); "
          f"code servers {result['code_servers']} (goal: none started since)")
    return result


# ---------------------------------------------------------------- report

def print_table(mode: str, corpus: str, summary: dict, sizes: list[int]) -> None:
    print(f"\n{corpus}, IMGPIPE_ISOLATION={mode} (medians)")
    print("images | pool s | pool CPU ms/img | imgpipe from drop s | from request s | run s | CPU ms/img | tree RSS MiB | load")
    for n in sizes:
        row = summary["by_size"][str(n)]
        print(f"{n:>6} | {row['pool_s']:6.2f} | {row['pool_cpu_ms']:15.1f} | {row['e2e_s']:19.2f} | "
              f"{row['created_to_terminal_s']:14.2f} | {row['run_s']:5.2f} | {row['cpu_ms']:10.1f} | "
              f"{row['peak_rss_mib']:12} | {row['load_1min']}")
        print(f"         CPU ms per image by process: {row['cpu_ms_by_kind']}")
    m, r = summary["marginal_images_per_s"], summary["marginal_ratio"]
    print(f"marginal img/s ({sizes[0]}->{sizes[-1]}): pool {m['pool']}; imgpipe from the drop {m['from_drop']} "
          f"(ratio {r['from_drop']}), from the request {m['from_request']} (ratio {r['from_request']}), run "
          f"{m['run']} (ratio {r['run']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=",".join(CORPORA), help="photo, synthetic, or both (comma-separated)")
    parser.add_argument("--isolation", default="process,pool", help="IMGPIPE_ISOLATION modes to run (comma-separated)")
    parser.add_argument("--sizes", default="500,2000", help="two or more image counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each size (the medians are reported)")
    parser.add_argument("--quick", action="store_true", help="sizes 50 and 200, one run each, no reuse case")
    parser.add_argument("--reuse", type=int, default=500,
                        help="images of the catalogue uploaded twice for the reuse case (0: none)")
    parser.add_argument("--huge", action="store_true",
                        help="also requests of 2,000 and 20,000 small images with the status API polled")
    parser.add_argument("--huge-only", action="store_true", help="only the 2,000- and 20,000-image requests")
    parser.add_argument("--many", type=int, default=40,
                        help="small requests of 5 images dropped together, against one request of them all (0: none)")
    parser.add_argument("--fresh", action="store_true",
                        help="throughput requests with a `fresh` sidecar (reuse skipped) instead of the default path")
    parser.add_argument("--lifecycle", type=int, default=12,
                        help="one-image requests through the REST API and the inbox, timed to their signed webhooks, "
                             "and the --reuse catalogue POSTed twice (bench/lifecycle.py; 0: none)")
    parser.add_argument("--renditions", type=int, default=renditions_bench.IMAGES,
                        help="photographs per JPEG quality for the renditions' calibration and costs "
                             "(bench/renditions.py; 0: none)")
    parser.add_argument("--baseline", choices=sorted(BASELINES), default="codec",
                        help="the pool's work: the codec alone (the job's physical limit) or imgpipe's own policy "
                             "(compress_image)")
    parser.add_argument("--out", default="bench.json", help="file name under bench-results/")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in ("50,200" if args.quick else args.sizes).split(","))
    repeat, reuse_count = (1, 0) if args.quick else (args.repeat, args.reuse)
    many = min(args.many, 8) if args.quick else args.many
    corpora = [c for c in args.corpus.split(",") if c]
    modes = [m for m in args.isolation.split(",") if m]
    settings = load_settings()
    print(f"imgpipe executor {settings.executor}, {settings.compress_slots} compress workers; corpora {corpora}, "
          f"isolation {modes}, sizes {sizes}, {repeat} run(s) each; the baseline's pool does {args.baseline}")
    RESULTS.mkdir(exist_ok=True)
    load_at_start = os.getloadavg()
    count = max(sizes[-1], reuse_count)
    folders = {} if args.huge_only else {corpus: ensure_images(corpus, count) for corpus in corpora}
    if args.huge or args.huge_only:
        folders["small"] = ensure_images("photo", SMALL_FILES, SMALL)
    machine = {"cpus": CPUS, "cpu": _cpu_model(), "python": platform.python_version(),
               "loadavg_at_start": load_at_start, **{p: version(p) for p in ("dagster", "pillow", "duckdb")}}
    pool = multiprocessing.get_context("fork").Pool(CPUS, initializer=_start_worker)  # before any thread of ours
    workers = [child.pid for child in multiprocessing.active_children()]
    # From here on `kill` also stops the daemon. Not before: pool workers must keep the default handler.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict = {"machine": machine, "corpora": {c: corpus_stats(f) for c, f in folders.items()},
                     "sizes": sizes, "repeat": repeat, "sensor_interval_s": SENSOR_INTERVAL,
                     "executor": settings.executor, "fresh_sidecar": args.fresh, "baseline": args.baseline,
                     "modes": {}}
    with pool, tempfile.TemporaryDirectory(dir=RESULTS, prefix="work-") as tmp, \
            ImageServer(folders, cycled={"small": SMALL_FILES}) as server:
        if not args.huge_only:
            for mode in modes:
                results["modes"][mode] = run_mode(mode, pool, workers, server, corpora, sizes, repeat, reuse_count,
                                                  Path(tmp), args.fresh, args.baseline)
                for corpus in corpora:
                    print_table(mode, corpus, results["modes"][mode]["corpora"][corpus], sizes)
        if many and not args.huge_only:
            results["many_small"] = run_many_small(server, Path(tmp), corpora[0], many)
        if args.lifecycle and not args.huge_only and "photo" in folders:
            results["lifecycle"] = lifecycle.run(Path(tmp), server, args.lifecycle, reuse_count)
        if args.huge or args.huge_only:
            huge = {mode: run_huge(server, mode, Path(tmp)) for mode in (["process"] if args.huge_only else modes)}
            (RESULTS / "huge.json").write_text(json.dumps({"machine": machine, **huge}, indent=2, default=str))
            results["huge"] = huge
    if args.renditions and not args.huge_only:
        # The throughput's photo corpus when it is large enough: the same first images (made by index).
        photo = folders.get("photo") if count >= renditions_bench.CORPUS_FILES else None
        results["renditions"] = renditions_bench.run(min(args.renditions, renditions_bench.QUICK_IMAGES)
                                                     if args.quick else args.renditions, quick=args.quick,
                                                     folder=photo)
        print(renditions_bench.table(results["renditions"]))
    machine["loadavg_at_end"] = os.getloadavg()
    print(f"\nsummary against the pool doing {args.baseline} (marginal throughput ratio from the drop, from the "
          f"request; CPU per image at {sizes[-1]} images, and imgpipe's over the pool's):")
    for mode, result in results["modes"].items():
        for corpus, summary in result["corpora"].items():
            largest = summary["by_size"][str(sizes[-1])]
            print(f"  {mode:>7} {corpus:>9}: {summary['marginal_ratio']['from_drop']}, "
                  f"{summary['marginal_ratio']['from_request']}; pool {summary['marginal_images_per_s']['pool']} "
                  f"img/s, imgpipe {summary['marginal_images_per_s']['from_drop']} img/s; CPU {largest['cpu_ms']} "
                  f"ms/img vs pool {largest['pool_cpu_ms']}: {summary['cpu_over_pool']}x")
    if not args.huge_only:
        out = RESULTS / args.out
        out.write_text(json.dumps(results, indent=2, default=str))
        print(f"written {out}")
    print(f"load average (1, 5, 15 min) at start {load_at_start}, at end {os.getloadavg()}")


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
