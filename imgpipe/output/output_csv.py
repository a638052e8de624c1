"""The output CSV of a request (docs/index.md, the example at the top), as bytes; no I/O here.

One row per input row, in input order. Each URL cell lists its slots in input order joined by ", "; a failed
slot is an empty string, so a reader that splits on "," and strips finds every output URL at the index of
its input URL.

Formula injection: a spreadsheet runs a cell starting with `=`, `+`, `-` or `@` (and some also after a
leading tab or CR) as a formula. Serials and product names are user text, so such a value is written with
a leading `'`, which spreadsheets show as text. URL cells always start with "http" or are ours.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

OUTPUT_HEADER = ("S. No.", "Product Name", "Input Image Urls", "Output Image Urls")
URL_SEPARATOR = ", "
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class OutputRow:
    serial: str
    product_name: str
    input_urls: tuple[str, ...]
    output_urls: tuple[str | None, ...]  # None: that slot failed

    def __post_init__(self) -> None:
        if len(self.input_urls) != len(self.output_urls):
            raise ValueError(
                f"row {self.serial!r} has {len(self.input_urls)} input URLs but {len(self.output_urls)} output slots"
            )


def render_output_csv(rows: Iterable[OutputRow]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(OUTPUT_HEADER)
    for row in rows:
        writer.writerow((
            _as_text(row.serial),
            _as_text(row.product_name),
            URL_SEPARATOR.join(row.input_urls),
            URL_SEPARATOR.join(url or "" for url in row.output_urls),
        ))
    return buffer.getvalue().encode("utf-8")


def _as_text(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def rows_from_manifest(
    manifest: pd.DataFrame, output_url_by_slot: Mapping[tuple[int, int], str | None]
) -> list[OutputRow]:
    """One OutputRow per manifest row, by row_number; a slot missing from the mapping counts as failed."""
    rows = []
    for row_number, slots in manifest.groupby("row_number"):
        slots = slots.sort_values("position")
        first = slots.iloc[0]
        rows.append(OutputRow(
            serial=first.serial,
            product_name=first.product_name,
            input_urls=tuple(slots.input_url),
            output_urls=tuple(output_url_by_slot.get((int(row_number), int(position))) for position in slots.position),
        ))
    return rows


def alignment_problems(manifest: pd.DataFrame, rendered: bytes) -> list[str]:
    """What keeps a written output CSV from lining up with its input: rows, order and slot counts."""
    rows = list(csv.reader(io.StringIO(rendered.decode("utf-8"))))
    if not rows or tuple(rows[0]) != OUTPUT_HEADER:
        return [f"header is {rows[0] if rows else 'missing'}, expected {list(OUTPUT_HEADER)}"]
    expected = rows_from_manifest(manifest, {})
    problems = []
    if len(rows) - 1 != len(expected):
        problems.append(f"{len(rows) - 1} rows, the input has {len(expected)}")
    for number, (written, wanted) in enumerate(zip(rows[1:], expected), start=2):
        if written[0] != _as_text(wanted.serial):
            problems.append(f"row {number}: serial {written[0]!r}, the input has {wanted.serial!r}")
        inputs = [u.strip() for u in written[2].split(",")]
        outputs = [u.strip() for u in written[3].split(",")]
        if inputs != list(wanted.input_urls) or len(outputs) != len(inputs):
            problems.append(f"row {number}: {len(outputs)} output slots for {len(wanted.input_urls)} input URLs")
    return problems
