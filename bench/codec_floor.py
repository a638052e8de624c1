"""The codec's floor, and what imgpipe's image policy and its process per image cost above it, in CPU per image.

    .venv/bin/python bench/codec_floor.py [--images 100] [--rounds 3] [--label now]

On photographs (`bench/corpus.py`: 1632x1224 JPEGs at qualities 40-95), in CPU time (user + system), which holds on
a busy machine:

- the floor: decode, then a Huffman-optimised encode at half the estimated quality with the input's chroma
  subsampling, in this warm process;
- `compress_image` in this process, and each of its parts alone on the same images (the floor's two codec calls
  and what the policy adds: quality estimate, scan checks, metadata, thumbnails; "other" is what is left);
- `compress_isolated` under both IMGPIPE_ISOLATION modes, the images sent from threads as a batch sends them: the
  CPU of this process (pickling, pipes), of the fork server and of the processes that did the images, and those
  processes' minor page faults.

Each round measures everything once, so that load from elsewhere hits all alike; for each measure the round of
least CPU counts. Prints a table and writes bench-results/codec-floor-<label>.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from PIL import Image, JpegImagePlugin

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import CPUS, RESULTS, corpus_stats, ensure_images  # noqa: E402
from procstat import TreeMonitor, keep_freed_memory, this_process_cpu, tree  # noqa: E402

from imgpipe.images import compressor, image_policy, jpeg_scan, metadata, quality  # noqa: E402

LIMITS = {"max_pixels": 50_000_000, "max_frames": 1000}
ISOLATED = {"timeout": 60.0, "memory_bytes": 2 << 30}
ISOLATIONS = ("process", "pool")
FLOOR = "floor: decode + optimised encode at half quality"


def ms_per_image(work: Callable[[bytes], object], datas: list[bytes]) -> float:
    started = this_process_cpu()
    for data in datas:
        work(data)
    return 1000 * (this_process_cpu() - started) / len(datas)


def half_quality(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        return _half_quality_of(image)


def _half_quality_of(image: Image.Image) -> int:
    return quality.output_quality(quality.estimate_jpeg_quality(image.quantization))


def codec_floor(data: bytes, quality_out: int | None = None) -> bytes:
    """What any re-encoder must do: decode, encode at `quality_out` (None: half the quality estimated from the image
    as it is opened, its tables read once) with optimised Huffman tables."""
    with Image.open(io.BytesIO(data)) as image:
        if quality_out is None:
            quality_out = _half_quality_of(image)
        image.load()
        output = io.BytesIO()
        image.save(output, "JPEG", quality=quality_out, optimize=True, subsampling="keep")
    return output.getvalue()


class Policy:
    """The images, and what each part of the policy starts from, made ahead so that each part is timed alone."""

    def __init__(self, datas: list[bytes]):
        self.datas = datas
        self.quality_out = {data: half_quality(data) for data in datas}
        self.tables, self.orientation, self.sampling, self.pixels, self.outputs = {}, {}, {}, {}, {}
        for data in datas:
            with Image.open(io.BytesIO(data)) as image:
                self.tables[data] = image.quantization
                self.orientation[data] = image.getexif().get(0x0112, 1)
                self.sampling[data] = JpegImagePlugin.get_sampling(image)
                image.load()
                self.pixels[data] = image.copy()
            self.outputs[data] = image_policy.compress_image(data, **LIMITS).data

    def parts(self) -> dict[str, Callable[[bytes], object]]:
        return {
            "decode": self.decode,
            "encode (optimised Huffman, half quality)": self.encode,
            "quality estimate": lambda data: quality.estimate_jpeg_quality(self.tables[data]),
            "scan checks": self.scan_checks,
            "input without its metadata (never larger)": lambda data: metadata.strip_metadata(
                data, "JPEG", self.orientation[data]),
            "thumbnail before": lambda data: image_policy._thumbnail(self.pixels[data]),
            "thumbnail after (reduced decode of the output)": lambda data: image_policy._thumbnail_of_encoded(
                self.outputs[data], self.pixels[data]),
        }

    def decode(self, data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    def encode(self, data: bytes) -> None:
        self.pixels[data].save(io.BytesIO(), "JPEG", quality=self.quality_out[data], optimize=True,
                               subsampling=self.sampling[data])

    def scan_checks(self, data: bytes) -> None:
        scan_data = jpeg_scan.read_scan_data(data)
        jpeg_scan.check_scan_lengths(scan_data)
        jpeg_scan.check_where_it_ends(scan_data, self.pixels[data])


def in_process(policy: Policy) -> dict[str, float]:
    datas = policy.datas
    found = {FLOOR: ms_per_image(lambda data: codec_floor(data, policy.quality_out[data]), datas),
             "compress_image": ms_per_image(lambda data: image_policy.compress_image(data, **LIMITS), datas)}
    found.update({name: ms_per_image(work, datas) for name, work in policy.parts().items()})
    return found


def isolated(datas: list[bytes], isolation: str) -> dict[str, float]:
    """CPU ms and faults per image through the fork server, `2 * CPUS` threads sending (at most CPUS at work)."""

    def compress(data: bytes) -> None:
        outcome = compressor.compress_isolated(data, **LIMITS, **ISOLATED, isolation=isolation)
        if not outcome.ok:
            raise RuntimeError(outcome.error)

    with ThreadPoolExecutor(2 * CPUS) as threads:
        list(threads.map(compress, datas[:2 * CPUS]))  # the server up, its spares or workers forked
        server_tree = TreeMonitor(lambda: tree(compressor._client.server_pid()))
        server_tree.start_cpu()
        caller_before = this_process_cpu()
        list(threads.map(compress, datas))
        caller = this_process_cpu() - caller_before
        taken = server_tree.take_cpu()
    n = len(datas)
    found = {"caller (pickling, pipes)": 1000 * caller / n,
             **{what: 1000 * taken["cpu_s"].get(what, 0.0) / n for what in ("fork server", "image processes")}}
    found["total"] = sum(found.values())
    found["minor faults per image"] = taken["minor_faults"]["image processes"] / n
    return found


def least(rounds: list[dict]) -> dict:
    """Per measure, the least over the rounds (nested one level for the isolation modes)."""
    first = rounds[0]
    return {key: least([r[key] for r in rounds]) if isinstance(first[key], dict)
            else round(min(r[key] for r in rounds), 2) for key in first}


def table(best: dict) -> str:
    process = best["in process"]
    floor = process[FLOOR]
    parts = [name for name in process if name not in (FLOOR, "compress_image")]
    rows = [(FLOOR, floor, True), ("compress_image, in this process", process["compress_image"], True),
            *((f"  {name}", process[name], False) for name in parts),
            ("  other (compress_image less its parts)", process["compress_image"] - sum(map(process.get, parts)),
             False)]
    for isolation in ISOLATIONS:
        found = best[isolation]
        rows += [(f"IMGPIPE_ISOLATION={isolation}: caller + fork server + image processes", found["total"], True),
                 *((f"  {name}", found[name], False) for name in ("caller (pickling, pipes)", "fork server",
                                                                  "image processes"))]
    lines = [f"{'CPU ms per image (least of the rounds)':66s} {'ms':>7s} {'/ floor':>8s}"]
    lines += [f"{name:66s} {value:7.2f}" + (f" {value / floor:8.2f}" if total else "") for name, value, total in rows]
    lines.append("minor page faults per image process: " + ", ".join(
        f"{isolation} {best[isolation]['minor faults per image']:,.0f}" for isolation in ISOLATIONS))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--label", default="now")
    args = parser.parse_args()
    folder = ensure_images("photo", args.images)
    datas = [(folder / f"{i:05d}.jpg").read_bytes() for i in range(args.images)]
    keep_freed_memory()
    policy = Policy(datas)
    load_at_start = os.getloadavg()
    rounds = []
    try:
        for number in range(1, args.rounds + 1):
            found = {"in process": in_process(policy), **{isolation: isolated(datas, isolation)
                                                          for isolation in ISOLATIONS}}
            rounds.append(found)
            print(f"round {number}: floor {found['in process'][FLOOR]:.1f}"
                  f", compress_image {found['in process']['compress_image']:.1f}, " + ", ".join(
                      f"{isolation} {found[isolation]['total']:.1f}" for isolation in ISOLATIONS) + " ms/image",
                  flush=True)
    finally:
        compressor._client.close()
    best = least(rounds)
    print(table(best))
    result = {"label": args.label, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": CPUS,
              "cpu_model": platform.processor() or platform.machine(), "python": platform.python_version(),
              "pillow": Image.__version__, "corpus": {"name": "photo", **corpus_stats(folder)},
              "load_average": {"start": load_at_start, "end": os.getloadavg()},
              "least_of_rounds_ms": best, "rounds": rounds}
    out = RESULTS / f"codec-floor-{args.label}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
