"""Encoder settings for the WebP and AVIF renditions (issue #25), matched to the main output's JPEG quality and
to the rendition's scale.

A rendition should look no worse than the JPEG at the same width, and be as small as that allows. How much
quality that takes depends on the width: a photograph scaled down holds more detail per pixel, where AVIF gains
less on the JPEG than at the main size. So each format has a table per scale (the rendition's width as a fraction
of the image's own, 1 for the main size), mapping the main output's JPEG quality to the lowest encoder quality
whose SSIMULACRA2 score is not below the JPEG's at that width. Qualities between the calibrated JPEG qualities are
interpolated linearly and rounded up, and those outside the table keep the nearest end's offset, clamped to the
encoder's 0..100; a scale between two calibrated ones takes the higher of their two qualities, one below the
smallest takes the smallest's.

Calibrated by bench/renditions.py on the photo corpus of bench/corpus.py (crops of scikit-image's photographs,
1632x1224, so the scales are those of 1632, 960 and 480 pixels), 7 photographs per main-output quality, each from
an input at twice that quality as in production: per JPEG quality and width, the lowest encoder quality at which
the median over the photographs of (its SSIMULACRA2 - the JPEG's) is >= 0 (bisection over the encoder quality;
JPEG as the main output is encoded, resized with Lanczos). Reproduce (it prints the tables to copy here):

    cd /work/main && .venv/bin/python bench/renditions.py
"""
from __future__ import annotations

import itertools
import math

# Pillow's AVIF `speed` (libaom; 0 slowest and smallest .. 10) and WebP `method` (0 fastest .. 6): AVIF's is the
# fastest speed whose bytes at parity meet the 0.6 goal, WebP's the one whose bytes are at its goal for about the
# cost of method 4. The measured trade-off, per speed and method, is in docs/images.md ("Encoder effort").
AVIF_SPEED = 7
WEBP_METHOD = 5

Table = tuple[tuple[int, int], ...]  # (main output's JPEG quality, encoder quality at parity), ascending in both
# The scales calibrated: the bench corpus's main width (1632) and its rendition widths 960 and 480.
SCALES = (1.0, 960 / 1632, 480 / 1632)
WEBP_TABLES: dict[float, Table] = {
    SCALES[0]: ((20, 18), (30, 32), (40, 53), (46, 60)),
    SCALES[1]: ((20, 19), (30, 31), (40, 48), (46, 58)),
    SCALES[2]: ((20, 13), (30, 27), (40, 37), (46, 47)),
}
AVIF_TABLES: dict[float, Table] = {
    SCALES[0]: ((20, 20), (30, 32), (40, 44), (46, 45)),
    SCALES[1]: ((20, 26), (30, 35), (40, 42), (46, 45)),
    SCALES[2]: ((20, 30), (30, 39), (40, 45), (46, 45)),
}

_JPEG_QUALITIES = range(1, 101)
_ENCODER_QUALITIES = range(101)  # Pillow's WebP and AVIF `quality`


def webp_quality(jpeg_quality: int, scale: float = 1.0) -> int:
    """Pillow's WebP `quality` for a rendition at `scale` (its width over the image's) of a main output encoded
    as JPEG at `jpeg_quality` (1..100)."""
    return _quality(WEBP_TABLES, jpeg_quality, scale)


def avif_quality(jpeg_quality: int, scale: float = 1.0) -> int:
    """Pillow's AVIF `quality` for a rendition at `scale` (its width over the image's) of a main output encoded
    as JPEG at `jpeg_quality` (1..100)."""
    return _quality(AVIF_TABLES, jpeg_quality, scale)


def _quality(tables: dict[float, Table], jpeg_quality: int, scale: float) -> int:
    if not 0 < scale <= 1:
        raise ValueError(f"a rendition's scale must be in (0, 1], not {scale}")
    if jpeg_quality not in _JPEG_QUALITIES:
        raise ValueError(f"JPEG quality must be 1..100, not {jpeg_quality}")
    calibrated = sorted(tables)
    # The calibrated scales on either side (the smallest twice below it): the higher quality of the two, so that
    # a width between calibrated ones is held to both.
    above = next((s for s in calibrated if s >= scale), calibrated[-1])
    below = max((s for s in calibrated if s <= scale), default=calibrated[0])
    return max(_interpolate(tables[above], jpeg_quality), _interpolate(tables[below], jpeg_quality))


def _interpolate(table: Table, jpeg_quality: int) -> int:
    (first_jpeg, first_encoder), (last_jpeg, last_encoder) = table[0], table[-1]
    if jpeg_quality <= first_jpeg:
        encoder = first_encoder + jpeg_quality - first_jpeg
    elif jpeg_quality >= last_jpeg:
        encoder = last_encoder + jpeg_quality - last_jpeg
    else:
        (low_jpeg, low_encoder), (high_jpeg, high_encoder) = next(
            (low, high) for low, high in itertools.pairwise(table) if low[0] <= jpeg_quality <= high[0])
        fraction = (jpeg_quality - low_jpeg) / (high_jpeg - low_jpeg)
        # The epsilon keeps float error from rounding an exact point up past it.
        encoder = math.ceil(low_encoder + fraction * (high_encoder - low_encoder) - 1e-9)
    return min(max(encoder, _ENCODER_QUALITIES.start), _ENCODER_QUALITIES.stop - 1)
