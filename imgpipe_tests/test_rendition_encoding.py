"""Renditions made by the image policy from the pixels it decoded (imgpipe.images.rendition_encoding), on images
generated here: which files, their formats and sizes, their metadata, and the rule that an alternative is kept
only when smaller."""
from __future__ import annotations

import io

from PIL import Image, JpegImagePlugin

from imgpipe.images.image_policy import compress_image
from imgpipe.images.rendition_encoding import make_renditions
from imgpipe.images.rendition_quality import avif_quality
from imgpipe.images.renditions import RenditionSpec
from imgpipe_tests.images import illustration, noisy_gradient, photo_like
from imgpipe_tests.test_image_policy import LIMITS, SRGB_PROFILE, encode

ALL = RenditionSpec.parse("webp,avif", "480,960,2000")
LARGE = b"x" * 10_000_000  # more than any encode of the images here: a reference every alternative is below


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_an_image_gets_each_format_at_its_size_and_at_each_narrower_width_with_a_jpeg_there():
    data = encode(illustration(1200, 800, seed=4), "JPEG", quality=85, subsampling="4:4:4")

    plain = compress_image(data, **LIMITS)
    result = compress_image(data, **LIMITS, renditions=ALL)

    assert result.data == plain.data and plain.renditions == ()  # the main output is what it was without them
    made = {(r.format, r.width): r for r in result.renditions}
    # 2000 is wider than the image: never upscaled. Here every alternative is smaller than its JPEG, so kept.
    assert set(made) == {("JPEG", 480), ("WEBP", 480), ("AVIF", 480), ("JPEG", 960), ("WEBP", 960),
                         ("AVIF", 960), ("WEBP", 1200), ("AVIF", 1200)}
    for (image_format, width), rendition in made.items():
        assert (rendition.width, rendition.height) == (width, round(800 * width / 1200))
        with opened(rendition.data) as shown:
            assert (shown.format, shown.size) == (image_format, (rendition.width, rendition.height))
        reference = len(result.data) if width == 1200 else len(made[("JPEG", width)].data)
        assert image_format == "JPEG" or len(rendition.data) < reference
    with opened(made[("JPEG", 480)].data) as fallback:  # encoded as the main output is
        assert JpegImagePlugin.get_sampling(fallback) == JpegImagePlugin.get_sampling(opened(result.data)) == 0


def test_renditions_are_upright_and_carry_the_profile_and_nothing_else():
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    exif[0x010F] = "Camera Maker"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    data = encode(illustration(900, 600, seed=5), "JPEG", quality=90, exif=exif, xmp=xmp,
                  icc_profile=SRGB_PROFILE, comment=b"secret note")

    result = compress_image(data, **LIMITS, renditions=RenditionSpec.parse("webp,avif", "300"))

    assert {(r.format, r.width, r.height) for r in result.renditions} == {
        ("JPEG", 300, 450), ("WEBP", 300, 450), ("AVIF", 300, 450), ("WEBP", 600, 900), ("AVIF", 600, 900)}
    for rendition in result.renditions:
        with opened(rendition.data) as shown:
            assert shown.info.get("icc_profile") == SRGB_PROFILE
            assert len(shown.getexif()) == 0 and not shown.info.get("xmp")
        for leak in (b"Camera Maker", b"xmpmeta", b"secret note"):
            assert leak not in rendition.data


def test_an_image_with_transparency_has_webp_fallbacks_and_transparent_alternatives():
    image = photo_like(800, 600, seed=6).convert("RGBA")
    image.paste((0, 0, 0, 0), (0, 0, 100, 100))  # a transparent corner, large enough to stay so when scaled
    spec = RenditionSpec.parse("webp,avif", "400")

    result = compress_image(encode(image, "PNG"), **LIMITS, renditions=spec)
    # Kept or not by their size, as always; made with their transparency, whatever they are compared with.
    forced = make_renditions(image, spec, fallback=lambda pixels: LARGE, fallback_format="WEBP",
                             main_format="WEBP", main_bytes=len(LARGE), jpeg_quality=50, profile_for=lambda mode: None)

    assert result.format == "WEBP"
    # The fallback of 400 is a WebP, and so is the main output: no WebP alternative, at either width.
    made = {(r.format, r.width) for r in result.renditions}
    assert ("WEBP", 400) in made and made <= {("WEBP", 400), ("AVIF", 400), ("AVIF", 800)}
    assert {(r.format, r.width) for r in forced} == {("WEBP", 400), ("AVIF", 400), ("AVIF", 800)}
    for rendition in (*result.renditions, *(r for r in forced if r.format == "AVIF")):
        with opened(rendition.data) as shown:
            corner, opposite = shown.getpixel((5, 5)), shown.getpixel((shown.width - 5, shown.height - 5))
            assert shown.mode == "RGBA" and (corner[3], opposite[3]) == (0, 255)


def test_an_animation_and_an_image_narrower_than_every_width_get_no_renditions_they_cannot_use():
    frames = [Image.blend(Image.new("RGB", (160, 120), colour), noisy_gradient((160, 120)), 0.5)
              for colour in ((220, 30, 30), (30, 30, 220))]
    animation = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert compress_image(animation, **LIMITS, renditions=ALL).renditions == ()

    narrow = encode(photo_like(300, 200, seed=7), "JPEG", quality=80)
    assert compress_image(narrow, **LIMITS, renditions=RenditionSpec.parse("", "480,960")).renditions == ()
    assert {(r.format, r.width) for r in compress_image(narrow, **LIMITS, renditions=ALL).renditions} <= {
        ("WEBP", 300), ("AVIF", 300)}


def test_a_grey_image_is_a_grey_avif():
    data = encode(photo_like(640, 480, seed=8).convert("L"), "JPEG", quality=85)
    result = compress_image(data, **LIMITS, renditions=RenditionSpec.parse("avif"))
    [avif] = result.renditions
    with opened(avif.data) as shown:
        assert shown.mode == "L"


def test_an_alternative_is_kept_only_when_smaller_than_the_file_of_its_width():
    image = photo_like(600, 400, seed=9)
    spec = RenditionSpec.parse("webp,avif", "300")

    def made(main_bytes: int, fallback_bytes: int) -> set[tuple[str, int]]:
        renditions = make_renditions(image, spec, fallback=lambda pixels: LARGE[:fallback_bytes],
                                     fallback_format="JPEG", main_format="JPEG", main_bytes=main_bytes,
                                     jpeg_quality=40, profile_for=lambda mode: None)
        return {(r.format, r.width) for r in renditions}

    big = len(LARGE)
    assert made(big, big) == {("JPEG", 300), ("WEBP", 300), ("AVIF", 300), ("WEBP", 600), ("AVIF", 600)}
    assert made(10, big) == {("JPEG", 300), ("WEBP", 300), ("AVIF", 300)}  # the main output is smaller
    assert made(big, 10) == {("JPEG", 300), ("WEBP", 600), ("AVIF", 600)}  # the fallback is smaller: kept alone


def test_the_avif_quality_follows_the_main_outputs():
    """Lower quality in, lower quality out, and a smaller AVIF: the mapping of rendition_quality is applied to the
    quality the main output was encoded at."""
    image = photo_like(640, 480, seed=10)
    sizes = []
    for quality in (90, 40):
        result = compress_image(encode(image, "JPEG", quality=quality), **LIMITS,
                                renditions=RenditionSpec.parse("avif"))
        sizes.append(len(result.renditions[0].data))
        assert avif_quality(result.quality_out) < 100
    assert sizes[1] < sizes[0]


def test_each_width_is_encoded_at_the_quality_of_its_scale(monkeypatch):
    """The narrower rendition follows the table of its scale (its width over the image's), the main size its own."""
    from imgpipe.images import rendition_quality

    image = photo_like(600, 400, seed=11)
    spec = RenditionSpec.parse("avif", "300")

    def avif_bytes(tables) -> dict[int, int]:
        monkeypatch.setattr(rendition_quality, "AVIF_TABLES", tables)
        renditions = make_renditions(image, spec, fallback=lambda pixels: LARGE, fallback_format="JPEG",
                                     main_format="JPEG", main_bytes=len(LARGE), jpeg_quality=40,
                                     profile_for=lambda mode: None)
        return {r.width: len(r.data) for r in renditions if r.format == "AVIF"}

    narrow_low = avif_bytes({1.0: ((40, 90),), 0.5: ((40, 10),)})
    narrow_high = avif_bytes({1.0: ((40, 10),), 0.5: ((40, 90),)})
    assert narrow_low[300] < narrow_high[300]
    assert narrow_low[600] > narrow_high[600]
