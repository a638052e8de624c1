"""The image policy of contract section 9, per input format and mode, on images generated here."""
from __future__ import annotations

import hashlib
import io
import pickle
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageCms, ImageFile, ImageStat, JpegImagePlugin, features

from imgpipe.images.image_policy import READABLE_FORMATS, CompressedImage, ImageRejected, compress_image
from imgpipe.images.quality import estimate_jpeg_quality
from imgpipe_tests.images import noisy_gradient, photo_like

LIMITS = {"max_pixels": 50_000_000, "max_frames": 1000}
SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
GHOSTSCRIPT_CMYK_PROFILE = Path("/usr/share/color/icc/ghostscript/default_cmyk.icc")
RED, BLUE = (220, 30, 30), (30, 30, 220)


def encode(image: Image.Image, image_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def decoded(result: CompressedImage) -> Image.Image:
    image = Image.open(io.BytesIO(result.data))
    image.load()
    return image


def with_transparent_pixel(mode: str) -> Image.Image:
    image = noisy_gradient().convert(mode)
    image.putpixel((0, 0), (0, 0) if mode == "LA" else (0, 0, 0, 0))
    return image


def channel_distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


# ---- JPEG input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("quality_in", "quality_out"), [(20, 10), (60, 30), (90, 45)])
def test_jpeg_is_written_at_half_its_estimated_quality(quality_in, quality_out):
    result = compress_image(encode(noisy_gradient(), "JPEG", quality=quality_in), **LIMITS)

    assert (result.quality_in, result.quality_out) == (quality_in, quality_out)
    assert (result.format, result.extension, result.input_format) == ("JPEG", ".jpg", "JPEG")
    assert (result.width, result.height) == (96, 64)
    with decoded(result) as output:
        assert output.format == "JPEG"
        assert estimate_jpeg_quality(output.quantization) == quality_out


@pytest.mark.skipif(shutil.which("identify") is None, reason="ImageMagick's identify is not installed")
@pytest.mark.parametrize(("quality_in", "quality_out"), [(20, 10), (60, 30), (90, 45)])
def test_imagemagick_agrees_on_the_output_quality(tmp_path, quality_in, quality_out):
    result = compress_image(encode(noisy_gradient(), "JPEG", quality=quality_in), **LIMITS)
    path = tmp_path / "output.jpg"
    path.write_bytes(result.data)

    identified = subprocess.run(["identify", "-format", "%Q", str(path)], capture_output=True, text=True, check=True)

    assert abs(int(identified.stdout) - quality_out) <= 1


@pytest.mark.parametrize(("subsampling", "name"), [(0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")])
def test_chroma_subsampling_is_kept_also_through_a_rotation(subsampling, name):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate, so the output is a new image and not the decoded JPEG
    data = encode(noisy_gradient(), "JPEG", quality=80, subsampling=subsampling, exif=exif)

    with decoded(compress_image(data, **LIMITS)) as output:
        assert output.size == (64, 96)
        assert JpegImagePlugin.get_sampling(output) == subsampling, name


def test_exif_orientation_is_applied_then_every_metadata_but_the_profile_is_dropped():
    image = Image.new("RGB", (60, 40), RED)
    image.paste(BLUE, (30, 0, 60, 40))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show rotated 90 degrees clockwise
    exif[0x010F] = "Camera Maker"
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 29.0)  # GPS latitude
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    data = encode(image, "JPEG", quality=90, exif=exif, xmp=xmp, icc_profile=SRGB_PROFILE, comment=b"secret note")

    result = compress_image(data, **LIMITS)

    assert (result.width, result.height) == (40, 60)
    with decoded(result) as output:
        assert output.size == (40, 60)
        # Turned clockwise, the left (red) half is now on top.
        assert channel_distance(output.getpixel((20, 5)), RED) < 40
        assert channel_distance(output.getpixel((20, 55)), BLUE) < 40
        assert len(output.getexif()) == 0
        assert "exif" not in output.info and "xmp" not in output.info and "comment" not in output.info
        assert output.info["icc_profile"] == SRGB_PROFILE
    for leak in (b"Exif", b"Camera Maker", b"xmpmeta", b"secret note"):
        assert leak not in result.data


def test_cmyk_jpeg_without_profile_becomes_rgb():
    data = encode(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), "JPEG", quality=90)  # pure cyan

    with decoded(compress_image(data, **LIMITS)) as output:
        assert output.mode == "RGB"
        assert channel_distance(output.getpixel((16, 16)), (0, 255, 255)) < 12
        assert "icc_profile" not in output.info


@pytest.mark.skipif(not GHOSTSCRIPT_CMYK_PROFILE.exists(), reason="no CMYK ICC profile (ghostscript's) on this machine")
def test_cmyk_jpeg_is_converted_through_its_profile_and_tagged_srgb():
    cmyk_profile = GHOSTSCRIPT_CMYK_PROFILE.read_bytes()
    cyan = Image.new("CMYK", (32, 32), (255, 0, 0, 0))
    expected = ImageCms.profileToProfile(
        cyan, ImageCms.ImageCmsProfile(io.BytesIO(cmyk_profile)), ImageCms.createProfile("sRGB"), outputMode="RGB"
    ).getpixel((0, 0))
    assert channel_distance(expected, (0, 255, 255)) > 30  # else the test could not tell the two paths apart

    data = encode(cyan, "JPEG", quality=90, icc_profile=cmyk_profile)
    with decoded(compress_image(data, **LIMITS)) as output:
        assert output.mode == "RGB"
        assert channel_distance(output.getpixel((16, 16)), expected) < 12
        # Profiles made in different seconds differ in their creation date, so compare what they describe.
        written = ImageCms.ImageCmsProfile(io.BytesIO(output.info["icc_profile"]))
        assert "sRGB" in ImageCms.getProfileDescription(written)


def test_mpo_is_compressed_from_its_first_frame():
    first, second = Image.new("RGB", (48, 32), RED), Image.new("RGB", (48, 32), BLUE)
    data = encode(first, "MPO", save_all=True, append_images=[second], quality=80)

    result = compress_image(data, **LIMITS)

    assert (result.input_format, result.format, result.quality_in, result.quality_out) == ("MPO", "JPEG", 80, 40)
    with decoded(result) as output:
        assert channel_distance(output.getpixel((24, 16)), RED) < 12


# ---- lossless and unreadable-quality input --------------------------------------------------------------

def palette_with_transparency() -> bytes:
    image = noisy_gradient().convert("P")
    image.putpixel((0, 0), 7)
    return encode(image, "PNG", transparency=7)


def rgb_with_colour_key() -> bytes:
    image = noisy_gradient()
    image.putpixel((0, 0), (1, 2, 3))
    return encode(image, "PNG", transparency=(1, 2, 3))  # tRNS: this one colour is transparent


NO_AVIF = pytest.mark.skipif(not features.check("avif"), reason="this Pillow build has no AVIF support")
LOSSLESS_CASES = [
    pytest.param(lambda: encode(noisy_gradient(), "PNG"), "PNG", "JPEG", id="opaque RGB PNG"),
    pytest.param(lambda: encode(noisy_gradient().convert("RGBA"), "PNG"), "PNG", "JPEG", id="RGBA PNG all opaque"),
    pytest.param(lambda: encode(with_transparent_pixel("RGBA"), "PNG"), "PNG", "WEBP", id="RGBA PNG transparent"),
    pytest.param(lambda: encode(with_transparent_pixel("LA"), "PNG"), "PNG", "WEBP", id="LA PNG transparent"),
    pytest.param(palette_with_transparency, "PNG", "WEBP", id="palette PNG transparent"),
    pytest.param(lambda: encode(noisy_gradient().convert("P"), "PNG"), "PNG", "JPEG", id="palette PNG opaque"),
    pytest.param(rgb_with_colour_key, "PNG", "WEBP", id="RGB PNG with a transparent colour"),
    pytest.param(lambda: encode(noisy_gradient(), "GIF"), "GIF", "JPEG", id="still GIF"),
    pytest.param(lambda: encode(noisy_gradient(), "BMP"), "BMP", "JPEG", id="BMP"),
    pytest.param(lambda: encode(noisy_gradient(), "TIFF"), "TIFF", "JPEG", id="TIFF"),
    pytest.param(lambda: encode(noisy_gradient().convert("CMYK"), "TIFF"), "TIFF", "JPEG", id="CMYK TIFF"),
    pytest.param(lambda: encode(noisy_gradient(), "WEBP", quality=30), "WEBP", "JPEG", id="lossy WebP"),
    pytest.param(
        lambda: encode(with_transparent_pixel("RGBA"), "WEBP", quality=30), "WEBP", "WEBP", id="WebP with alpha"
    ),
    pytest.param(lambda: encode(noisy_gradient(), "AVIF", quality=95), "AVIF", "JPEG", id="AVIF", marks=NO_AVIF),
]


@pytest.mark.parametrize(("make", "input_format", "output_format"), LOSSLESS_CASES)
def test_input_without_readable_quality_counts_as_100_and_is_written_at_50(make, input_format, output_format):
    result = compress_image(make(), **LIMITS)

    assert (result.input_format, result.quality_in, result.quality_out) == (input_format, 100, 50)
    assert (result.format, result.extension) == (output_format, {"JPEG": ".jpg", "WEBP": ".webp"}[output_format])
    assert (result.width, result.height) == (96, 64)
    with decoded(result) as output:
        assert output.format == output_format
        if output_format == "JPEG":
            assert estimate_jpeg_quality(output.quantization) == 50
        else:
            assert output.mode == "RGBA"
            assert output.getpixel((0, 0))[3] == 0  # the transparent pixel stayed transparent


def test_icc_profile_is_kept_on_webp_output():
    data = encode(with_transparent_pixel("RGBA"), "PNG", icc_profile=SRGB_PROFILE)

    result = compress_image(data, **LIMITS)

    assert result.format == "WEBP"
    with decoded(result) as output:
        assert output.info["icc_profile"] == SRGB_PROFILE


def test_16_bit_grayscale_png_keeps_its_tones():
    # A left-to-right ramp over the full 16-bit range (with grain, so that its PNG is no smaller than a JPEG);
    # clipped to 8 bits it would be all white.
    ramp = Image.linear_gradient("L").rotate(90).resize((256, 16))
    grainy = Image.blend(ramp, Image.effect_noise((256, 16), 60), 0.03).convert("I").point(lambda v: v * 257)
    data = encode(grainy.convert("I;16"), "PNG")
    with Image.open(io.BytesIO(data)) as source:
        assert source.mode == "I;16"

    with decoded(compress_image(data, **LIMITS)) as output:
        assert output.mode == "L"
        left, middle, right = (output.getpixel((x, 8)) for x in (4, 128, 251))
        assert left < 20 and 100 < middle < 156 and right > 235


@pytest.mark.parametrize("input_format", ["GIF", "PNG", "WEBP"])
def test_animation_becomes_animated_webp_with_every_frame_and_its_timing(input_format):
    colours = [RED, BLUE, (30, 220, 30), (240, 240, 30)]
    # Grain around a plain centre: an animation that the half-quality WebP makes smaller (a flat one would be
    # kept as it is, being the smaller).
    frames = [Image.blend(Image.new("RGB", (160, 120), colour), noisy_gradient((160, 120)), 0.5) for colour in colours]
    for frame, colour in zip(frames, colours):
        frame.paste(colour, (10, 5, 30, 25))
    durations = [100, 200, 300, 400]
    data = encode(frames[0], input_format, save_all=True, append_images=frames[1:], duration=durations, loop=2)

    result = compress_image(data, **LIMITS)

    assert (result.format, result.extension, result.quality_in, result.quality_out) == ("WEBP", ".webp", 100, 50)
    assert result.input_format == input_format
    with Image.open(io.BytesIO(result.data)) as output:
        assert output.n_frames == 4
        assert output.info["loop"] == 2
        for index, (colour, duration) in enumerate(zip(colours, durations, strict=True)):
            output.seek(index)
            output.load()  # a WebP frame's duration is known once it is read
            assert output.info["duration"] == duration
            assert channel_distance(output.convert("RGB").getpixel((20, 15)), colour) < 24
    assert len(result.data) < len(data)


def gif_with_a_frame_beyond_its_canvas() -> bytes:
    """A 200x200 GIF whose second frame is 300x300: invalid, but found in the wild, and Pillow reads it."""
    palette = [value for grey in range(256) for value in (grey, grey, grey)]

    def screen_and_frame(size: tuple[int, int]) -> tuple[bytes, bytes]:
        # A grey photo-like picture over one fixed 256-grey palette, written unoptimised so that both frames keep
        # it, and large enough that its WebP is the smaller (the smaller is kept).
        grey = photo_like(*size, seed=size[0]).convert("L")
        image = Image.frombytes("P", size, grey.tobytes())
        image.putpalette(palette)
        data = encode(image, "GIF", optimize=False)
        frame_start = 13 + 3 * 2 ** ((data[10] & 7) + 1)  # after the header and the global colour table
        assert data[frame_start:frame_start + 1] == b"," and data.endswith(b";")
        return data[:frame_start], data[frame_start:-1]

    screen, small_frame = screen_and_frame((200, 200))
    _, large_frame = screen_and_frame((300, 300))
    return screen + small_frame + large_frame + b";"


def test_gif_frame_beyond_the_canvas_is_cut_to_it():
    data = gif_with_a_frame_beyond_its_canvas()
    with Image.open(io.BytesIO(data)) as source:
        assert source.n_frames == 2

    result = compress_image(data, **LIMITS)

    assert (result.format, result.width, result.height) == ("WEBP", 200, 200)
    with Image.open(io.BytesIO(result.data)) as output:
        assert (output.n_frames, output.size) == (2, (200, 200))


# ---- rejected input --------------------------------------------------------------------------------------

def black_1bit_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of the given size: all black, so it compresses to almost nothing."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte, then the packed pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture
def decoding_forbidden(monkeypatch):
    def refuse(self):
        raise AssertionError("the image was decoded although its header was enough to reject it")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((8000, 8000), "image is 64.0 megapixels, the limit is 50"),
        ((20000, 20000), "image is over 179.0 megapixels, the limit is 50"),  # past Pillow's own bomb check
    ],
)
def test_pixel_bomb_is_rejected_from_its_header(decoding_forbidden, size, message):
    data = black_1bit_png(*size)
    assert len(data) < 200_000

    with pytest.raises(ImageRejected) as rejected:
        compress_image(data, **LIMITS)
    assert str(rejected.value) == message


def test_too_many_frames_is_rejected():
    frames = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(5)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])

    with pytest.raises(ImageRejected, match="^animation has 5 frames, the limit is 3$"):
        compress_image(data, max_pixels=50_000_000, max_frames=3)


@pytest.mark.parametrize("length", [300, 20_000], ids=["cut in the header", "cut in the pixels"])
def test_truncated_jpeg_is_rejected(length):
    data = encode(noisy_gradient((400, 300)), "JPEG", quality=90)
    assert len(data) > 2 * length

    with pytest.raises(ImageRejected, match="^corrupt or truncated image: "):
        compress_image(data[:length], **LIMITS)


@pytest.mark.parametrize(
    "data",
    [
        random.Random(7).randbytes(4096),
        b"",
        b"<html><body>Not found</body></html>",
        encode(noisy_gradient((32, 32)), "ICO"),  # an image, but not a format the pipeline accepts
    ],
    ids=["random bytes", "empty", "html", "ico"],
)
def test_data_that_is_not_a_supported_image_is_rejected(data):
    with pytest.raises(ImageRejected, match=r"^not an image \(unrecognised format\)$"):
        compress_image(data, **LIMITS)


# ---- data that ends before the image does ------------------------------------------------------------------

def segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, where its segment starts, where the next marker starts) of each marker up to the EOI; a scan's
    segment runs over its entropy-coded data."""
    found, position = [], 2
    while data[position + 1] != 0xD9:
        marker, start = data[position + 1], position
        position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if marker == 0xDA:  # entropy-coded data: up to an FF that is neither stuffing (FF 00) nor a restart marker
            while not (data[position] == 0xFF and data[position + 1] != 0 and not 0xD0 <= data[position + 1] <= 0xD7):
                position += 1
        found.append((marker, start, position))
    return found


def with_size(data: bytes, width: int, height: int) -> bytes:
    """`data` with its frame header (SOF0 or SOF2) claiming another size."""
    start = next(start for marker, start, _ in segments(data) if marker in (0xC0, 0xC2))
    return data[:start + 5] + struct.pack(">HH", height, width) + data[start + 9:]


def cut_in_scan(data: bytes, scan: int) -> bytes:
    """`data` cut in the middle of the entropy-coded data of its `scan`th scan and closed with an EOI."""
    start, end = [(start, end) for marker, start, end in segments(data) if marker == 0xDA][scan]
    middle = (start + end) // 2
    return data[:middle - 1 if data[middle - 1] == 0xFF else middle] + b"\xff\xd9"


def test_a_jpeg_that_claims_7000x7000_over_data_for_one_block_is_refused_before_decoding(decoding_forbidden):
    # An 8x8 JPEG patched to claim 7000x7000: libjpeg meets its EOI with one block coded, only warns, and
    # would give a grey 7000x7000 image hundreds of times the file's size.
    data = with_size(encode(noisy_gradient((8, 8)), "JPEG", quality=90), 7000, 7000)
    assert len(data) < 1000

    with pytest.raises(ImageRejected) as rejected:
        compress_image(data, **LIMITS)
    assert str(rejected.value) == "corrupt or truncated image: the JPEG data ends before the image is complete"


@pytest.mark.parametrize(
    ("params", "scan"),
    [
        ({}, 0),
        ({"subsampling": 0, "restart_marker_rows": 2}, 0),  # the intervals after the cut are missing
        ({"progressive": True}, 0),  # the DC scan
        ({"progressive": True}, 4),  # the first scan of the luma's high frequencies
    ],
    ids=["baseline", "restart intervals", "progressive DC scan", "progressive AC scan"],
)
def test_a_jpeg_cut_short_and_closed_with_an_eoi_is_refused(params, scan):
    data = cut_in_scan(encode(noisy_gradient((400, 300)), "JPEG", quality=90, **params), scan)
    with Image.open(io.BytesIO(data)) as cut:
        cut.load()  # Pillow decodes it without complaint, grey where the data ran out

    with pytest.raises(ImageRejected, match="^corrupt or truncated image: the JPEG data ends before the image"):
        compress_image(data, **LIMITS)


def test_a_baseline_jpeg_whose_last_blocks_are_mid_grey_is_read_to_its_end_and_passes():
    # Mid-grey is also what libjpeg leaves where the data ran out, so this file's codes are read to be sure.
    image = noisy_gradient((400, 300))
    image.paste((128, 128, 128), (200, 150, 400, 300))
    data = encode(image, "JPEG", quality=90)

    result = compress_image(data, **LIMITS)

    assert (result.width, result.height) == (400, 300)
    with pytest.raises(ImageRejected, match="^corrupt or truncated image: the JPEG data ends before the image"):
        compress_image(cut_in_scan(data, 0), **LIMITS)


@pytest.mark.parametrize(
    "data",
    [
        encode(noisy_gradient((400, 300)), "JPEG", quality=90, progressive=True)[:20_000],
        encode(noisy_gradient((400, 300)), "PNG")[:50_000],
        encode(noisy_gradient((400, 300)), "GIF")[:20_000],
    ],
    ids=["progressive jpeg", "png", "gif"],
)
def test_a_truncated_image_is_refused_even_where_pillow_was_told_to_load_truncated_images(monkeypatch, data):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as another library in the process might

    with pytest.raises(ImageRejected, match="^corrupt or truncated image: image file is truncated"):
        compress_image(data, **LIMITS)


@pytest.mark.parametrize(
    "params", [{}, {"progressive": True}, {"restart_marker_blocks": 5}, {"progressive": True, "optimize": True}],
    ids=["baseline", "progressive", "restart intervals", "progressive optimised"],
)
@pytest.mark.parametrize("after_eoi", [b"", b"\x00trailing bytes\xff\xd8\xff\xda"], ids=["", "bytes after the EOI"])
def test_a_complete_jpeg_compresses(params, after_eoi):
    data = encode(noisy_gradient((400, 300)), "JPEG", quality=90, **params) + after_eoi

    result = compress_image(data, **LIMITS)

    assert (result.width, result.height, result.quality_in) == (400, 300, 90)


# ------------------------------------------------------------------ never larger


def _gps_exif() -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 29.0)  # GPSLatitude
    return exif.tobytes()


def _small_logo_png() -> bytes:
    logo = Image.new("RGBA", (120, 60), (0, 0, 0, 0))
    logo.paste((200, 30, 30, 255), (10, 10, 50, 50))
    return encode(logo, "PNG", optimize=True, exif=_gps_exif())


def _tiny_gif() -> bytes:
    frame = Image.new("P", (40, 20), 0)
    frame.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    frame.paste(1, (5, 5, 15, 15))
    return encode(frame, "GIF", comment=b"shot at home, 48.85N")


def _camera_jpeg() -> bytes:
    """A small JPEG as cameras write them, an EXIF segment where Pillow writes a JFIF one: without its EXIF it
    is smaller than any re-encode, which adds the JFIF segment."""
    data = encode(Image.new("RGB", (16, 16), (120, 30, 200)), "JPEG", quality=90, optimize=True)
    assert data[2:4] == b"\xff\xe0"
    without_jfif = data[:2] + data[4 + struct.unpack(">H", data[4:6])[0]:]
    exif = _gps_exif()
    return without_jfif[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + without_jfif[2:]


@pytest.mark.parametrize(("make", "kept_format"), [(_small_logo_png, "PNG"), (_tiny_gif, "GIF"),
                                                   (_camera_jpeg, "JPEG"),
                                                   (lambda: encode(noisy_gradient().convert("1"), "PNG"), "PNG")],
                         ids=["png-logo", "gif", "camera-jpeg", "1-bit-png"])
def test_an_input_the_encode_would_not_shrink_is_kept_without_its_metadata(make, kept_format):
    data = make()
    result = compress_image(data, **LIMITS)
    assert len(result.data) <= len(data)
    assert (result.format, result.quality_in, result.quality_out) == (kept_format, result.quality_in,
                                                                      max(1, round(result.quality_in / 2)))
    assert result.note.startswith("kept the input without EXIF/XMP")
    assert "the half-quality encode was" in result.note
    with Image.open(io.BytesIO(result.data)) as kept:
        kept.load()
        assert not kept.getexif().get_ifd(0x8825) and "xmp" not in kept.info and "comment" not in kept.info
    assert b"48.85" not in result.data


def test_an_input_the_encode_shrinks_is_encoded_and_has_no_note():
    data = encode(noisy_gradient((400, 300)), "JPEG", quality=90)
    result = compress_image(data, **LIMITS)
    assert result.note is None and result.format == "JPEG" and len(result.data) < len(data)


def test_thumbnails_of_before_and_after_are_small_jpegs():
    result = compress_image(encode(noisy_gradient((1600, 900)), "JPEG", quality=90), **LIMITS)
    for thumbnail in (result.thumbnail_before, result.thumbnail_after):
        with Image.open(io.BytesIO(thumbnail)) as image:
            assert image.format == "JPEG" and max(image.size) <= 160 and image.size[0] > image.size[1]


def test_thumbnails_of_a_photograph_are_its_pixels_and_its_encode_at_one_eighth_resized():
    result = compress_image(encode(photo_like(1632, 1224, seed=3), "JPEG", quality=90), **LIMITS)
    with Image.open(io.BytesIO(result.thumbnail_before)) as before, \
            Image.open(io.BytesIO(result.thumbnail_after)) as after:
        assert before.size == after.size == (160, 120)
        difference = ImageStat.Stat(ImageChops.difference(before, after)).mean
    assert max(difference) < 4  # the same picture, the encode's losses aside


@pytest.mark.parametrize("make", [_small_logo_png, _camera_jpeg], ids=["png-logo", "camera-jpeg"])
def test_an_input_kept_as_the_output_has_one_thumbnail_for_before_and_after(make):
    result = compress_image(make(), **LIMITS)
    assert result.note.startswith("kept the input")
    assert result.thumbnail_after == result.thumbnail_before


# ---- Outputs unchanged ----------------------------------------------------------------------------------


def _grain(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    """Gradients under seeded noise: the same pixels in every run (Pillow's own noise is not seeded)."""
    noise = Image.frombytes("L", size, random.Random(seed).randbytes(size[0] * size[1]))
    gradients = Image.merge("RGB", (Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size),
                                    Image.linear_gradient("L").rotate(90).resize(size)))
    return Image.blend(gradients, Image.merge("RGB", (noise,) * 3), 0.2).convert(mode)


def _rotated_camera_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turned 90 degrees
    exif[0x010F] = "Camera"
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 30.0)  # GPSLatitude
    return exif.tobytes()


def _with_alpha_gradient(image: Image.Image) -> Image.Image:
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return image


OUTPUT_CASES = {
    "jpeg-rotated": lambda: encode(_grain((640, 480), 1), "JPEG", quality=85, exif=_rotated_camera_exif()),
    "jpeg-grey-progressive": lambda: encode(_grain((500, 400), 2, "L"), "JPEG", quality=70, progressive=True),
    "jpeg-444": lambda: encode(_grain((480, 360), 3), "JPEG", quality=95, subsampling=0),
    "jpeg-other-encoder": lambda: encode(_grain((480, 360), 4), "JPEG", qtables=[
        [3 + i // 4 for i in range(64)], [5 + i // 3 for i in range(64)]]),
    "jpeg-kept": _camera_jpeg,
    "png": lambda: encode(_grain((300, 200), 6), "PNG"),
    "png-alpha": lambda: encode(_with_alpha_gradient(_grain((300, 200), 7)), "PNG"),
    "png-kept": _small_logo_png,
    "gif-animated": lambda: encode(_grain((120, 90), 8, "P"), "GIF", save_all=True, duration=100, loop=0,
                                   append_images=[_grain((120, 90), seed, "P") for seed in (9, 10)]),
}
# Format, quality in and out, the first 16 hex digits of the output's SHA-256, and whether the input was kept.
# Recorded with POLICY_VERSION 2 and unchanged by version 3, which changed only the thumbnails. A change here is a
# change of policy (bump POLICY_VERSION, so that no output of the old one is reused, and record these again) or
# of the codecs' builds.
RECORDED_OUTPUTS = {
    "jpeg-rotated": ("JPEG", 85, 42, "0753f706a1f78432", False),
    "jpeg-grey-progressive": ("JPEG", 70, 35, "eafae000c6f9ec8f", False),
    "jpeg-444": ("JPEG", 95, 48, "1aa5da43b2325ad0", False),
    "jpeg-other-encoder": ("JPEG", 92, 46, "7cc62b7867e4af62", False),
    "jpeg-kept": ("JPEG", 90, 45, "41b6a988bfe76eb0", True),
    "png": ("JPEG", 100, 50, "1530006b8e6a130c", False),
    "png-alpha": ("WEBP", 100, 50, "909db3a198163553", False),
    "png-kept": ("PNG", 100, 50, "7f8407066fda2fc9", True),
    "gif-animated": ("WEBP", 100, 50, "9c56e2ee3602de54", False),
}
RECORDED_WITH_CODECS = {"libjpeg_turbo": "3.2.0", "webp": "1.6.0"}


@pytest.mark.skipif(any(features.version(codec) != version for codec, version in RECORDED_WITH_CODECS.items()),
                    reason=f"outputs recorded with {RECORDED_WITH_CODECS}; other builds may encode otherwise")
@pytest.mark.parametrize("name", list(OUTPUT_CASES))
def test_outputs_are_byte_for_byte_the_recorded_ones(name):
    result = compress_image(OUTPUT_CASES[name](), **LIMITS)
    assert (result.format, result.quality_in, result.quality_out, hashlib.sha256(result.data).hexdigest()[:16],
            result.note is not None) == RECORDED_OUTPUTS[name]


def test_every_readable_and_written_format_works_without_pillows_other_plugins(tmp_path):
    """The policy imports what it uses when imported (in the fork server, before any child): reading and making
    every format it knows, renditions included, imports nothing more, so no image process imports a module of its
    own (Pillow's PPM plugin did, for every image: 1-2 ms of its CPU), and never loads Pillow's other 40-odd
    plugins (`Image.init()`, about 100 ms a child, and decoders the policy never uses). The inputs are made in this
    process: a process that saves an image has loaded plugins by that alone."""
    inputs = []
    for fmt in READABLE_FORMATS:
        buffer = io.BytesIO()
        noisy_gradient((96, 64)).save(buffer, format=fmt)
        inputs.append(buffer.getvalue())
    (tmp_path / "inputs.pickle").write_bytes(pickle.dumps(inputs))
    script = """
import pickle, sys
from PIL import Image
from imgpipe.images.image_policy import compress_image
from imgpipe.images.renditions import RenditionSpec
inputs = pickle.loads(open(sys.argv[1], "rb").read())
spec = RenditionSpec.parse("webp,avif", "48")
imported = set(sys.modules)
for data in inputs:
    compress_image(data, max_pixels=10**6, max_frames=10, renditions=spec)
print(Image._initialized, len(Image.OPEN), *sorted(set(sys.modules) - imported))
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "inputs.pickle")], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    initialized, registered, *imported = done.stdout.split()
    assert int(initialized) < 2 and int(registered) < 20, done.stdout
    assert imported == []
