"""MkDocs hooks (mkdocs.yml `hooks:`): the performance charts, drawn with matplotlib when the site is built.

A chart is drawn from its bench's JSON under docs/data/ (`<name>.json`), when that file is there, into the built site
as `charts/<name>.svg`; nothing drawn is kept in the repository. A page asks for one with the marker
`<!-- chart: <name> -->` on a line of its own, which becomes the chart's image where its JSON is there, and a
sentence saying how to make that JSON where it is not, so a strict build passes either way. A marker naming no known
chart, or a JSON that is not what its bench writes, fails the build.

Charts (`CHARTS`): `renditions` (bench/renditions.py's bench-results/renditions.json: per format, bytes as a
fraction of the JPEG of the same width, per width and main-output JPEG quality, at the calibrated quality) and
`codec_floor` (bench/codec_floor.py's bench-results/codec-floor-<label>.json: CPU ms per image per stage).
"""
from __future__ import annotations

import io
import json
import logging
import posixpath
import re
from pathlib import Path
from typing import Callable

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.charts")

DATA = Path(__file__).resolve().parent / "data"
CHART_DIR = "charts"
FORMAT_NAMES = {"WEBP": "WebP", "AVIF": "AVIF"}
MARKER = re.compile(r"^<!-- chart: ([a-z0-9_]+) -->[ \t]*$", re.M)


def draw_renditions(result: dict):
    """Per format (a panel each): bytes as a fraction of the JPEG of the same width, per width (480, 960, the main
    size), a line per main-output JPEG quality, each point labelled with the format's calibrated quality there."""
    if "calibration" not in result and "renditions" in result:
        result = result["renditions"]  # make bench's bench-results/bench.json holds it under "renditions"
    calibration = result.get("calibration")
    if not calibration:
        raise ValueError("no 'calibration': not bench/renditions.py's result")
    jpeg_qualities = sorted(calibration, key=int)
    formats = list(calibration[jpeg_qualities[0]])
    widths = result.get("widths") or list(calibration[jpeg_qualities[0]][formats[0]])
    goals = result.get("goals", {}).get("bytes_fraction", {})
    figure, axes = _figure(1, len(formats), width=4.6 * len(formats), height=3.6)
    for panel, image_format in zip(axes, formats):
        for jpeg_quality in jpeg_qualities:
            points = []
            for x, width in enumerate(widths):
                parity = calibration[jpeg_quality][image_format].get(width) or {}
                stats = (parity.get("widths") or {}).get(width)
                if stats is not None:
                    points.append((x, stats["bytes_fraction"], parity["quality"]))
            if not points:
                continue
            line, = panel.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                               label=f"JPEG q{jpeg_quality}")
            for x, fraction, quality in points:
                panel.annotate(f"q{quality}", (x, fraction), textcoords="offset points", xytext=(5, 4),
                               fontsize=7, color=line.get_color())
        if image_format in goals:
            panel.axhline(goals[image_format], color="grey", linestyle="--", linewidth=1,
                          label=f"goal {goals[image_format]}")
        panel.set_xticks(range(len(widths)), [f"{w} px" if w.isdigit() else "main size" for w in widths])
        panel.set_title(FORMAT_NAMES.get(image_format, image_format))
        panel.set_xlabel("width")
        panel.grid(axis="y", alpha=0.3)
        panel.margins(x=0.15, y=0.12)
        panel.legend(fontsize=7)
    axes[0].set_ylabel("bytes / the JPEG's at that width (median)")
    figure.suptitle(_caption("bench/renditions.py", result, f"{result.get('images_per_quality', '?')} photographs "
                                                            "per JPEG quality"), fontsize=9)
    return figure


def draw_codec_floor(result: dict):
    """CPU ms per image: the floor, `compress_image` in process and each of its parts, and `compress_isolated`
    under each isolation mode split into the caller, the fork server and the image processes."""
    least = result["least_of_rounds_ms"]
    in_process = least["in process"]
    rows: list[tuple[str, list[tuple[str, float]]]] = []
    for name, value in in_process.items():
        label = name if name == "compress_image" or name.startswith("floor") else f"- {name}"
        rows.append((label, [("in process", value)]))
    for isolation in (key for key in least if key != "in process"):
        parts = [(part, least[isolation][part]) for part in ("caller (pickling, pipes)", "fork server",
                                                              "image processes") if part in least[isolation]]
        rows.append((f"IMGPIPE_ISOLATION={isolation}", parts))
    figure, (panel,) = _figure(1, 1, width=8.5, height=0.38 * len(rows) + 1.4)
    colours = {"in process": "#4c72b0", "caller (pickling, pipes)": "#dd8452", "fork server": "#55a868",
               "image processes": "#c44e52"}
    labelled = set()
    for y, (label, parts) in enumerate(rows):
        left = 0.0
        for part, value in parts:
            panel.barh(y, value, left=left, color=colours.get(part, "#8172b3"),
                       label=None if part in labelled else part, alpha=0.6 if label.startswith("- ") else 1.0)
            labelled.add(part)
            left += value
        panel.annotate(f"{left:.1f}", (left, y), textcoords="offset points", xytext=(3, -3), fontsize=7)
    floor = next((value for name, value in in_process.items() if name.startswith("floor")), None)
    if floor is not None:
        panel.axvline(floor, color="grey", linestyle="--", linewidth=1, label="the floor")
    panel.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    panel.invert_yaxis()
    panel.set_xlabel("CPU ms per image (least of the rounds)")
    panel.grid(axis="x", alpha=0.3)
    panel.margins(x=0.1)
    panel.legend(fontsize=7, loc="upper right")
    figure.suptitle(_caption("bench/codec_floor.py", result, f"label {result.get('label', '?')}"), fontsize=9)
    return figure


# name: (draw the figure from the JSON, how to make that JSON)
CHARTS: dict[str, tuple[Callable[[dict], object], str]] = {
    "renditions": (draw_renditions, "run `.venv/bin/python bench/renditions.py` (part of `make bench`) and copy "
                                    "bench-results/renditions.json to docs/data/"),
    "codec_floor": (draw_codec_floor, "run `.venv/bin/python bench/codec_floor.py` and copy "
                                      "bench-results/codec-floor-now.json to docs/data/codec_floor.json"),
}


def chart_svg(name: str, data: dict) -> bytes:
    """The chart `name` of `data`, as SVG bytes that depend on the data alone (no date, fixed element IDs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.hashsalt": f"imgpipe-{name}", "svg.fonttype": "none"}):
        figure = CHARTS[name][0](data)
        try:
            figure.tight_layout()
            out = io.BytesIO()
            figure.savefig(out, format="svg", metadata={"Date": None})
        finally:
            plt.close(figure)
    return out.getvalue()


def available(data_dir: Path = DATA) -> dict[str, Path]:
    """The known charts whose JSON is there."""
    return {name: data_dir / f"{name}.json" for name in CHARTS if (data_dir / f"{name}.json").is_file()}


def with_charts(markdown: str, page_uri: str, drawn: set[str]) -> str:
    """`markdown` with each chart marker replaced: by the image of a chart in `drawn`, else by how to make it."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in CHARTS:
            raise PluginError(f"{page_uri}: chart marker for unknown chart {name!r}; known: {', '.join(CHARTS)}")
        if name in drawn:
            target = posixpath.relpath(f"{CHART_DIR}/{name}.svg", posixpath.dirname(page_uri) or ".")
            return f"![Chart: {name.replace('_', ' ')}]({target})"
        return f"*(chart: {CHARTS[name][1]})*"

    return MARKER.sub(replace, markdown)


# ---------------------------------------------------------------------------------------------------- the hooks

def on_files(files, config):
    for name, path in available().items():
        try:
            svg = chart_svg(name, json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise PluginError(f"chart {name}: {path} is not what its bench writes: {exc!r}") from exc
        files.append(File.generated(config, f"{CHART_DIR}/{name}.svg", content=svg))
        log.info("chart %s drawn from %s", name, path.name)
    return files


def on_page_markdown(markdown, page, config, files):
    # Every chart whose JSON is there was drawn: one that could not be fails the build in `on_files`.
    return with_charts(markdown, page.file.src_uri, set(available()))


def _figure(rows: int, columns: int, width: float, height: float):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    return figure, list(axes.flat)


def _caption(command: str, result: dict, what: str) -> str:
    when = str(result.get("when", "?"))[:10]
    cpus = result.get("cpus", "?")
    return f"{command}, {when}, {cpus} CPUs: {what}"
