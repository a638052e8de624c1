import dataclasses

import dagster
import pandas as pd
import pandera.pandas as pa
import pytest
from dagster_pandera import pandera_schema_to_dagster_type

from imgpipe.intake.csv_schema import (
    CANONICAL_HEADERS,
    MANIFEST_COLUMNS,
    MAX_URL_LENGTH,
    ManifestModel,
    RowError,
    UploadRejected,
    parse_upload,
)
from imgpipe.settings import Limits

HEADER = "S. No.,Product Name,Input Image Urls"
LIMITS = Limits()


def upload(*lines: str, newline: str = "\n") -> bytes:
    return (newline.join(lines) + newline).encode("utf-8")


def parse(data: bytes, limits: Limits = LIMITS) -> pd.DataFrame:
    return parse_upload(data, limits=limits)


def rejection(data: bytes, limits: Limits = LIMITS) -> list[RowError]:
    with pytest.raises(UploadRejected) as caught:
        parse(data, limits)
    return caught.value.errors


def slots(manifest: pd.DataFrame) -> list[tuple]:
    return list(manifest.itertuples(index=False, name=None))


SIMPLE = upload(HEADER, "1,Shirt,https://a/1.jpg", "2,Hat,https://a/2.jpg")
SIMPLE_SLOTS = [(1, "1", "Shirt", 1, "https://a/1.jpg"), (2, "2", "Hat", 1, "https://a/2.jpg")]


@pytest.mark.parametrize(
    "header",
    [
        *(f"{name},Product Name,Input Image Urls" for name in (
            "S. No.", "S. No", "S.No", "Sr No", "Serial Number", "SerialNumber", "Serial", "SNo",
            "s_no", "SERIAL-NUMBER",
        )),
        *(f"S. No.,{name},Input Image Urls" for name in (
            "Product Name", "ProductName", "product_name", " PRODUCT NAME ",
        )),
        *(f"S. No.,Product Name,{name}" for name in
          ("Input Image Urls", "InputImageUrls", "Input URLs", "Image Urls", "input-image-urls", "IMAGE URLS:")),
    ],
)
def test_header_variants_are_recognised(header):
    data = upload(header, "1,Shirt,https://a/1.jpg", "2,Hat,https://a/2.jpg")
    assert slots(parse(data)) == SIMPLE_SLOTS


@pytest.mark.parametrize(
    "header, row",
    [
        ("Input Image Urls,S. No.,Product Name", "https://a/1.jpg,1,Shirt"),
        ("Product Name,Output Image Urls,Input Image Urls,S. No.", "Shirt,https://out/1.jpg,https://a/1.jpg,1"),
        ("Notes,S. No.,Product Name,Input Image Urls,Output Image Urls", "x,1,Shirt,https://a/1.jpg,"),
    ],
)
def test_columns_in_any_order_and_other_columns_ignored(header, row):
    assert slots(parse(upload(header, row))) == [(1, "1", "Shirt", 1, "https://a/1.jpg")]


@pytest.mark.parametrize(
    "data",
    [
        upload(HEADER, "1,Shirt,https://a/1.jpg", "2,Hat,https://a/2.jpg", newline="\r\n"),
        b"\xef\xbb\xbf" + SIMPLE,
        b"\xef\xbb\xbf" + upload(HEADER, "1,Shirt,https://a/1.jpg", "2,Hat,https://a/2.jpg", newline="\r\n"),
        upload("", HEADER, "", "1,Shirt,https://a/1.jpg", "  ,  ,  ", "2,Hat,https://a/2.jpg", ""),
    ],
    ids=["crlf", "bom", "bom-crlf", "blank-lines"],
)
def test_encodings_line_ends_and_blank_lines(data):
    manifest = parse(data)
    assert list(manifest.serial) == ["1", "2"]
    assert list(manifest.product_name) == ["Shirt", "Hat"]
    assert list(manifest.input_url) == ["https://a/1.jpg", "https://a/2.jpg"]


THREE_URLS = ["https://a/1.jpg", "https://a/2.jpg", "https://a/3.jpg"]


@pytest.mark.parametrize(
    "row, expected_urls",
    [
        ('1,Shirt,"https://a/1.jpg, https://a/2.jpg,https://a/3.jpg"', THREE_URLS),
        ("1,Shirt,https://a/1.jpg, https://a/2.jpg ,https://a/3.jpg", THREE_URLS),
        ('1,Shirt,"https://a/1.jpg,,  ,https://a/2.jpg,"', ["https://a/1.jpg", "https://a/2.jpg"]),
        ('1,Shirt,"https://a/1.jpg, https://a/2.jpg",https://a/3.jpg', THREE_URLS),
        ("1,Shirt,https://a/1.jpg,https://a/1.jpg", ["https://a/1.jpg", "https://a/1.jpg"]),
    ],
    ids=["quoted-cell", "unquoted-spill", "empty-pieces-dropped", "quoted-and-spilled", "same-url-twice"],
)
def test_several_urls_in_a_row_become_positions(row, expected_urls):
    manifest = parse(upload(HEADER, row))
    assert list(manifest.input_url) == expected_urls
    assert list(manifest.position) == list(range(1, len(expected_urls) + 1))
    assert set(manifest.row_number) == {1}


@pytest.mark.parametrize(
    "row, serial, product_name",
    [
        ("1.,Shirt,https://a/1.jpg", "1.", "Shirt"),
        ("007,Shirt,https://a/1.jpg", "007", "Shirt"),
        ("1e3,Shirt,https://a/1.jpg", "1e3", "Shirt"),
        ("  12  ,   Blue Shirt  ,   https://a/1.jpg   ", "12", "Blue Shirt"),
        ('A-1,"Shirt, blue",https://a/1.jpg', "A-1", "Shirt, blue"),
        ("9,../../etc/passwd,https://a/1.jpg", "9", "../../etc/passwd"),
        ("10,Café ☕,https://a/1.jpg", "10", "Café ☕"),
    ],
)
def test_serial_and_name_kept_as_text(row, serial, product_name):
    manifest = parse(upload(HEADER, row))
    assert (manifest.serial[0], manifest.product_name[0]) == (serial, product_name)


def test_manifest_shape_and_dtypes():
    manifest = parse(upload(HEADER, '1,Shirt,"https://a/1.jpg,https://a/2.jpg"', "2,Hat,https://a/3.jpg"))
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert manifest.dtypes.to_dict() == {
        "row_number": "int64", "serial": object, "product_name": object, "position": "int64", "input_url": object
    }
    text = manifest[["serial", "product_name", "input_url"]]
    assert all(isinstance(value, str) for value in text.to_numpy().ravel())
    assert slots(manifest) == [
        (1, "1", "Shirt", 1, "https://a/1.jpg"),
        (1, "1", "Shirt", 2, "https://a/2.jpg"),
        (2, "2", "Hat", 1, "https://a/3.jpg"),
    ]


def test_manifest_validates_against_model_and_dagster_type():
    manifest = parse(SIMPLE)
    ManifestModel.validate(manifest, lazy=True)
    dagster_type = pandera_schema_to_dagster_type(ManifestModel)
    assert dagster_type.display_name == "ManifestModel"
    assert dagster.check_dagster_type(dagster_type, manifest).success
    broken = manifest.assign(input_url=["ftp://x/y.jpg", "https://a/2.jpg"])
    assert not dagster.check_dagster_type(dagster_type, broken).success
    with pytest.raises(pa.errors.SchemaErrors):
        ManifestModel.validate(manifest.assign(extra=1), lazy=True)


LONG_URL = "https://a/" + "x" * 40  # 50 characters
U, P, S = CANONICAL_HEADERS[2], CANONICAL_HEADERS[1], CANONICAL_HEADERS[0]


@pytest.mark.parametrize(
    "data, limits, expected",
    [
        pytest.param(upload("S. No.,Input Image Urls", "1,https://a/1.jpg"), LIMITS,
                     (None, P, "column 'Product Name' is missing"), id="missing-column"),
        pytest.param(upload("S. No.,Product Name,Serial,Input Image Urls", "1,Shirt,2,https://a/1.jpg"), LIMITS,
                     (1, S, "column 'S. No.' appears twice"), id="column-twice"),
        pytest.param(upload(HEADER, "1,,https://a/1.jpg"), LIMITS,
                     (2, P, "product name is empty"), id="empty-product-name"),
        pytest.param(upload(HEADER, ",Shirt,https://a/1.jpg"), LIMITS,
                     (2, S, "serial is empty"), id="empty-serial"),
        pytest.param(upload(HEADER, "1,Shirt,https://a/1.jpg", "2,Hat,"), LIMITS,
                     (3, U, "row has no image URLs"), id="row-without-urls"),
        pytest.param(upload(HEADER, '1,Shirt," , ,"'), LIMITS,
                     (2, U, "row has no image URLs"), id="row-with-empty-pieces"),
        pytest.param(upload(HEADER, "1,Shirt,ftp://x/y.jpg"), LIMITS,
                     (2, U, "URL 'ftp://x/y.jpg' is not an absolute http(s) URL"), id="ftp-url"),
        pytest.param(upload(HEADER, "1,Shirt,/images/1.jpg"), LIMITS,
                     (2, U, "URL '/images/1.jpg' is not an absolute http(s) URL"), id="relative-url"),
        pytest.param(upload(HEADER, "1,Shirt,https:///1.jpg"), LIMITS,
                     (2, U, "URL 'https:///1.jpg' is not an absolute http(s) URL"), id="url-without-host"),
        pytest.param(upload(HEADER, "1,Shirt,http://[::1/1.jpg"), LIMITS,
                     (2, U, "is not an absolute http(s) URL"), id="malformed-url"),
        pytest.param(upload(HEADER, "1,Shirt,https://a/my photo.jpg"), LIMITS,
                     (2, U, "URL 'https://a/my photo.jpg' contains whitespace"), id="url-with-space"),
        pytest.param(upload(HEADER, "1,Shirt,https://a/1.jpg", "2,Hat,https://a/2.jpg", "1,Cap,https://a/3.jpg"),
                     LIMITS,
                     (4, S, "serial '1' appears again (first at row 2)"), id="duplicate-serial"),
        pytest.param(upload(HEADER, "1,Shirt\x07,https://a/1.jpg"), LIMITS,
                     (2, P, r"product name 'Shirt\x07' contains a control character"), id="control-in-name"),
        pytest.param(upload(HEADER, '"1\n2",Shirt,https://a/1.jpg'), LIMITS,
                     (2, S, r"serial '1\n2' contains a control character"), id="newline-in-serial"),
        pytest.param(upload(HEADER, "1,Shirt,https://a/1.jpg", "2,Hat,https://a/2.jpg", "3,Cap,https://a/3.jpg"),
                     Limits(max_rows=2), (None, None, "file has more than 2 data rows"), id="too-many-rows"),
        pytest.param(upload(HEADER, "1,Shirt,https://a/1.jpg,https://a/2.jpg,https://a/3.jpg"),
                     Limits(max_urls_per_row=2), (2, U, "row has 3 image URLs, more than the limit of 2"),
                     id="too-many-urls-in-row"),
        pytest.param(upload(HEADER, "1,Shirt,https://a/1.jpg,https://a/2.jpg", "2,Hat,https://a/3.jpg"),
                     Limits(max_urls=2), (None, U, "file has more than 2 image URLs"), id="too-many-urls"),
        pytest.param(upload(HEADER, f"1,Shirt,{LONG_URL}"), Limits(max_url_length=49),
                     (2, U, f"URL '{LONG_URL}' is longer than 49 characters"), id="url-too-long"),
        pytest.param(upload(HEADER, "1,Shirt,https://a/" + "x" * MAX_URL_LENGTH),
                     Limits(max_url_length=10 * MAX_URL_LENGTH),
                     (2, U, f"is longer than {MAX_URL_LENGTH:,} characters"), id="url-past-ceiling"),
        pytest.param(SIMPLE, Limits(max_csv_bytes=len(SIMPLE) - 1),
                     (None, None, f"file is {len(SIMPLE)} bytes, more than the limit of {len(SIMPLE) - 1}"),
                     id="too-large"),
        pytest.param(b"", LIMITS, (None, None, "file is empty"), id="empty-file"),
        pytest.param(b"\n\r\n,,\n", LIMITS, (None, None, "file is empty"), id="blank-file"),
        pytest.param(upload(HEADER), LIMITS, (None, None, "file has a header but no data rows"), id="header-only"),
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", LIMITS,
                     (None, None, "file is not UTF-8 text: byte 0x89 at offset 0 (line 1)"), id="binary-garbage"),
        pytest.param(b"S. No.,Product Name\x00\x00,Input", LIMITS,
                     (None, None, "file contains a NUL character (line 1)"), id="nul-bytes"),
        pytest.param(upload(HEADER, "1,Caf\xe9,https://a/1.jpg").replace(b"\xc3\xa9", b"\xe9"), LIMITS,
                     (None, None, "file is not UTF-8 text: byte 0xE9 at offset 42 (line 2)"), id="latin-1"),
        pytest.param(upload("S. No.,Input Image Urls,Product Name", "1,https://a/1.jpg,https://a/2.jpg,Shirt"), LIMITS,
                     (2, None, "row has 4 cells but the header has 3"), id="spill-when-urls-not-last"),
    ],
)
def test_rejections(data, limits, expected):
    errors = rejection(data, limits)
    row, column, message = expected
    assert any(
        (error.row, error.column) == (row, column) and message in error.message for error in errors
    ), f"{expected} not in {errors}"


def test_every_error_shows_a_value_of_at_most_about_100_characters():
    url = "https://a/" + "x" * 500
    (error,) = rejection(upload(HEADER, f"1,Shirt,{url}"), Limits(max_url_length=100))
    assert (error.row, error.column) == (2, U)
    assert len(error.message) < 160
    assert url[:100] in error.message and url not in error.message


def test_all_problems_are_reported_at_once_in_row_order():
    data = upload(
        HEADER,
        "1,Shirt,https://a/1.jpg",
        "2,,https://a/2.jpg",
        "",
        "3,Hat,ftp://a/3.jpg",
        "1,Cap,https://a/4.jpg",
        "4,Bag,",
    )
    assert [(error.row, error.column, error.message) for error in rejection(data)] == [
        (3, P, "product name is empty"),
        (5, U, "URL 'ftp://a/3.jpg' is not an absolute http(s) URL"),
        (6, S, "serial '1' appears again (first at row 2)"),
        (7, U, "row has no image URLs"),
    ]


def test_a_multi_url_duplicate_serial_is_reported_once():
    data = upload(HEADER, '1,Shirt,"https://a/1.jpg,https://a/2.jpg"', '1,Hat,"https://a/3.jpg,https://a/4.jpg"')
    assert rejection(data) == [RowError(3, S, "serial '1' appears again (first at row 2)")]


def test_file_limits_stop_reading_rows():
    # Row 5 is past the limit, so its bad URL is never looked at.
    data = upload(HEADER, "1,a,https://a/1.jpg", "2,b,https://a/2.jpg", "3,c,https://a/3.jpg", "4,d,ftp://x")
    assert rejection(data, Limits(max_rows=3)) == [RowError(None, None, "file has more than 3 data rows")]


def test_errors_are_dicts_and_summarised():
    errors = rejection(upload(HEADER, "1,,", "2,,", "3,,"))
    assert errors[0].to_dict() == {"row": 2, "column": P, "message": "product name is empty"}
    assert len(errors) == 6
    summary = str(UploadRejected(errors))
    assert summary.startswith("upload rejected with 6 problem(s): row 2, Product Name: product name is empty;")
    assert summary.endswith("; and 3 more")
    with pytest.raises(dataclasses.FrozenInstanceError):
        errors[0].row = 3


def test_a_file_that_is_no_csv_never_has_its_first_line_echoed():
    """A secret or a page named as the CSV: its errors name the columns, never its text."""
    secret = "whsec_c2VjcmV0LWtleS1ieXRlcy0wMTIzNDU2Nzg5"
    errors = rejection(f"{secret}\nsecond line\n".encode(), LIMITS)
    assert len(errors) == 3 and all(secret not in error.message for error in errors)
    assert errors[0].message == "column 'S. No.' is missing (the header has 1 cell(s); recognised: none)"
    partial = rejection(upload("Serial Number,Product Name,notes", "1,Chair,x"), LIMITS)
    assert [e.message for e in partial] == [
        "column 'Input Image Urls' is missing (the header has 3 cell(s); recognised: 'S. No.', 'Product Name')"]


def problems(data: bytes) -> list[tuple]:
    return [(error.row, error.column, error.message) for error in rejection(data)]


def missing(column: str, recognised: str, cells: int) -> tuple:
    return None, column, f"column {column!r} is missing (the header has {cells} cell(s); recognised: {recognised})"


@pytest.mark.parametrize("header, rows, expected", [
    # Without a URL column no row is said to lack URLs: the missing column already says so, once.
    pytest.param("S. No.,Product Name", ["1,Shirt", "2,", "1,Hat"], [
        missing(U, "'S. No.', 'Product Name'", 2),
        (3, P, "product name is empty"),
        (4, S, "serial '1' appears again (first at row 2)"),
    ], id="no-url-column"),
    pytest.param("S. No.,Input Image Urls", ["1,https://a/1.jpg", "2,ftp://a/2.jpg", "1,https://a/3.jpg"], [
        missing(P, "'S. No.', 'Input Image Urls'", 2),
        (3, U, "URL 'ftp://a/2.jpg' is not an absolute http(s) URL"),
        (4, S, "serial '1' appears again (first at row 2)"),
    ], id="no-product-name-column"),
    # The URLs spilling past the one-cell header are not reported as extra cells: they are the missing column's.
    pytest.param("Product Name", ["Shirt,https://a/1.jpg", ",https://a/2.jpg"], [
        missing(S, "'Product Name'", 1),
        missing(U, "'Product Name'", 1),
        (3, P, "product name is empty"),
    ], id="two-missing-columns"),
])
def test_missing_columns_are_reported_with_the_problems_of_the_columns_present(header, rows, expected):
    assert problems(upload(header, *rows)) == expected
