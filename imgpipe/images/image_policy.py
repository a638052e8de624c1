"""The image policy of contract section 9: how one downloaded image is decoded, checked and re-encoded.

Runs inside a short-lived child process (`imgpipe.images.compression_worker`), so it logs nothing and starts no
threads; every problem with the image itself is an `ImageRejected` carrying a reason fit for the status store.
"""
from __future__ import annotations

import functools
import io
import struct
import warnings
from dataclasses import dataclass
from typing import NamedTuple

from PIL import (AvifImagePlugin, BmpImagePlugin, GifImagePlugin, Image, ImageCms, ImageFile, ImageOps,  # noqa: F401
                 JpegImagePlugin, MpoImagePlugin, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError,
                 WebPImagePlugin)

from imgpipe.images.jpeg_scan import ScanData, check_scan_lengths, check_where_it_ends, read_scan_data
from imgpipe.images.metadata import MalformedContainer, strip_metadata
from imgpipe.images.quality import estimate_jpeg_quality, output_quality
from imgpipe.images.rendition_encoding import make_renditions
from imgpipe.images.renditions import Rendition, RenditionSpec

# The plugins of the formats read and written are registered by their imports above, in the parent, so that each
# forked child finds them imported. Not `Image.init()`: its 40-odd other plugins (PDF, DDS, ICNS ...) took half of
# a fork server's start, which a run pays while it works (docs/performance.md#re-uploads), for decoders the
# policy never lets open a file. `Image.preinit()`, which Pillow runs on the first open or save of a process, adds
# only the PPM plugin to those; run here, in the parent, it is not run again by each child, which imported that
# module for every image (about 1 ms of its CPU).
Image.preinit()

# AVIF only when this Pillow build can read it. An MPO (a JPEG with extra frames) opens through "JPEG".
READABLE_FORMATS = tuple(f for f in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "AVIF") if f in Image.OPEN)
# In these formats further frames are animation; a TIFF's are pages of a document, of which the first is used.
ANIMATION_FORMATS = frozenset({"GIF", "PNG", "WEBP", "AVIF"})
# Lossless input, and lossy input whose quality cannot be read, counts as this quality.
ASSUMED_QUALITY = 100
# Outputs are kept by the SHA-256 of their input and this version, and reused for the same input bytes: bump it
# whenever a change here would make a different output, so that no output of the old policy is reused.
POLICY_VERSION = 3
# The longer side of the before and after thumbnails of the request's report.
THUMBNAIL_SIZE = 160
# What an input kept as the output (never larger) is served as.
KEPT_FORMATS = {"JPEG": ("JPEG", ".jpg"), "MPO": ("JPEG", ".jpg"), "PNG": ("PNG", ".png"),
                "GIF": ("GIF", ".gif"), "WEBP": ("WEBP", ".webp"), "BMP": ("BMP", ".bmp")}

# What Pillow raises for data it cannot decode (its own open() takes the last three for "not this format").
_DECODE_ERRORS = (OSError, EOFError, ValueError, SyntaxError, IndexError, struct.error)

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_SRGB_BYTES = _SRGB.tobytes()
_GRAY_MODES = frozenset({"L", "LA", "La", "1", "I", "F"})
_PROFILE_SPACES = {"L": "GRAY", "RGB": "RGB "}


class ImageRejected(Exception):
    """The image cannot or must not be compressed; the message says why, for the person who sent it."""


@dataclass(frozen=True)
class CompressedImage:
    data: bytes
    format: str  # "JPEG" or "WEBP"; the input's own format when the input was kept (see `note`)
    extension: str  # ".jpg", ".webp", or the kept input's
    quality_in: int
    quality_out: int  # the quality encoded at, also when the encode was not kept
    width: int
    height: int
    input_format: str  # as Pillow names it: "JPEG", "MPO", "PNG", "GIF", ...
    thumbnail_before: bytes  # small JPEGs for the request's report
    thumbnail_after: bytes
    note: str | None = None  # why the output is not the half-quality encode
    renditions: tuple[Rendition, ...] = ()  # what `renditions` asked for, of a still image (see rendition_encoding)


def compress_image(data: bytes, *, max_pixels: int, max_frames: int,
                   renditions: RenditionSpec | None = None) -> CompressedImage:
    """Re-encode one image per contract section 9, or raise `ImageRejected`; with `renditions`, also make those
    of a still image from the same decoded pixels (an animation gets none).

    Changes process-wide settings (the warnings filter, Pillow's LOAD_TRUNCATED_IMAGES) while it runs, which is
    why it belongs in a child process.
    """
    # Pillow's errors for data that runs out are what refuse a cut file; nothing imported into this process may
    # have turned them into a silently grey image.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with _open(data) as source:
                return _compress(data, source, max_pixels, max_frames, renditions)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _beyond_pillow_limit(exc, max_pixels) from None


def _open(data: bytes) -> ImageFile.ImageFile:
    # Opening reads only the header, so the size is checked before any pixel is decoded.
    try:
        return Image.open(io.BytesIO(data), formats=READABLE_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised format)") from None
    except _DECODE_ERRORS as exc:
        raise _corrupt(exc) from None


def _compress(data: bytes, source: ImageFile.ImageFile, max_pixels: int, max_frames: int,
              spec: RenditionSpec | None) -> CompressedImage:
    is_jpeg = source.format in ("JPEG", "MPO")
    # Read before any transform: a transposed copy is no longer a JPEG, and "keep" would lose the sampling.
    # Anything but a JPEG gets -1, the encoder's default (4:2:0).
    subsampling = JpegImagePlugin.get_sampling(source)
    try:
        quality_in = estimate_jpeg_quality(source.quantization) if is_jpeg else ASSUMED_QUALITY
        frame_count = source.n_frames if source.format in ANIMATION_FORMATS else 1
        if frame_count > max_frames:
            raise ImageRejected(f"animation has {frame_count} frames, the limit is {max_frames}")
        scan_data = read_scan_data(data) if is_jpeg else None
        frames, durations, icc_profile = _decode(source, frame_count, max_pixels, scan_data)
    except _DECODE_ERRORS as exc:
        raise _corrupt(exc) from None

    quality_out = output_quality(quality_in)
    # The image's profile for pixels of a mode, read once a mode: the main encode and every rendition's use it.
    profile_for = functools.cache(functools.partial(_profile_for, icc_profile=icc_profile))
    if frame_count == 1 and _is_opaque(frames[0]):
        image, out_format, extension = _without_alpha(frames[0]), "JPEG", ".jpg"
        profile = profile_for(image.mode)

        def encode(pixels: Image.Image) -> bytes:
            return _encode_jpeg(pixels, quality_out, subsampling, profile)

        output = encode(image)
    else:
        image, out_format, extension = frames[0], "WEBP", ".webp"
        loop = source.info.get("loop", 1)  # a GIF without a loop count plays once
        profile = profile_for("RGB")

        def encode(pixels: Image.Image) -> bytes:
            return _encode_webp([pixels], durations[:1], loop, quality_out, profile)

        output = _encode_webp(frames, durations, loop, quality_out, profile)
    chosen = _smallest(data, source, output, out_format, extension, quality_out)
    thumbnail_before = _thumbnail(image)
    # Of the same pixels; a rendition's fallback is encoded as the main output is.
    renditions = make_renditions(
        image, spec, fallback=encode, fallback_format=out_format, main_format=chosen.format,
        main_bytes=len(chosen.data), jpeg_quality=quality_out,
        profile_for=profile_for) if spec and frame_count == 1 else ()

    return CompressedImage(
        data=chosen.data,
        format=chosen.format,
        extension=chosen.extension,
        quality_in=quality_in,
        quality_out=quality_out,
        width=image.width,
        height=image.height,
        input_format=source.format,
        thumbnail_before=thumbnail_before,
        thumbnail_after=thumbnail_before if chosen.input_pixels else _thumbnail_of_encoded(chosen.data, image),
        note=chosen.note,
        renditions=renditions,
    )


class _Output(NamedTuple):
    data: bytes
    format: str
    extension: str
    note: str | None = None
    input_pixels: bool = False  # the input's own compressed pixels (without its metadata): it looks as it did


def _smallest(data: bytes, source: ImageFile.ImageFile, encoded: bytes, encoded_format: str, encoded_extension: str,
              quality_out: int) -> _Output:
    """The smaller of the half-quality encode and the input without its EXIF and XMP (removed losslessly, ICC
    kept), so that an output is never larger than its input; on a tie, the encode. An AVIF's metadata cannot be
    removed losslessly here: when its encode is larger, an AVIF without any is kept as it is, one with some is
    encoded as AVIF at the same half quality. What is left (a TIFF, an AVIF whose encodes all grow) fails with
    the reason."""
    orientation = source.getexif().get(0x0112, 1) if source.format in ("JPEG", "MPO") else 1
    try:
        stripped = strip_metadata(data, source.format, orientation)
    except MalformedContainer:
        stripped = None
    if stripped is not None and len(stripped) < len(encoded):
        kept_format, kept_extension = KEPT_FORMATS[source.format]
        return _Output(stripped, kept_format, kept_extension, (
            f"kept the input without EXIF/XMP ({len(stripped):,} bytes): the half-quality encode was "
            f"{len(encoded):,} bytes"), input_pixels=True)
    if len(encoded) <= len(data):
        return _Output(encoded, encoded_format, encoded_extension)
    if source.format == "AVIF" and not source.getexif() and not source.info.get("xmp"):
        return _Output(data, "AVIF", ".avif", (
            f"kept the input, which carries no EXIF/XMP: the half-quality encode was {len(encoded):,} bytes, more "
            f"than the input's {len(data):,}"), input_pixels=True)
    if source.format == "AVIF":
        own = io.BytesIO()
        source.seek(0)
        source.save(own, "AVIF", quality=quality_out, exif=b"", xmp=b"")
        if own.tell() <= len(data):
            return _Output(own.getvalue(), "AVIF", ".avif", (
                f"encoded as AVIF ({own.tell():,} bytes): the half-quality JPEG or WebP was {len(encoded):,} bytes, "
                f"more than the input's {len(data):,}"))
    raise ImageRejected(
        f"the half-quality encode ({len(encoded):,} bytes) is larger than the input ({len(data):,} bytes), and a "
        f"{source.format} cannot be kept without its metadata losslessly")


def _reduction(size: tuple[int, int]) -> int:
    """The factor a thumbnail starts from: the largest of JPEG's DCT scalings (1/8, 1/4, 1/2) that leaves the
    longer side at least the thumbnail's."""
    return next((factor for factor in (8, 4, 2) if max(size) >= factor * THUMBNAIL_SIZE), 1)


def _thumbnail(image: Image.Image) -> bytes:
    """A small JPEG of `image`: reduced by `_reduction` (a box filter over the pixels, as JPEG's DCT scaling
    averages each block), then resized smoothly to the thumbnail's size."""
    reduction = _reduction(image.size)
    small = image.reduce(reduction) if reduction > 1 else image.copy()
    small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    if small.mode not in ("RGB", "L"):
        small = _on_white(small)
    output = io.BytesIO()
    small.save(output, "JPEG", quality=80)
    return output.getvalue()


def _thumbnail_of_encoded(encoded: bytes, fallback: Image.Image) -> bytes:
    """The thumbnail of the encode as a viewer decodes it (its first frame for animations). A JPEG is decoded at
    `_reduction` already, through its DCT scaling: at 1/8, a fraction of a full decode."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            reduction = _reduction(image.size)
            image.draft(None, (max(1, image.width // reduction), max(1, image.height // reduction)))
            image.load()
            return _thumbnail(image)
    except _DECODE_ERRORS:
        return _thumbnail(fallback)


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _decode(
    source: ImageFile.ImageFile, frame_count: int, max_pixels: int, scan_data: ScanData | None
) -> tuple[list[Image.Image], list[float], bytes | None]:
    """Every frame decoded and upright, in L, LA, RGB or RGBA (animation frames in RGBA, as WebP stores
    them); the frames' durations; the ICC profile that came with the pixels. A JPEG's `scan_data` is checked
    before and after decoding."""
    frames, durations = [], []
    source_profile = icc_profile = source.info.get("icc_profile")
    canvas_size = source.size
    for index in range(frame_count):
        source.seek(index)
        # From the header, before decoding; for every frame, as a GIF frame may grow the canvas.
        _check_pixels(source.size, max_pixels)
        if scan_data is not None:
            check_scan_lengths(scan_data)
        source.load()
        if scan_data is not None:  # before anything transforms the decoded pixels
            check_where_it_ends(scan_data, source)
        frame, icc_profile = _normalise(source, source_profile)
        if frame_count > 1:
            # Also a copy of its own: the next seek overwrites `source`, and a GIF draws on the previous frame.
            frame = frame.convert("RGBA")
            # WebP needs one size for all frames, but Pillow grows a GIF's canvas for a frame that lies partly
            # outside it; such frames are cut to the canvas the header declares, as the GIF format intends.
            if frame.size != canvas_size:
                frame = frame.crop((0, 0, *canvas_size))
        ImageOps.exif_transpose(frame, in_place=True)
        frames.append(frame)
        durations.append(source.info.get("duration", 0))
    return frames, durations, icc_profile


def _encode_jpeg(image: Image.Image, quality: int, subsampling: int, icc_profile: bytes | None) -> bytes:
    output = io.BytesIO()
    # comment=b"": Pillow would otherwise copy a JPEG comment across; of the metadata only the profile stays.
    image.save(
        output,
        "JPEG",
        quality=quality,
        subsampling=subsampling,
        optimize=True,
        icc_profile=icc_profile,
        comment=b"",
    )
    return output.getvalue()


def _encode_webp(
    frames: list[Image.Image], durations: list[float], loop: int, quality: int, icc_profile: bytes | None
) -> bytes:
    output = io.BytesIO()
    frames[0].save(
        output,
        "WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=loop,
        quality=quality,
        icc_profile=icc_profile,
    )
    return output.getvalue()


def _normalise(frame: Image.Image, icc_profile: bytes | None) -> tuple[Image.Image, bytes | None]:
    """`frame` in L, LA, RGB or RGBA, with the ICC profile that describes the result."""
    if frame.mode == "CMYK":
        return _cmyk_to_rgb(frame, icc_profile)
    if frame.mode.startswith("I"):
        # 16-bit samples (PNG, TIFF): a plain convert would clip everything above 255 to white.
        frame = frame.convert("I").point(lambda value: value / 257)
    has_alpha = frame.has_transparency_data
    if frame.mode in _GRAY_MODES:
        target = "LA" if has_alpha else "L"
    else:
        target = "RGBA" if has_alpha else "RGB"
    return (frame if frame.mode == target else frame.convert(target)), icc_profile


def _cmyk_to_rgb(frame: Image.Image, icc_profile: bytes | None) -> tuple[Image.Image, bytes | None]:
    if icc_profile:
        try:
            converted = ImageCms.profileToProfile(
                frame, ImageCms.ImageCmsProfile(io.BytesIO(icc_profile)), _SRGB, outputMode="RGB"
            )
            return converted, _SRGB_BYTES
        except ImageCms.PyCMSError:
            pass  # a broken or non-CMYK profile: the plain conversion below still gives a usable image
    return frame.convert("RGB"), None


def _is_opaque(frame: Image.Image) -> bool:
    return frame.mode not in ("LA", "RGBA") or frame.getchannel("A").getextrema()[0] == 255


def _without_alpha(frame: Image.Image) -> Image.Image:
    return frame.convert(frame.mode.removesuffix("A")) if frame.mode in ("LA", "RGBA") else frame


def _profile_for(mode: str, icc_profile: bytes | None) -> bytes | None:
    """`icc_profile` when it describes pixels of `mode`; a grayscale profile on RGB pixels, or one that
    cannot be read, would mislead the viewer and is dropped."""
    if not icc_profile:
        return None
    try:
        space = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile)).profile.xcolor_space
    except (OSError, ImageCms.PyCMSError):
        return None
    return icc_profile if space == _PROFILE_SPACES[mode] else None


def _corrupt(exc: Exception) -> ImageRejected:
    return ImageRejected(f"corrupt or truncated image: {exc}")


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    pixels = size[0] * size[1]
    if pixels > max_pixels:
        raise ImageRejected(f"image is {pixels / 1e6:.1f} megapixels, the limit is {max_pixels / 1e6:.3g}")


def _beyond_pillow_limit(exc: Exception, max_pixels: int) -> ImageRejected:
    # Pillow checks the size itself while opening, before `_check_pixels` can: past MAX_IMAGE_PIXELS it
    # warns (an error here) and past twice that it raises. Either way the limit in force is the lower one.
    threshold = Image.MAX_IMAGE_PIXELS * (2 if isinstance(exc, Image.DecompressionBombError) else 1)
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS)
    return ImageRejected(f"image is over {threshold / 1e6:.1f} megapixels, the limit is {limit / 1e6:.3g}")
