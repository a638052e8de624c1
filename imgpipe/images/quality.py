"""JPEG quality: estimated from an image's quantization tables, and halved for the output (contract section 9).

A JPEG does not record the quality it was saved at, but libjpeg-style (IJG) encoders derive their tables by
scaling the two standard tables of ITU-T T.81 Annex K; the quality whose scaled tables lie closest to an image's
tables is its quality. IJG-made files match one quality exactly; other encoders get the nearest one.
"""
from __future__ import annotations

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), in natural (row-major) order, the order
# Pillow uses for `Image.quantization`.
LUMINANCE_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
CHROMINANCE_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip

QUALITIES = range(1, 101)


def _scale(table: tuple[int, ...], quality: int) -> tuple[int, ...]:
    # libjpeg's jpeg_quality_scaling, in C integer arithmetic; entries are clamped to baseline's 1..255.
    factor = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(min(255, max(1, (entry * factor + 50) // 100)) for entry in table)


def ijg_tables(quality: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The luminance and chrominance tables an IJG encoder writes at `quality` (1..100), in natural order."""
    if quality not in QUALITIES:
        raise ValueError(f"JPEG quality must be 1..100, not {quality}")
    return _scale(LUMINANCE_TABLE, quality), _scale(CHROMINANCE_TABLE, quality)


_TABLES_BY_QUALITY = {quality: ijg_tables(quality) for quality in QUALITIES}


def _qualities_by_tables() -> dict[tuple[int, ...], int]:
    """Each quality's two tables together, and its luminance table alone (for grayscale) -> the quality that
    writes them; where several do, the lowest, as the least-squares rule picks."""
    found = {}
    for quality in reversed(QUALITIES):
        luminance, chrominance = _TABLES_BY_QUALITY[quality]
        found[luminance] = found[luminance + chrominance] = quality
    return found


# Every IJG-made file (libjpeg, libjpeg-turbo, Pillow) is a lookup; only other encoders' tables are searched.
_QUALITY_BY_TABLES = _qualities_by_tables()


def _squared_error(actual: tuple[int, ...], expected: tuple[int, ...]) -> int:
    return sum((a - e) ** 2 for a, e in zip(actual, expected, strict=True))


def estimate_jpeg_quality(quantization: dict[int, list[int]]) -> int:
    """The quality (1..100) whose IJG tables are closest, by squared error, to `quantization`; of several equally
    close, the lowest.

    `quantization` is Pillow's `Image.quantization`: table id -> 64 entries in natural order. Table 0 is
    compared with the luminance table and, when present, table 1 with the chrominance table (a grayscale
    JPEG has only table 0); further tables are not part of the IJG scheme and are ignored.
    """
    if 0 not in quantization:
        raise ValueError("a JPEG needs a luminance quantization table (id 0) to estimate its quality")
    tables = [tuple(quantization[0])] + ([tuple(quantization[1])] if 1 in quantization else [])
    if any(len(table) != 64 for table in tables):
        raise ValueError("a JPEG quantization table has 64 entries")
    exact = _QUALITY_BY_TABLES.get(sum(tables, ()))
    if exact is not None:
        return exact
    return min(QUALITIES, key=lambda quality: sum(
        _squared_error(table, expected) for table, expected in zip(tables, _TABLES_BY_QUALITY[quality])))


def output_quality(quality_in: int) -> int:
    """The quality an image is written at: half its input quality, at least 1."""
    return max(1, round(quality_in / 2))
