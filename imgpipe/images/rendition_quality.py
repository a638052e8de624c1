"""Encoder settings for the WebP and AVIF renditions (issue #25), matched to the main output's JPEG quality.

A rendition should look no worse than the JPEG at the same width, and be as small as that allows. For each format
the table maps the main output's JPEG quality to the lowest encoder quality whose SSIMULACRA2 score is not below
the JPEG's; qualities between the calibrated points are interpolated linearly and rounded up, and those outside
the table keep the nearest end's offset, clamped to the encoder's 0..100.

Calibrated by bench/renditions.py on the photo corpus of bench/corpus.py (crops of scikit-image's photographs,
1632x1224), 7 photographs per main-output quality, each from an input at twice that quality as in production:
per JPEG quality, the lowest encoder quality at which the median over the photographs of (its SSIMULACRA2 - the
JPEG's) is >= 0 at each width, the main size, 960 and 480 (bisection over the encoder quality; JPEG as the main
output is encoded, resized with Lanczos). One quality serves every width, so one width binds (AVIF: 480; WebP:
the main size, or 960 at q20) and the others score above the JPEG. Reproduce (14 CPU-minutes in two processes;
it prints the tables to copy here):

    cd /work/main && .venv/bin/python bench/renditions.py
"""
from __future__ import annotations

import itertools
import math

# Pillow's AVIF `speed` (libaom; 0 slowest and smallest .. 10) and WebP `method` (0 fastest .. 6). Measured at
# parity with the JPEG (q40, 960 wide): bytes as a fraction of the JPEG's, and CPU per image for three renditions
# (main size, 960, 480). AVIF speed 6: 0.50 for 1.9 s, 7: 0.57 for 1.1 s, 8: 0.64 for 0.6 s, 10: 0.66 for 0.16 s;
# 7 is the fastest within the 0.6 goal. WebP method 2: 0.79 for 127 ms, 4: 0.76 for 270 ms, 5: 0.75 for 320 ms,
# 6: 0.73 for 517 ms; 5 is near 4's cost (equal in another run), 6 costs 1.6x. CPU varies ~30% with the load.
AVIF_SPEED = 7
WEBP_METHOD = 5

# (main output's JPEG quality, encoder quality at SSIMULACRA2 parity), ascending in both.
WEBP_TABLE: tuple[tuple[int, int], ...] = ((20, 19), (30, 32), (40, 53), (46, 60))
AVIF_TABLE: tuple[tuple[int, int], ...] = ((20, 30), (30, 39), (40, 45), (46, 45))

_JPEG_QUALITIES = range(1, 101)
_ENCODER_QUALITIES = range(101)  # Pillow's WebP and AVIF `quality`


def webp_quality(jpeg_quality: int) -> int:
    """Pillow's WebP `quality` for a rendition of a main output encoded as JPEG at `jpeg_quality` (1..100)."""
    return _interpolate(WEBP_TABLE, jpeg_quality)


def avif_quality(jpeg_quality: int) -> int:
    """Pillow's AVIF `quality` for a rendition of a main output encoded as JPEG at `jpeg_quality` (1..100)."""
    return _interpolate(AVIF_TABLE, jpeg_quality)


def _interpolate(table: tuple[tuple[int, int], ...], jpeg_quality: int) -> int:
    if jpeg_quality not in _JPEG_QUALITIES:
        raise ValueError(f"JPEG quality must be 1..100, not {jpeg_quality}")
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
