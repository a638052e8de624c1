"""The pure part of renditions (imgpipe.images.renditions): what a request asks for, what that makes of an image,
the names, the record kept beside an image, and the choice of a file for an `Accept` header and a width."""
from __future__ import annotations

import pytest

from imgpipe.images.renditions import (
    ALTERNATIVE,
    FALLBACK,
    MAIN,
    MAX_WIDTHS,
    Rendition,
    RenditionFile,
    RenditionSet,
    RenditionSpec,
    RenditionSpecError,
    accepted_quality,
    choose_width,
    encoder_settings,
    main_stem,
    negotiate,
    parse_accept,
    planned,
    rendition_suffix,
    srcset,
)

CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
FIREFOX = "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5"
SAFARI = ("image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,image/svg+xml,"
          "image/*;q=0.8,*/*;q=0.5")
OLD_CHROME = "image/webp,image/apng,image/*,*/*;q=0.8"  # Chrome before 85: WebP, and no AVIF decoder


# ---------------------------------------------------------------- what a request asks for


def test_a_spec_is_parsed_from_comma_lists_into_one_canonical_form():
    spec = RenditionSpec.parse(" AVIF, webp,", "960, 480,480 ,")
    assert spec == RenditionSpec(("webp", "avif"), (480, 960))
    assert (spec.formats_text, spec.widths_text) == ("webp,avif", "480,960")
    assert RenditionSpec(("avif", "webp", "avif"), (960, 480)) == spec  # built directly: held to the same form
    assert not RenditionSpec.parse("", " , ") and RenditionSpec.parse("", "480") and RenditionSpec.parse("webp")


@pytest.mark.parametrize(("formats", "widths", "key", "message"), [
    ("webp,jpeg", "", "renditions",
     "renditions 'webp,jpeg' names 'jpeg', which is not a rendition format (webp or avif)"),
    ("png", "", "renditions", "names 'png'"),
    ("", "480px", "widths", "widths '480px' names '480px', which is not a width in pixels"),
    ("", "0", "widths", "names '0', which is not a width in pixels (a whole number from 1 to 16383)"),
    ("", "16384", "widths", "names '16384'"),
    ("", "-5", "widths", "names '-5'"),
    ("", "4.5", "widths", "names '4.5'"),
    ("", "４８０", "widths", "names '４８０'"),  # digits, but not ASCII ones
    ("", ",".join(str(100 + w) for w in range(MAX_WIDTHS + 1)), "widths", f"names 9 widths, more than {MAX_WIDTHS}"),
])
def test_a_wrong_value_is_refused_naming_its_key_and_the_value(formats, widths, key, message):
    with pytest.raises(RenditionSpecError) as refused:
        RenditionSpec.parse(formats, widths)
    assert refused.value.key == key and message in str(refused.value)


# ---------------------------------------------------------------- what that makes of an image, and its names


def test_the_plan_never_upscales_and_adds_a_fallback_at_each_narrower_width():
    spec = RenditionSpec.parse("webp,avif", "480,960,2000")
    assert planned(spec, 1200) == {(FALLBACK, 480), (FALLBACK, 960), ("webp", 480), ("webp", 960), ("webp", 1200),
                                   ("avif", 480), ("avif", 960), ("avif", 1200)}
    assert planned(RenditionSpec.parse("", "480,960"), 300) == set()  # narrower than every width: nothing
    assert planned(RenditionSpec.parse("avif", "960"), 960) == {("avif", 960)}  # its own width is not "narrower"


def test_names_of_renditions_and_which_names_are_main_outputs():
    assert rendition_suffix("AVIF", 480) == ".w480.avif" and rendition_suffix("JPEG", 960) == ".w960.jpg"
    assert main_stem("r1-p2.jpg") == "r1-p2" and main_stem("r12-p3.webp") == "r12-p3"
    assert main_stem("r1-p2.w480.avif") is None and main_stem("../r1.jpg") is None and main_stem("r1") is None


def test_encoder_settings_follow_the_calibration_of_the_main_quality():
    assert encoder_settings(40) != encoder_settings(20)
    assert encoder_settings(40) == encoder_settings(40)


# ---------------------------------------------------------------- the record kept beside an image


def record(files, made=frozenset(), encoder="e1", width=1200) -> RenditionSet:
    return RenditionSet(width, 800, "JPEG", 30_000, tuple(RenditionFile(*f) for f in files), frozenset(made), encoder)


def test_a_record_is_made_of_what_the_process_made_and_survives_json():
    spec = RenditionSpec.parse("avif", "480")
    made = RenditionSet.of([Rendition("JPEG", 480, 320, b"j" * 9000), Rendition("AVIF", 480, 320, b"a" * 4000)],
                           width=1200, height=800, main_format="JPEG", main_bytes=30_000, spec=spec, encoder="e1")
    assert made.files == (RenditionFile("JPEG", 480, 320, 9000), RenditionFile("AVIF", 480, 320, 4000))
    assert made.made == planned(spec, 1200)  # the AVIF at 1200 was made too, and not kept: not smaller
    assert RenditionSet.from_json(made.to_json()) == made
    with pytest.raises(ValueError):
        RenditionSet.from_json(b'{"width": 3}')


def test_a_record_covers_a_spec_only_when_all_of_it_was_made_with_the_same_encoder_settings():
    kept = record([("JPEG", 480, 320, 9000), ("AVIF", 480, 320, 4000), ("AVIF", 1200, 800, 20_000)],
                  planned(RenditionSpec.parse("avif", "480"), 1200))
    assert kept.covers(RenditionSpec.parse("avif", "480"), "e1")
    assert kept.covers(RenditionSpec.parse("", "480,1600"), "e1")  # 1600 is above the image: nothing to make
    assert not kept.covers(RenditionSpec.parse("webp", "480"), "e1")
    assert not kept.covers(RenditionSpec.parse("avif", "480,960"), "e1")
    assert not kept.covers(RenditionSpec.parse("avif", "480"), "e2")


def test_a_request_gets_the_fallbacks_of_its_widths_and_only_its_own_formats():
    kept = record([("JPEG", 480, 320, 9000), ("WEBP", 480, 320, 5000), ("AVIF", 480, 320, 4000),
                   ("JPEG", 960, 640, 18_000), ("WEBP", 1200, 800, 22_000), ("AVIF", 1200, 800, 20_000)])
    mine = kept.for_request(RenditionSpec.parse("avif", "480"))
    assert [(f.format, f.width) for f in mine.files] == [("JPEG", 480), ("AVIF", 480), ("AVIF", 1200)]
    assert [(f.format, f.width) for f in kept.for_request(RenditionSpec.parse("", "960")).files] == [("JPEG", 960)]


def test_merging_adds_what_a_later_request_made_unless_the_encoder_settings_changed():
    first = record([("AVIF", 1200, 800, 20_000)], {("avif", 1200)})
    later = record([("JPEG", 480, 320, 9000), ("AVIF", 480, 320, 4000)], {(FALLBACK, 480), ("avif", 480)})
    merged = first.merged(later)
    assert {(f.format, f.width) for f in merged.files} == {("AVIF", 1200), ("JPEG", 480), ("AVIF", 480)}
    assert merged.made == {("avif", 1200), (FALLBACK, 480), ("avif", 480)}
    recalibrated = record([("AVIF", 480, 320, 3000)], {("avif", 480)}, encoder="e2")
    assert first.merged(recalibrated) == recalibrated


def test_an_image_with_transparency_has_webp_fallbacks():
    kept = RenditionSet(1200, 800, "WEBP", 40_000, (RenditionFile("WEBP", 480, 320, 9000),
                                                      RenditionFile("AVIF", 480, 320, 7000)))
    roles = {(c.format, c.width): c.role for c in kept.candidates("r1-p1.webp")}
    assert roles == {("WEBP", 1200): MAIN, ("WEBP", 480): FALLBACK, ("AVIF", 480): ALTERNATIVE}
    assert [(f.format, f.width) for f in kept.for_request(RenditionSpec.parse("", "480")).files] == [("WEBP", 480)]


# ---------------------------------------------------------------- choosing a file for a client


def candidates():
    """An image 1200 wide with WebP and AVIF at its width and at 480 (the AVIF the smallest), and a JPEG at 480."""
    return record([("JPEG", 480, 320, 9000), ("WEBP", 480, 320, 5000), ("AVIF", 480, 320, 4000),
                   ("WEBP", 1200, 800, 22_000), ("AVIF", 1200, 800, 20_000)]).candidates("r1-p1.jpg")


def chosen(accept, width=None, files=None) -> str:
    return negotiate(files or candidates(), accept, width).name


def test_accept_is_parsed_with_q_values_and_the_most_specific_range_decides():
    ranges = parse_accept("image/avif;q=0, image/*;q=0.5, */*, text/html; level=1 ;Q=0.2, bad, image/webp;q=x")
    assert ranges == [("image/avif", 0.0), ("image/*", 0.5), ("*/*", 1.0), ("text/html", 0.2), ("image/webp", 0.0)]
    assert accepted_quality(ranges, "image/avif") == 0.0  # named with q=0: refused, whatever image/* says
    assert accepted_quality(ranges, "image/jpeg") == 0.5  # image/* is more specific than */*
    assert accepted_quality(ranges, "image/jpeg", wildcards=False) == 0.0
    assert accepted_quality(parse_accept(None), "image/jpeg") == 0.0


@pytest.mark.parametrize(("accept", "expected"), [
    (None, "r1-p1.jpg"),  # curl, and any client that says nothing: the main output, as before
    ("", "r1-p1.jpg"),
    ("*/*", "r1-p1.jpg"),
    ("image/*", "r1-p1.jpg"),
    ("image/jpeg", "r1-p1.jpg"),
    (OLD_CHROME, "r1-p1.w1200.webp"),  # AVIF only through wildcards: never sent to a client that may not decode it
    (CHROME, "r1-p1.w1200.avif"),
    (FIREFOX, "r1-p1.w1200.avif"),
    (SAFARI, "r1-p1.w1200.avif"),
    ("image/avif;q=0, image/webp, */*", "r1-p1.w1200.webp"),
    ("image/avif;q=0.1, image/webp;q=1", "r1-p1.w1200.avif"),  # both taken: the smaller one
    ("image/avif;q=0, image/webp;q=0, */*", "r1-p1.jpg"),  # named only to refuse them
    ("image/webp", "r1-p1.w1200.webp"),  # the JPEG not taken, the WebP is
])
def test_the_smallest_file_the_client_takes_at_the_full_width(accept, expected):
    assert chosen(accept) == expected


def test_a_format_not_made_for_the_request_falls_back_to_the_jpeg_of_that_width():
    webp_only = record([("JPEG", 480, 320, 9000), ("WEBP", 480, 320, 5000),
                        ("WEBP", 1200, 800, 22_000)]).candidates("r1-p1.jpg")
    assert chosen("image/avif,*/*", files=webp_only) == "r1-p1.jpg"
    assert chosen("image/avif,*/*", 480, files=webp_only) == "r1-p1.w480.jpg"
    assert chosen("image/avif", files=webp_only) == "r1-p1.jpg"  # nothing it takes: still the fallback
    assert chosen(CHROME, files=webp_only) == "r1-p1.w1200.webp"


def test_a_width_picks_the_narrowest_at_least_that_wide_and_the_widest_above_the_image():
    assert chosen(None, 480) == "r1-p1.w480.jpg" and chosen(CHROME, 480) == "r1-p1.w480.avif"
    assert chosen(CHROME, 1) == "r1-p1.w480.avif"
    assert chosen(CHROME, 481) == "r1-p1.w1200.avif" and chosen(None, 481) == "r1-p1.jpg"
    assert chosen(CHROME, 5000) == "r1-p1.w1200.avif" and chosen(None, 5000) == "r1-p1.jpg"
    assert choose_width([480, 960, 1200], None) == 1200 and choose_width([480, 960, 1200], 500) == 960


def test_a_rendition_is_chosen_only_where_it_is_smaller_than_the_fallback():
    """An alternative larger than its JPEG is never kept (rendition_encoding); should one be, a client that takes
    both gets the smaller."""
    files = RenditionSet(1200, 800, "JPEG", 10_000, (RenditionFile("WEBP", 1200, 800, 12_000),)).candidates("a.jpg")
    assert chosen(CHROME, files=files) == "a.jpg"


def test_srcset_lists_the_narrower_widths_through_the_same_url():
    url = "http://x/images/r/r1-p1.jpg"
    assert srcset(url, [1200, 480, 960, 480]) == f"{url}?w=480 480w, {url}?w=960 960w, {url} 1200w"
    assert srcset(url, [1200]) == f"{url} 1200w"
