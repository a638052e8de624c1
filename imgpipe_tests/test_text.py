"""printable(): text from outside made fit to store and to log."""
from __future__ import annotations

import random

import pytest

from imgpipe.text import ascii_int, declares_over, markdown_text, printable


def unprintable(text: str) -> list[str]:
    return [char for char in text if not char.isprintable()]


def test_printable_text_is_kept_as_it_is():
    text = "HTTP 404 from https://例え.jp/Bild für Größe – ½ \"x\" 'y' \\ ✓"

    assert printable(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\x00b", "a\\x00b"),
        ("tab\there", "tab\\x09here"),
        ("line\r\nbreak", "line\\x0d\\x0abreak"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85\x9b31m", "c1\\x85\\x9b31m"),  # NEL, and the one-byte form of ESC [
        ("no\u00a0break", "no\\xa0break"),  # every space but the plain one
    ],
    ids=["nul", "tab", "line break", "del", "c1", "no-break space"],
)
def test_a_control_character_becomes_a_visible_escape(text, expected):
    assert printable(text) == expected


def test_an_ansi_escape_sequence_keeps_no_escape_character():
    assert printable("bad\x00\x1b[31mred\x1b[0m\x1b]0;title\x07") == "bad\\x00\\x1b[31mred\\x1b[0m\\x1b]0;title\\x07"


def test_lone_surrogates_separators_and_direction_overrides_are_escaped():
    assert printable("a\udc80b\u2028c\u202ed") == "a\\udc80b\\u2028c\\u202ed"


def test_text_over_the_limit_is_cut_with_an_ellipsis():
    assert printable("x" * 500) == "x" * 500
    assert printable("x" * 501) == "x" * 499 + "…"
    assert printable("abcdef", limit=5) == "abcd…"


def test_an_escape_is_never_cut_in_half():
    assert printable("abc\x00", limit=6) == "abc…"
    assert printable("\x00" * 10, limit=10) == "\\x00\\x00…"


def test_any_text_comes_out_printable_and_bounded():
    rng = random.Random(20240601)
    # Code points from every range that matters: ASCII and C0, C1 and Latin-1, surrogates, the rest of the BMP,
    # and the astral planes.
    ranges = [(0, 0x7F), (0x80, 0xFF), (0xD800, 0xDFFF), (0x100, 0xFFFF), (0x10000, 0x10FFFF)]
    for _ in range(300):
        text = "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(0, 700)))
        limit = rng.choice([1, 2, 5, 40, 500])

        result = printable(text, limit)

        assert unprintable(result) == []
        assert len(result) <= limit
        assert printable(result, limit) == result  # printable text stays as it is


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError):
        printable("text", limit=0)


def test_markdown_text_shows_a_servers_text_as_itself():
    hostile = "HTTP 500 [click](javascript:alert(1)) <img src=x onerror=y> | next cell\n# heading \x00\x1b[31m"
    shown = markdown_text(hostile)
    assert shown == ("HTTP 500 \\[click\\](javascript:alert(1)) \\<img src=x onerror=y\\> \\| next cell"
                     "\\\\x0a# heading \\\\x00\\\\x1b\\[31m")
    assert "\n" not in shown and "|" not in shown.replace("\\|", "")


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("1700000000", 1700000000), ("", None), ("²", None), ("١٢", None), ("１２", None), (" 12", None),
    ("+12", None), ("1_0", None), ("-1", None), ("1" * 19, None),
])
def test_ascii_int_reads_ascii_digits_only(text, expected):
    assert ascii_int(text) == expected


@pytest.mark.parametrize("length, over", [("11", True), ("10", False), ("9" * 30, True), ("²", False), ("", False),
                                          ("abc", False)])
def test_a_declared_length_over_the_limit(length, over):
    assert declares_over(length, 10) is over
