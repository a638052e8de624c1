"""What a valid upload is (docs/getting-started.md#handing-over-a-csv), and turning uploaded bytes into the
manifest.

The manifest is long: one row per image slot. `ManifestModel` is the single definition of a valid one; it is
also the Dagster type of the manifest asset. `parse_upload` does only what a schema cannot (decoding, header
matching, limits), then lets the model judge every value and reports all problems at once as `RowError`s.
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from imgpipe.settings import Limits

CANONICAL_HEADERS = ("S. No.", "Product Name", "Input Image Urls")
SERIAL, PRODUCT_NAME, INPUT_URLS = CANONICAL_HEADERS
MANIFEST_COLUMNS = ("row_number", "serial", "product_name", "position", "input_url")

# A fixed ceiling, whatever the configured limit: common web servers refuse request lines past 8 KiB.
MAX_URL_LENGTH = 8192

_HEADER_ALIASES = {
    SERIAL: ("S. No.", "S. No", "S.No", "Sr No", "Serial Number", "SerialNumber", "Serial", "SNo"),
    PRODUCT_NAME: ("Product Name", "ProductName"),
    INPUT_URLS: ("Input Image Urls", "InputImageUrls", "Input URLs", "Image Urls"),
}
_HEADER_BY_FIELD = {"serial": SERIAL, "product_name": PRODUCT_NAME, "position": INPUT_URLS, "input_url": INPUT_URLS}
_FIELD_BY_HEADER = {SERIAL: "serial", PRODUCT_NAME: "product_name", INPUT_URLS: "input_url"}
_CONTROL_CHARACTER = r"[\x00-\x1f\x7f-\x9f]"
_SHOWN_CHARACTERS = 100


def _header_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.casefold())


_HEADER_BY_KEY = {_header_key(alias): header for header, aliases in _HEADER_ALIASES.items() for alias in aliases}


def _shown(value: object) -> str:
    text = str(value)
    if len(text) > _SHOWN_CHARACTERS:
        text = text[:_SHOWN_CHARACTERS] + "…"
    return repr(text)


@dataclass(frozen=True)
class RowError:
    """One problem of an upload. `row` is the row a spreadsheet shows (header = 1); None for the whole file."""

    row: int | None
    column: str | None
    message: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = "file" if self.row is None else f"row {self.row}"
        if self.column:
            where += f", {self.column}"
        return f"{where}: {self.message}"


class UploadRejected(Exception):
    """The upload is invalid; `errors` lists every problem found."""

    def __init__(self, errors: list[RowError]):
        super().__init__(errors)
        self.errors = errors

    def __str__(self) -> str:
        shown = 3
        summary = f"upload rejected with {len(self.errors)} problem(s): " + "; ".join(map(str, self.errors[:shown]))
        if len(self.errors) > shown:
            summary += f"; and {len(self.errors) - shown} more"
        return summary


def _is_absolute_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class ManifestModel(pa.DataFrameModel):
    """One row per image slot of a valid upload.

    Each check's `error` is the message template shown to the user, `{value}` being the offending value.
    """

    row_number: Series[int] = pa.Field(ge=1, description="1-based data row; a spreadsheet shows it as row_number + 1")
    serial: Series[str] = pa.Field(description="the serial number, as given")
    product_name: Series[str]
    position: Series[int] = pa.Field(ge=1, description="1-based slot within its row")
    input_url: Series[str]

    @pa.check("serial", error="serial is empty")
    def serial_present(cls, serial: Series[str]) -> Series[bool]:
        return serial.str.strip() != ""

    @pa.check("serial", error="serial {value} contains a control character")
    def serial_printable(cls, serial: Series[str]) -> Series[bool]:
        return ~serial.str.contains(_CONTROL_CHARACTER)

    @pa.check("product_name", error="product name is empty")
    def product_name_present(cls, product_name: Series[str]) -> Series[bool]:
        return product_name.str.strip() != ""

    @pa.check("product_name", error="product name {value} contains a control character")
    def product_name_printable(cls, product_name: Series[str]) -> Series[bool]:
        return ~product_name.str.contains(_CONTROL_CHARACTER)

    # A row without URLs is a single slot with an empty URL, so that this check reports it.
    @pa.check("input_url", error="row has no image URLs")
    def url_present(cls, input_url: Series[str]) -> Series[bool]:
        return input_url != ""

    # An empty URL passes here: `url_present` already reports it.
    @pa.check("input_url", element_wise=True, error="URL {value} is not an absolute http(s) URL")
    def url_absolute_http(cls, url: str) -> bool:
        return url == "" or _is_absolute_http_url(url)

    @pa.check("input_url", error="URL {value} contains whitespace or a control character")
    def url_unbroken(cls, input_url: Series[str]) -> Series[bool]:
        return ~input_url.str.contains(r"\s|" + _CONTROL_CHARACTER)

    @pa.check("input_url", error=f"URL {{value}} is longer than {MAX_URL_LENGTH:,} characters")
    def url_bounded(cls, input_url: Series[str]) -> Series[bool]:
        return input_url.str.len() <= MAX_URL_LENGTH

    class Config:
        strict = True
        ordered = True
        coerce = True
        # Every row has a slot at position 1, so a serial used by two rows repeats a pair.
        unique = ["serial", "position"]


def parse_upload(data: bytes, *, limits: Limits) -> pd.DataFrame:
    """The validated manifest of an uploaded CSV, or UploadRejected listing every problem."""
    records = _records(_decode(data, limits))
    header, errors = _read_header(records)
    slots, slot_errors = _read_slots(records, header, limits)
    errors += slot_errors
    manifest = pd.DataFrame.from_records(slots, columns=MANIFEST_COLUMNS)
    try:
        manifest = _schema(header.missing).validate(manifest, lazy=True)
    except pa.errors.SchemaErrors as exc:
        errors += _schema_errors(exc.failure_cases, manifest)
    if errors:
        # A repeated (serial, position) pair fails once per column of the pair: the same RowError twice.
        unique_errors = list(dict.fromkeys(errors))
        raise UploadRejected(sorted(unique_errors, key=lambda error: (error.row is not None, error.row or 0)))
    return manifest


def _schema(missing: tuple[str, ...]) -> pa.DataFrameSchema:
    """ManifestModel without the checks of the missing columns: their cells read as empty, so every row would fail
    them, only repeating that the column is missing."""
    schema = ManifestModel.to_schema()
    if missing:
        schema = schema.update_columns({_FIELD_BY_HEADER[header]: {"checks": []} for header in missing})
        if SERIAL in missing:
            schema.unique = None  # the duplicate-serial check
    return schema


def _reject(message: str) -> UploadRejected:
    return UploadRejected([RowError(None, None, message)])


def _decode(data: bytes, limits: Limits) -> str:
    if len(data) > limits.max_csv_bytes:
        raise _reject(f"file is {len(data):,} bytes, more than the limit of {limits.max_csv_bytes:,}")
    try:
        # Decoding the BOM as a character (rather than with utf-8-sig) keeps error offsets those of the file.
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _reject(
            f"file is not UTF-8 text: byte 0x{data[exc.start]:02X} at offset {exc.start} (line {line}); "
            "save it as 'CSV UTF-8'"
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise _reject(f"file contains a NUL character (line {line}); it looks binary, not CSV")
    return text


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """Each CSV record with its spreadsheet row number, cells stripped and trailing empty cells dropped."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row, cells in enumerate(reader, start=1):
            cells = [cell.strip() for cell in cells]
            while cells and not cells[-1]:
                cells.pop()
            yield row, cells
    except csv.Error as exc:
        raise _reject(f"file is not valid CSV near line {reader.line_num}: {exc}") from None


@dataclass(frozen=True)
class _Header:
    column_by_field: dict[str, int]
    width: int

    @property
    def missing(self) -> tuple[str, ...]:
        """The canonical headers of the required columns the header lacks."""
        return tuple(header for header, field in _FIELD_BY_HEADER.items() if field not in self.column_by_field)

    def cell(self, cells: list[str], field: str) -> str:
        column = self.column_by_field.get(field)
        return cells[column] if column is not None and column < len(cells) else ""

    @property
    def urls_spill(self) -> bool:
        """Whether cells past the header are more URLs: only unambiguous when the URL column is the last."""
        return self.column_by_field.get("input_url") == self.width - 1


def _read_header(records: Iterator[tuple[int, list[str]]]) -> tuple[_Header, list[RowError]]:
    """The header, and its problems; the rows are still read when some are missing, so that theirs are reported too."""
    for row, cells in records:
        if cells:
            break
    else:
        raise _reject("file is empty")
    column_by_field: dict[str, int] = {}
    errors = []
    for column, name in enumerate(cells):
        header = _HEADER_BY_KEY.get(_header_key(name))
        if header is None:
            continue
        field = _FIELD_BY_HEADER[header]
        if field in column_by_field:
            first = cells[column_by_field[field]]
            errors.append(RowError(row, header, f"column {header!r} appears twice: {_shown(first)} and {_shown(name)}"))
        else:
            column_by_field[field] = column
    # The header's own text is not echoed back: a file that is no CSV at all (a secret, a page of HTML) would
    # have its first line published in the request's errors. The columns recognised are named instead.
    parsed = _Header(column_by_field, width=len(cells))
    recognised = ", ".join(repr(header) for header in CANONICAL_HEADERS if header not in parsed.missing)
    found = f"the header has {len(cells)} cell(s); recognised: {recognised or 'none'}"
    errors += [RowError(None, header, f"column {header!r} is missing ({found})") for header in parsed.missing]
    return parsed, errors


def _read_slots(
    records: Iterator[tuple[int, list[str]]], header: _Header, limits: Limits
) -> tuple[list[tuple[int, str, str, int, str]], list[RowError]]:
    """Manifest rows of the data rows, and the limits they break; stops at the first file-wide limit."""
    slots = []
    errors = []
    rows_seen = urls_seen = 0
    for row, cells in records:
        if not cells:
            continue
        if rows_seen == limits.max_rows:
            errors.append(RowError(None, None, f"file has more than {limits.max_rows:,} data rows"))
            break
        rows_seen += 1
        if header.urls_spill:
            url_cells = cells[header.column_by_field["input_url"] :]
        else:
            url_cells = [header.cell(cells, "input_url")]
            # Without a URL column, cells past the header are most likely its URLs, and it is reported missing.
            if len(cells) > header.width and INPUT_URLS not in header.missing:
                errors.append(RowError(
                    row, None,
                    f"row has {len(cells)} cells but the header has {header.width}; quote cells that contain commas",
                ))
        urls = [url.strip() for cell in url_cells for url in cell.split(",") if url.strip()]
        if len(urls) > limits.max_urls_per_row:
            errors.append(RowError(
                row, INPUT_URLS, f"row has {len(urls)} image URLs, more than the limit of {limits.max_urls_per_row:,}"
            ))
            urls = urls[: limits.max_urls_per_row]
        urls_seen += len(urls)
        if urls_seen > limits.max_urls:
            errors.append(RowError(None, INPUT_URLS, f"file has more than {limits.max_urls:,} image URLs"))
            break
        for url in urls:
            # Past MAX_URL_LENGTH the schema reports it; reporting it here too would say it twice.
            if limits.max_url_length < len(url) <= MAX_URL_LENGTH:
                errors.append(RowError(
                    row, INPUT_URLS, f"URL {_shown(url)} is longer than {limits.max_url_length:,} characters"
                ))
        serial, product_name = header.cell(cells, "serial"), header.cell(cells, "product_name")
        slots += [(row - 1, serial, product_name, position, url) for position, url in enumerate(urls or [""], 1)]
    if rows_seen == 0:
        errors.append(RowError(None, None, "file has a header but no data rows"))
    return slots, errors


def _schema_errors(failure_cases: pd.DataFrame, manifest: pd.DataFrame) -> list[RowError]:
    first_row_by_serial = manifest.groupby("serial").row_number.min() + 1
    errors = []
    for failure in failure_cases.to_dict("records"):
        row = int(manifest.at[failure["index"], "row_number"]) + 1
        if failure["check"] == "multiple_fields_uniqueness":
            serial = manifest.at[failure["index"], "serial"]
            first_row = int(first_row_by_serial[serial])
            # pandera flags every copy, the first one too, which is not the mistake.
            if row != first_row:
                message = f"serial {_shown(serial)} appears again (first at row {first_row})"
                errors.append(RowError(row, SERIAL, message))
        else:
            message = failure["check"].format(value=_shown(failure["failure_case"]))
            errors.append(RowError(row, _HEADER_BY_FIELD.get(failure["column"]), message))
    return errors
