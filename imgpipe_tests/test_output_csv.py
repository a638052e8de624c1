import csv
import io

import pandas as pd
import pytest

from imgpipe.output.output_csv import OutputRow, render_output_csv, rows_from_manifest

HEADER = ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]


def read_back(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def slots_of(cell: str) -> list[str]:
    return [url.strip() for url in cell.split(",")]


ROWS = [
    OutputRow("2", "Shirt, blue", ("https://a/1.jpg", "https://a/2.jpg", "https://a/3.jpg"),
              ("https://o/1.jpg", None, "https://o/3.jpg")),
    OutputRow("1.", 'Hat "Deluxe"', ("https://a/4.jpg",), ("https://o/4.jpg",)),
    OutputRow("007", "Café ☕", ("https://a/5.jpg",), (None,)),
]


def test_round_trip_keeps_header_order_and_aligned_slots():
    data = render_output_csv(ROWS)
    assert data.startswith(b"S. No.,Product Name,Input Image Urls,Output Image Urls\r\n")
    header, *rows = read_back(data)
    assert header == HEADER
    assert [row[:2] for row in rows] == [["2", "Shirt, blue"], ["1.", 'Hat "Deluxe"'], ["007", "Café ☕"]]
    assert [len(row) for row in rows] == [4, 4, 4]
    assert slots_of(rows[0][2]) == ["https://a/1.jpg", "https://a/2.jpg", "https://a/3.jpg"]
    assert slots_of(rows[0][3]) == ["https://o/1.jpg", "", "https://o/3.jpg"]
    assert slots_of(rows[1][3]) == ["https://o/4.jpg"]
    assert slots_of(rows[2][3]) == [""]


@pytest.mark.parametrize(
    "output_urls, expected_slots",
    [
        ((None, "https://o/2.jpg"), ["", "https://o/2.jpg"]),
        (("https://o/1.jpg", None), ["https://o/1.jpg", ""]),
        ((None, None), ["", ""]),
    ],
)
def test_failed_slot_keeps_its_position_at_either_end(output_urls, expected_slots):
    row = OutputRow("1", "Shirt", ("https://a/1.jpg", "https://a/2.jpg"), output_urls)
    _, (_, _, _, cell) = read_back(render_output_csv([row]))
    assert slots_of(cell) == expected_slots


def test_no_rows_gives_just_the_header():
    assert read_back(render_output_csv([])) == [HEADER]


@pytest.mark.parametrize(
    "text, written",
    [
        ("=HYPERLINK(\"http://evil\")", "'=HYPERLINK(\"http://evil\")"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("Shirt = 1", "Shirt = 1"),
        ("1.", "1."),
        ("'quoted", "'quoted"),
    ],
)
def test_formula_injection_neutralised_in_serial_and_name(text, written):
    row = OutputRow(text, text, ("https://a/1.jpg",), ("https://o/1.jpg",))
    _, (serial, name, _, _) = read_back(render_output_csv([row]))
    assert (serial, name) == (written, written)


def test_output_row_needs_one_output_slot_per_input_url():
    with pytest.raises(ValueError, match="2 input URLs but 1 output slots"):
        OutputRow("1", "Shirt", ("https://a/1.jpg", "https://a/2.jpg"), ("https://o/1.jpg",))


def test_rows_from_manifest_groups_slots_by_row_in_order():
    manifest = pd.DataFrame.from_records(
        [
            (3, "1", "Hat", 1, "https://a/3.jpg"),
            (1, "2", "Shirt", 2, "https://a/2.jpg"),
            (1, "2", "Shirt", 1, "https://a/1.jpg"),
        ],
        columns=["row_number", "serial", "product_name", "position", "input_url"],
    )
    output_url_by_slot = {(1, 1): "https://o/1.jpg", (1, 2): None}
    assert rows_from_manifest(manifest, output_url_by_slot) == [
        OutputRow("2", "Shirt", ("https://a/1.jpg", "https://a/2.jpg"), ("https://o/1.jpg", None)),
        OutputRow("1", "Hat", ("https://a/3.jpg",), (None,)),
    ]
