"""Removing EXIF and XMP without touching the pixels: JPEG, PNG, GIF and WebP, each checked by decoding the result
with Pillow and comparing it with the original."""
from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageCms

from imgpipe.images.metadata import MalformedContainer, strip_metadata
from imgpipe_tests.images import photo_like

XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description GPSLatitude="48.85"/></rdf:RDF></x:xmpmeta>'
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_with_gps(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x0112] = orientation
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 29.0)  # GPSLatitude
    return exif.tobytes()


def encoded(image: Image.Image, image_format: str, **params) -> bytes:
    output = io.BytesIO()
    image.save(output, image_format, **params)
    return output.getvalue()


def same_pixels(a: bytes, b: bytes) -> bool:
    with Image.open(io.BytesIO(a)) as first, Image.open(io.BytesIO(b)) as second:
        return ImageChops.difference(first.convert("RGBA"), second.convert("RGBA")).getbbox() is None


def metadata_of(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return {"exif": dict(image.getexif()), "xmp": image.info.get("xmp"), "icc": image.info.get("icc_profile"),
                "comment": image.info.get("comment")}


def test_a_jpeg_loses_exif_xmp_and_comments_and_keeps_its_pixels_and_profile():
    original = encoded(photo_like(200, 150, 1), "JPEG", quality=70, exif=exif_with_gps(), xmp=XMP,
                       icc_profile=SRGB, comment=b"shot at home")
    stripped = strip_metadata(original, "JPEG")
    assert len(stripped) < len(original)
    assert metadata_of(stripped) == {"exif": {}, "xmp": None, "icc": SRGB, "comment": None}
    assert b"GPS" not in stripped and b"CameraMaker" not in stripped and b"48.85" not in stripped
    assert same_pixels(original, stripped)


def test_a_rotated_jpeg_keeps_its_orientation_alone():
    original = encoded(photo_like(200, 150, 1), "JPEG", quality=70, exif=exif_with_gps(orientation=6))
    stripped = strip_metadata(original, "JPEG", orientation=6)
    assert metadata_of(stripped)["exif"] == {0x0112: 6}
    assert b"CameraMaker" not in stripped and same_pixels(original, stripped)


def test_an_mpo_keeps_its_first_image_only():
    first, second = photo_like(160, 120, 1), photo_like(160, 120, 2)
    original = encoded(first, "MPO", save_all=True, append_images=[second], exif=exif_with_gps())
    stripped = strip_metadata(original, "MPO")
    with Image.open(io.BytesIO(stripped)) as image:
        assert image.format == "JPEG" and getattr(image, "n_frames", 1) == 1
    assert same_pixels(encoded(Image.open(io.BytesIO(original)).convert("RGB"), "PNG"), encoded(
        Image.open(io.BytesIO(stripped)).convert("RGB"), "PNG"))
    assert b"CameraMaker" not in stripped


def test_a_png_loses_its_text_and_exif_chunks():
    original = encoded(photo_like(120, 90, 3), "PNG", exif=exif_with_gps(), icc_profile=SRGB,
                       pnginfo=_png_text({"Comment": "shot at home", "XML:com.adobe.xmp": XMP.decode()}))
    stripped = strip_metadata(original, "PNG")
    assert metadata_of(stripped)["exif"] == {} and metadata_of(stripped)["icc"] == SRGB
    assert b"shot at home" not in stripped and b"GPSLatitude" not in stripped
    assert same_pixels(original, stripped)


def test_a_gif_loses_comments_and_xmp_but_keeps_its_loop_and_frames():
    frames = [photo_like(60, 40, seed).convert("P") for seed in range(3)]
    original = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0, duration=80,
                       comment=b"shot at home")
    xmp_extension = b"\x21\xff\x0bXMP DataXMP" + bytes([len(XMP)]) + XMP[:255] + b"\x00"
    original = original[:-1] + xmp_extension + b"\x3b"  # an application extension before the trailer
    stripped = strip_metadata(original, "GIF")
    assert b"shot at home" not in stripped and b"XMP DataXMP" not in stripped
    with Image.open(io.BytesIO(stripped)) as image:
        assert (image.n_frames, image.info.get("loop")) == (3, 0)
    assert same_pixels(original, stripped)


def test_a_webp_loses_its_exif_and_xmp_chunks():
    original = encoded(photo_like(120, 90, 4), "WEBP", quality=60, exif=exif_with_gps(), xmp=XMP,
                       icc_profile=SRGB)
    stripped = strip_metadata(original, "WEBP")
    assert metadata_of(stripped) == {"exif": {}, "xmp": None, "icc": SRGB, "comment": None}
    assert b"GPSLatitude" not in stripped and same_pixels(original, stripped)


def test_formats_without_a_lossless_way_give_none_and_broken_files_are_refused():
    assert strip_metadata(encoded(photo_like(40, 30, 5), "TIFF"), "TIFF") is None
    bmp = encoded(photo_like(40, 30, 5), "BMP")
    assert strip_metadata(bmp, "BMP") == bmp  # nothing to remove
    with pytest.raises(MalformedContainer):
        strip_metadata(b"\xff\xd8\xff\xe1\x00\x10Exif", "JPEG")
    with pytest.raises(MalformedContainer):
        strip_metadata(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", "PNG")


def _png_text(chunks: dict[str, str]):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_itxt(key, value)
    return info
