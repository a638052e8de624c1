"""Calibration of the WebP and AVIF renditions (issue #25) against the JPEG they stand in for, on photographs.

    .venv/bin/python bench/renditions.py [--images 7] [--quick]

On the photo corpus (`bench/corpus.py`: crops of scikit-image's photographs, 1632x1224 JPEGs at qualities 40-95).
A main-output quality q is calibrated on the images whose own quality imgpipe halves to q (inputs of about 2q), as
in production: at the main size the JPEG is a re-encode on the input's own 8x8 grid, which a JPEG at or above the
input's quality reproduces almost exactly, so pairing q with any other input would misjudge that width. Each image
is decoded as imgpipe decodes it, which is also the reference every encode is scored against, and resized as
renditions are (`rendition_encoding`: Lanczos with `reducing_gap`). The JPEG at a width is encoded as
`image_policy._encode_jpeg` encodes the main output (optimised Huffman tables, the input's chroma subsampling).

- Calibration: for each main-output JPEG quality and each width (main size, 960, 480: the scales of
  `imgpipe.images.rendition_quality.SCALES`), the lowest WebP and AVIF quality (at `WEBP_METHOD` and
  `AVIF_SPEED`) whose SSIMULACRA2 score is not below the JPEG's at that width: the median over the images of
  (its score - the JPEG's) >= 0. Found by bisection over the encoder quality, from a bracket around the tables in
  `imgpipe.images.rendition_quality` (widened when the answer lies outside it). Reported at the quality found:
  median bytes as a fraction of the JPEG's (goals: WebP <= 0.75, AVIF <= 0.6) and the median score difference
  (goal: >= -1), per width and over every image, width and quality together.
- Encoder effort: for each WebP `method` and AVIF `speed` considered, its parity quality at one JPEG quality and
  width, the bytes there, and the CPU and wall time per image of encoding that format's three renditions.
- The image policy's CPU per image with renditions off, WebP, and WebP + AVIF at widths 480 and 960.

SSIMULACRA2 is the `ssimulacra2` package (pure Python, seconds per score at the main size): each image's
reference half of the score is computed once per width, in worker processes that each keep their images, and is
checked against `compute_ssimulacra2` before use. The full run takes about 14 CPU-minutes, nearly all of it in
two scoring processes (8 minutes on an idle 2-core machine); --quick, a smoke test too small to calibrate on, about
4 minutes.
Prints tables and writes bench-results/renditions.json.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin, features
from ssimulacra2 import compute_ssimulacra2
from ssimulacra2 import ssimulacra2 as metric

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import CPUS, RESULTS, ensure_images  # noqa: E402
from procstat import keep_freed_memory, this_process_cpu  # noqa: E402

from imgpipe.images import image_policy, rendition_quality  # noqa: E402
from imgpipe.images.quality import estimate_jpeg_quality, output_quality  # noqa: E402
from imgpipe.images.rendition_encoding import REDUCING_GAP  # noqa: E402
from imgpipe.images.renditions import RenditionSpec  # noqa: E402

# Enough files for a dozen inputs per calibrated quality (each input quality is every 56th file).
CORPUS_FILES = 200
MAIN = 0  # the width of an image's main output, whatever it is
WIDTHS = (480, 960, MAIN)  # ascending cost
# The main output's qualities: half the input's, so 20-48 for the corpus's inputs of 40-95. Even ones, which three
# input qualities round to (2q-1, 2q, 2q+1), so that the corpus holds more inputs of each.
JPEG_QUALITIES = (20, 30, 40, 46)
QUICK_JPEG_QUALITIES = (30, 40)
# Per JPEG quality: the SSIMULACRA2 package takes seconds per score at the main size, which bounds the full run. An
# odd number, so that a median is one image's difference and not the mean of two far apart (photographs differ a
# lot in how much WebP or AVIF gains on them).
IMAGES = 7
QUICK_IMAGES = 3
# Where the encoder efforts are compared: a typical main-output quality, the middle rendition width.
EFFORT_JPEG_QUALITY = 40
EFFORT_WIDTH = 960
WEBP_METHODS = (2, 4, 5, 6)
AVIF_SPEEDS = (6, 7, 8, 10)  # speed 4 took 9 s of CPU for one main-size image here
# Half the width of the first bracket around the table's quality; most answers fall inside it.
BRACKET = 4
POLICY_WIDTHS = (480, 960)
POLICY_FORMATS = {"off": None, "webp": ("webp",), "webp,avif": ("webp", "avif")}
LIMITS = {"max_pixels": 50_000_000, "max_frames": 1000}
GOALS = {"WEBP": 0.75, "AVIF": 0.6}  # median bytes as a fraction of the JPEG's
WORST_DIFFERENCE = -1.0  # SSIMULACRA2 points below the JPEG's a rendition may lose, at most
MAPPINGS = {"WEBP": rendition_quality.webp_quality, "AVIF": rendition_quality.avif_quality}
EFFORTS = {"WEBP": rendition_quality.WEBP_METHOD, "AVIF": rendition_quality.AVIF_SPEED}  # the encoders' efforts


def resized(image: Image.Image, width: int) -> Image.Image:
    if width in (MAIN, image.width):
        return image
    return image.resize((width, round(image.height * width / image.width)), Image.LANCZOS,
                        reducing_gap=REDUCING_GAP)


def encode(image: Image.Image, image_format: str, quality: int, effort: int, subsampling: int) -> bytes:
    """`image` as the main output (JPEG) or a rendition (WebP at `method` `effort`, AVIF at `speed` `effort`)."""
    if image_format == "JPEG":
        return image_policy._encode_jpeg(image, quality, subsampling, None)
    output = io.BytesIO()
    if image_format == "WEBP":
        image.save(output, "WEBP", quality=quality, method=effort)
    else:
        # One thread, as rendition_encoding encodes: an image per core already.
        image.save(output, "AVIF", quality=quality, speed=effort, max_threads=1)
    return output.getvalue()


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


class Reference:
    """`compute_ssimulacra2(reference, distorted)` with the reference's half done once: its XYB planes and their
    blurs at each scale. The same calls of the package in the same order, so the scores are the same to the bit
    (`check_against_package` makes sure); it roughly halves the cost of each further score."""

    def __init__(self, pixels: np.ndarray):
        linear = metric.srgb_to_linear(pixels)
        self.scales = []
        for scale in range(metric.kNumScales):
            if linear.shape[0] < 8 or linear.shape[1] < 8:
                break
            xyb = metric.make_positive_xyb(metric.linear_rgb_to_xyb(linear))
            self.scales.append((xyb, metric.blur_image(xyb), metric.blur_image(xyb * xyb)))
            if scale < metric.kNumScales - 1:
                linear = metric.downsample(linear, 2, 2)

    def score(self, pixels: np.ndarray) -> float:
        linear = metric.srgb_to_linear(pixels)
        result = metric.Msssim()
        for scale, (reference, reference_mean, reference_square_mean) in enumerate(self.scales):
            if scale:
                linear = metric.downsample(linear, 2, 2)
            distorted = metric.make_positive_xyb(metric.linear_rgb_to_xyb(linear))
            distorted_mean = metric.blur_image(distorted)
            maps = metric.MsssimScale()
            maps.avg_ssim = metric.ssim_map(reference_mean, distorted_mean, reference_square_mean,
                                            metric.blur_image(distorted * distorted),
                                            metric.blur_image(reference * distorted))
            maps.avg_edgediff = metric.edge_diff_map(reference, reference_mean, distorted, distorted_mean)
            result.scales.append(maps)
        return result.score()


def check_against_package(image: Image.Image) -> None:
    """`Reference.score` must be the package's own score: a later ssimulacra2 that computes it otherwise fails here
    rather than calibrating on something else."""
    small = resized(image, WIDTHS[0])
    distorted = encode(small, "JPEG", 30, 0, -1)
    as_ppm = io.BytesIO()
    small.save(as_ppm, "PPM")
    expected = compute_ssimulacra2(io.BytesIO(as_ppm.getvalue()), io.BytesIO(distorted))
    found = Reference(np.asarray(small)).score(decoded(distorted))
    if abs(found - expected) > 1e-9:
        raise RuntimeError(f"the cached SSIMULACRA2 gives {found}, compute_ssimulacra2 {expected}: "
                           "the ssimulacra2 package changed, revisit Reference")


@dataclass
class Measured:
    sizes: list[int]  # bytes per image
    scores: list[float]  # SSIMULACRA2 per image


def _score_images(connection: Connection, paths: list[str]) -> None:
    """A worker's loop: keeps its images at each width with their references, and answers each
    (format, quality, effort, width) with the bytes and score of every one of its images so encoded."""
    # Each score allocates and frees arrays of tens of MB; faulting them in anew each time made a quarter of this
    # bench's CPU system time.
    keep_freed_memory()
    images = []
    for path in paths:
        with Image.open(path) as source:
            subsampling = JpegImagePlugin.get_sampling(source)
            source.load()
            at_width = {width: resized(source, width) for width in WIDTHS}
        references = {width: Reference(np.asarray(image)) for width, image in at_width.items()}
        images.append((subsampling, at_width, references))
    connection.send("ready")
    while (request := connection.recv()) is not None:
        image_format, quality, effort, width = request
        sizes, scores = [], []
        for subsampling, at_width, references in images:
            data = encode(at_width[width], image_format, quality, effort, subsampling)
            sizes.append(len(data))
            scores.append(references[width].score(decoded(data)))
        connection.send((sizes, scores))


class Scorers:
    """Worker processes that score encodes of the images, each keeping its share of them (the references at the
    main size are hundreds of MB per image); every answer is remembered."""

    def __init__(self, paths: list[Path], processes: int):
        self.count = len(paths)
        with Image.open(paths[0]) as first:
            self.main_width = first.width  # the corpus's images are all as wide
        self.processes = min(processes, self.count)
        context = multiprocessing.get_context("fork")
        self.workers = []
        for share in range(self.processes):
            ours, theirs = context.Pipe()
            process = context.Process(target=_score_images, daemon=True,
                                      args=(theirs, [str(path) for path in paths[share::self.processes]]))
            process.start()
            self.workers.append((process, ours))
        for _, connection in self.workers:
            connection.recv()
        self.known: dict[tuple, Measured] = {}

    def measure(self, image_format: str, quality: int, effort: int, width: int) -> Measured:
        key = (image_format, quality, effort, width)
        if key not in self.known:
            for _, connection in self.workers:
                connection.send(key)
            sizes, scores = [0] * self.count, [0.0] * self.count
            for share, (_, connection) in enumerate(self.workers):
                sizes[share::self.processes], scores[share::self.processes] = connection.recv()
            self.known[key] = Measured(sizes, scores)
        return self.known[key]

    def close(self) -> None:
        for process, connection in self.workers:
            connection.send(None)
            process.join()


def lowest_passing(passes: Callable[[int], bool], low: int, high: int) -> int | None:
    """The lowest encoder quality (0..100) that `passes`, which is taken to be monotone, by bisection of the
    bracket (low, high]; an end of the bracket that proves wrong moves it by its width. None if 100 fails."""
    verdicts: dict[int, bool] = {}

    def check(quality: int) -> bool:
        if quality not in verdicts:
            verdicts[quality] = passes(quality)
        return verdicts[quality]

    span = high - low
    while True:
        while high - low > 1:
            middle = (low + high) // 2
            if check(middle):
                high = middle
            else:
                low = middle
        if not check(high):
            if high == 100:
                return None
            low, high = high, min(100, high + span)
        elif low >= 0 and check(low):
            low, high = max(-1, low - span), low
        else:
            return high


def median_difference(candidate: Measured, jpeg: Measured) -> float:
    return statistics.median(c - j for c, j in zip(candidate.scores, jpeg.scores, strict=True))


def median_fraction(candidate: Measured, jpeg: Measured) -> float:
    return statistics.median(c / j for c, j in zip(candidate.sizes, jpeg.sizes, strict=True))


def at_quality(scorers: Scorers, image_format: str, quality: int, effort: int, jpeg_quality: int,
               widths: tuple[int, ...]) -> dict:
    """Bytes fraction and score difference to the JPEG per width, for widths already measured at `quality`."""
    found = {}
    for width in widths:
        jpeg = scorers.measure("JPEG", jpeg_quality, 0, width)
        candidate = scorers.measure(image_format, quality, effort, width)
        found[width_name(width)] = {
            "bytes_fraction": round(median_fraction(candidate, jpeg), 3),
            "ssimulacra2_difference": round(median_difference(candidate, jpeg), 2),
            "ssimulacra2": round(statistics.median(candidate.scores), 2),
            "jpeg_ssimulacra2": round(statistics.median(jpeg.scores), 2),
            "median_kb": round(statistics.median(candidate.sizes) / 1000, 1),
            "jpeg_median_kb": round(statistics.median(jpeg.sizes) / 1000, 1),
            "per_image": {"bytes_fraction": [c / j for c, j in zip(candidate.sizes, jpeg.sizes, strict=True)],
                          "ssimulacra2_difference": [c - j for c, j in zip(candidate.scores, jpeg.scores,
                                                                           strict=True)]}}
    return found


def parity_quality(scorers: Scorers, image_format: str, effort: int, jpeg_quality: int, width: int) -> dict:
    """The lowest quality of `image_format` at `effort` that is not below the JPEG at `jpeg_quality` at `width`,
    searched from the tables' quality."""
    jpeg = scorers.measure("JPEG", jpeg_quality, 0, width)

    def passes(quality: int) -> bool:
        return median_difference(scorers.measure(image_format, quality, effort, width), jpeg) >= 0

    guess = MAPPINGS[image_format](jpeg_quality, scale(width, scorers.main_width))
    low = max(guess - BRACKET - 1, -1)
    quality = lowest_passing(passes, low, min(100, max(low + 1, guess + BRACKET)))
    if quality is None:
        return {"quality": None, "widths": {}}
    return {"quality": quality, "widths": at_quality(scorers, image_format, quality, effort, jpeg_quality, (width,))}


def scale(width: int, main_width: int) -> float:
    return 1.0 if width == MAIN else width / main_width


def width_name(width: int) -> str:
    return "main" if width == MAIN else str(width)


def inputs_by_quality(folder: Path, jpeg_qualities: tuple[int, ...], images: int) -> dict[int, list[Path]]:
    """For each main-output quality, the first `images` files of the corpus that imgpipe encodes at it."""
    found: dict[int, list[Path]] = {quality: [] for quality in jpeg_qualities}
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as source:
            quality = output_quality(estimate_jpeg_quality(source.quantization))
        if quality in found and len(found[quality]) < images:
            found[quality].append(path)
    short = {quality: len(paths) for quality, paths in found.items() if len(paths) < images}
    if short:
        raise ValueError(f"the corpus has fewer than {images} inputs for main-output qualities {short}")
    return found


def calibrate(scorers: Scorers, jpeg_quality: int) -> dict:
    """Per format and width, the parity quality at `jpeg_quality` and how it compares to the JPEG there."""
    found = {}
    for image_format, effort in EFFORTS.items():
        found[image_format] = {}
        for width in WIDTHS:
            started, measured = time.perf_counter(), len(scorers.known)
            parity = parity_quality(scorers, image_format, effort, jpeg_quality, width)
            found[image_format][width_name(width)] = parity
            print(f"{image_format} at JPEG {jpeg_quality}, width {width_name(width)}: quality {parity['quality']} "
                  f"({len(scorers.known) - measured} measures, {time.perf_counter() - started:.0f} s)", flush=True)
    return found


def pooled(calibration: dict) -> dict:
    """Per format, the medians over every image, width and JPEG quality of the calibration at its parity
    qualities: bytes as a fraction of the JPEG's and SSIMULACRA2 difference to it."""
    found = {}
    for image_format in EFFORTS:
        values: dict[str, list[float]] = {"bytes_fraction": [], "ssimulacra2_difference": []}
        for rows in calibration.values():
            for parity in rows[image_format].values():
                for stats in parity["widths"].values():
                    for key, per_image in stats["per_image"].items():
                        values[key].extend(per_image)
        found[image_format] = {key: round(statistics.median(per_image), 3) for key, per_image in values.items()}
    return found


def cpu_per_image(work: Callable[[bytes | Image.Image], object], items: list, rounds: int = 2) -> dict:
    """CPU (user + system, all threads) and wall ms per item in this process, the least of `rounds`."""
    cpu, wall = [], []
    for _ in range(rounds):
        cpu_started, wall_started = this_process_cpu(), time.perf_counter()
        for item in items:
            work(item)
        cpu.append(1000 * (this_process_cpu() - cpu_started) / len(items))
        wall.append(1000 * (time.perf_counter() - wall_started) / len(items))
    return {"cpu_ms": round(min(cpu), 1), "wall_ms": round(min(wall), 1)}


def compare_efforts(scorers: Scorers, paths: list[Path]) -> dict:
    """Per WebP method and AVIF speed: the parity quality at one JPEG quality and width, bytes there, and the CPU
    of encoding that format's renditions of an image (main size, 960, 480) at that quality."""
    renditions_of = []
    for path in paths:
        with Image.open(path) as image:
            image.load()
            renditions_of.append((image, [resized(image, width) for width in WIDTHS]))
    found = {}
    for image_format, candidates in (("WEBP", WEBP_METHODS), ("AVIF", AVIF_SPEEDS)):
        rows = {}
        for effort in candidates:
            parity = parity_quality(scorers, image_format, effort, EFFORT_JPEG_QUALITY, EFFORT_WIDTH)
            quality = parity["quality"]
            if quality is None:
                rows[effort] = parity
                continue

            def encode_renditions(item, image_format=image_format, quality=quality, effort=effort):
                for rendition in item[1]:
                    encode(rendition, image_format, quality, effort, -1)

            rows[effort] = {**parity, **cpu_per_image(encode_renditions, renditions_of, rounds=1)}
            print(f"{image_format} effort {effort}: parity quality {quality}, "
                  f"{rows[effort]['cpu_ms']:.0f} ms CPU per image", flush=True)
        found[image_format] = rows
    jpeg = {"cpu_ms_per_image": cpu_per_image(
        lambda item: [encode(rendition, "JPEG", EFFORT_JPEG_QUALITY, 0, -1) for rendition in item[1]],
        renditions_of, rounds=1), "resize_to_960_and_480": cpu_per_image(
        lambda item: [resized(item[0], width) for width in WIDTHS if width != MAIN], renditions_of, rounds=1)}
    return {"jpeg_quality": EFFORT_JPEG_QUALITY, "width": EFFORT_WIDTH, "by_format": found, "reference": jpeg}


def policy_cpu(datas: list[bytes]) -> dict:
    """`compress_image`'s CPU per image with renditions off, WebP, and WebP + AVIF at `POLICY_WIDTHS`."""
    found = {}
    for label, formats in POLICY_FORMATS.items():
        options = {} if formats is None else {"renditions": RenditionSpec(formats=formats, widths=POLICY_WIDTHS)}
        image_policy.compress_image(datas[0], **LIMITS, **options)  # warm: plugins, encoder set-up
        found[label] = cpu_per_image(
            lambda data, options=options: image_policy.compress_image(data, **LIMITS, **options), datas)
    return {"widths": list(POLICY_WIDTHS), "by_renditions": found}


def suggested_tables(calibration: dict) -> dict:
    """Per format and width, the (JPEG quality, parity quality) table to copy into rendition_quality."""
    return {image_format: {width_name(width): [(jpeg_quality, rows[image_format][width_name(width)]["quality"])
                                               for jpeg_quality, rows in calibration.items()]
                           for width in WIDTHS}
            for image_format in EFFORTS}


def run(images: int, quick: bool = False, folder: Path | None = None) -> dict:
    """Calibrate on `images` photographs per main-output quality, compare encoder efforts and measure the
    policy; on the photo corpus's first CORPUS_FILES images, or on `folder`, a photo corpus of at least as many."""
    started, load_at_start = time.perf_counter(), os.getloadavg()
    folder = folder or ensure_images("photo", CORPUS_FILES)
    inputs = inputs_by_quality(folder, QUICK_JPEG_QUALITIES if quick else JPEG_QUALITIES, images)
    with Image.open(inputs[EFFORT_JPEG_QUALITY][0]) as first:
        first.load()
        check_against_package(first)
    calibration, effort = {}, {}
    for jpeg_quality, paths in inputs.items():
        scorers = Scorers(paths, CPUS)
        try:
            calibration[jpeg_quality] = calibrate(scorers, jpeg_quality)
            if jpeg_quality == EFFORT_JPEG_QUALITY:
                effort = compare_efforts(scorers, paths)
        finally:
            scorers.close()
    policy = policy_cpu([path.read_bytes() for path in inputs[EFFORT_JPEG_QUALITY]])
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "images_per_quality": images, "quick": quick,
            "corpus": folder.name, "inputs": {q: [path.name for path in paths] for q, paths in inputs.items()},
            "widths": [width_name(w) for w in WIDTHS],
            "resize": f"Image.resize LANCZOS, reducing_gap={REDUCING_GAP}, from the decoded main image",
            "efforts": EFFORTS, "goals": {"bytes_fraction": GOALS, "ssimulacra2_difference": WORST_DIFFERENCE},
            "calibration": calibration, "pooled": pooled(calibration),
            "suggested_tables": suggested_tables(calibration), "effort": effort,
            "policy": policy, "cpus": CPUS, "python": platform.python_version(), "pillow": Image.__version__,
            "libavif": features.version("avif"), "libwebp": features.version("webp"),
            "load_average": {"start": load_at_start, "end": os.getloadavg()},
            "seconds": round(time.perf_counter() - started)}


def table(result: dict) -> str:
    lines = [(f"Renditions against the JPEG at the same width, {result['images_per_quality']} photographs per JPEG "
              "quality (inputs of twice it), median over them "
              f"(goals: bytes WebP <= {GOALS['WEBP']}, AVIF <= {GOALS['AVIF']}; SSIMULACRA2 >= {WORST_DIFFERENCE})")]
    lines.append(f"{'format':6s} {'JPEG q':>6s} " + " ".join(
        f"{name + ' q':>7s} {name + ' bytes':>10s} {name + ' dS2':>9s}" for name in result["widths"]))
    for image_format in result["efforts"]:
        for jpeg_quality, rows in result["calibration"].items():
            cells = []
            for name in result["widths"]:
                parity = rows[image_format][name]
                stats = parity["widths"].get(name)
                cells.append(f"{parity['quality']!s:>7s} " + (
                    f"{stats['bytes_fraction']:10.3f} {stats['ssimulacra2_difference']:+9.2f}" if stats else
                    f"{'-':>10s} {'-':>9s}"))
            lines.append(f"{image_format:6s} {jpeg_quality:>6} " + " ".join(cells))
    for image_format, medians in result["pooled"].items():
        lines.append(f"{image_format} over every image, width and quality: bytes {medians['bytes_fraction']:.3f} "
                     f"of the JPEG's, SSIMULACRA2 {medians['ssimulacra2_difference']:+.2f}")
    effort = result["effort"]
    lines.append(f"\nEncoder effort at JPEG {effort['jpeg_quality']}, parity at width {effort['width']}; CPU/wall "
                 "per image for its three renditions (main, 960, 480)")
    lines.append(f"{'format':6s} {'effort':>6s} {'q':>4s} {'bytes':>7s} {'dS2':>7s} {'CPU ms':>8s} {'wall ms':>8s}")
    for image_format, rows in effort["by_format"].items():
        for value, row in rows.items():
            if row["quality"] is None:
                lines.append(f"{image_format:6s} {value:>6} never reaches the JPEG's score")
                continue
            width = next(iter(row["widths"].values()))
            chosen = " <- chosen" if result["efforts"][image_format] == value else ""
            lines.append(f"{image_format:6s} {value:>6} {row['quality']:>4} {width['bytes_fraction']:7.3f} "
                         f"{width['ssimulacra2_difference']:+7.2f} {row['cpu_ms']:8.0f} {row['wall_ms']:8.0f}{chosen}")
    reference = effort["reference"]
    lines.append(f"JPEG at the three widths: {reference['cpu_ms_per_image']['cpu_ms']:.0f} ms CPU; Lanczos resize to "
                 f"960 and 480: {reference['resize_to_960_and_480']['cpu_ms']:.0f} ms CPU")
    policy = result["policy"]
    lines.append(f"\ncompress_image per image, renditions at widths {policy['widths']}:")
    lines += [f"  {label:10s} {found['cpu_ms']:8.0f} ms CPU {found['wall_ms']:8.0f} ms wall"
              for label, found in policy["by_renditions"].items()]
    lines.append("\nSuggested tables (rendition_quality, by scale: main, 960, 480):")
    lines += [f"{image_format}_TABLES = " + "; ".join(f"{name}: {tuple(rows)}" for name, rows in by_width.items())
              for image_format, by_width in result["suggested_tables"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, help=f"per JPEG quality; {IMAGES}, or {QUICK_IMAGES} with --quick")
    parser.add_argument("--quick", action="store_true",
                        help=f"only JPEG qualities {QUICK_JPEG_QUALITIES}: a smoke test, too few images to calibrate")
    args = parser.parse_args()
    result = run(args.images or (QUICK_IMAGES if args.quick else IMAGES), quick=args.quick)
    print(table(result))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "renditions.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
