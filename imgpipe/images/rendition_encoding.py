"""Renditions made in an image's own process, from the pixels it decoded for the main output (issue #25).

For each width of the request narrower than the image: the image scaled to it (Lanczos), then its fallback in the
main encode's format (the `fallback` encoder: the same JPEG settings as the main output, or its WebP's for an
image with transparency). At those widths and at the image's own: each asked format, kept only when smaller than
the fallback (or the main output) of its width. Metadata as in the main output: none but the ICC profile.

Encoders: WebP at `webp_quality(q, scale)` with `method=WEBP_METHOD`, AVIF (Pillow's own plugin, libavif) at
`avif_quality(q, scale)` with `speed=AVIF_SPEED` and one thread, where q is the main output's JPEG quality and
scale the rendition's width over the image's (`imgpipe.images.rendition_quality`, calibrated against the JPEG of
the same width).
"""
from __future__ import annotations

import io
from typing import Callable

from PIL import Image

from imgpipe.images.rendition_quality import AVIF_SPEED, WEBP_METHOD, avif_quality, webp_quality
from imgpipe.images.renditions import PILLOW_FORMATS, Rendition, RenditionSpec, height_at, narrower_widths

# Lanczos after a box reduction to within 3x of the target: as good as Lanczos alone to the eye (Pillow's
# documentation) and several times faster from a photograph's size.
REDUCING_GAP = 3.0
# The ICC profile for pixels of a mode ("L" or "RGB"), or None when the image's would not describe them.
ProfileFor = Callable[[str], "bytes | None"]


def make_renditions(image: Image.Image, spec: RenditionSpec, *, fallback: Callable[[Image.Image], bytes],
                    fallback_format: str, main_format: str, main_bytes: int, jpeg_quality: int,
                    profile_for: ProfileFor) -> tuple[Rendition, ...]:
    """The renditions of `spec` of the still `image` (upright, in L, LA, RGB or RGBA), whose main output is
    `main_bytes` of `main_format` encoded at `jpeg_quality`."""
    made = []
    for width in (*narrower_widths(spec, image.width), image.width):
        if width < image.width:
            pixels = image.resize((width, height_at(width, image.width, image.height)), Image.Resampling.LANCZOS,
                                  reducing_gap=REDUCING_GAP)
            encoded = fallback(pixels)
            made.append(Rendition(fallback_format, width, pixels.height, encoded))
            own_format, reference = fallback_format, len(encoded)
        else:
            pixels, own_format, reference = image, main_format, main_bytes
        for name in spec.formats:
            format = PILLOW_FORMATS[name]
            if format == own_format:  # that file is this width's already
                continue
            data = _ENCODERS[format](pixels, jpeg_quality, width / image.width, profile_for)
            if len(data) < reference:
                made.append(Rendition(format, width, pixels.height, data))
    return tuple(made)


def _webp(pixels: Image.Image, jpeg_quality: int, scale: float, profile_for: ProfileFor) -> bytes:
    output = io.BytesIO()
    # WebP holds RGB(A) only (Pillow converts grey), so a profile must describe RGB.
    pixels.save(output, "WEBP", quality=webp_quality(jpeg_quality, scale), method=WEBP_METHOD,
                icc_profile=profile_for("RGB"))
    return output.getvalue()


def _avif(pixels: Image.Image, jpeg_quality: int, scale: float, profile_for: ProfileFor) -> bytes:
    output = io.BytesIO()
    # One thread: the compressor already runs an image per core, where the encoder's own threads would contend.
    # icc_profile is always given: Pillow would otherwise copy the decoded image's own, whatever the mode.
    pixels.save(output, "AVIF", quality=avif_quality(jpeg_quality, scale), speed=AVIF_SPEED, max_threads=1,
                icc_profile=profile_for("L" if pixels.mode == "L" else "RGB"), exif=b"", xmp=b"")
    return output.getvalue()


_ENCODERS = {"WEBP": _webp, "AVIF": _avif}
