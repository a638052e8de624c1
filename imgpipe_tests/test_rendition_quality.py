import itertools

import pytest

from imgpipe.images import rendition_quality
from imgpipe.images.rendition_quality import (
    AVIF_SPEED,
    AVIF_TABLES,
    SCALES,
    WEBP_METHOD,
    WEBP_TABLES,
    avif_quality,
    webp_quality,
)

MAPPINGS = [(webp_quality, WEBP_TABLES), (avif_quality, AVIF_TABLES)]
TABLES = [(mapping, scale, tables[scale]) for mapping, tables in MAPPINGS for scale in SCALES]


def test_every_calibrated_scale_has_a_table_of_each_format():
    assert set(WEBP_TABLES) == set(AVIF_TABLES) == set(SCALES)
    assert max(SCALES) == 1.0  # the main size


@pytest.mark.parametrize("mapping, scale, table", TABLES)
def test_table_points_map_to_themselves(mapping, scale, table):
    for jpeg_quality, encoder_quality in table:
        assert mapping(jpeg_quality, scale) == encoder_quality


@pytest.mark.parametrize("mapping, scale, table", TABLES)
def test_tables_ascend(mapping, scale, table):
    assert all(low[0] < high[0] and low[1] <= high[1] for low, high in itertools.pairwise(table))


@pytest.mark.parametrize("mapping", [webp_quality, avif_quality])
@pytest.mark.parametrize("scale", [1.0, 0.75, 0.5, 0.1])
def test_monotone_and_within_the_encoder_range(mapping, scale):
    qualities = [mapping(q, scale) for q in range(1, 101)]
    assert qualities == sorted(qualities)
    assert all(0 <= q <= 100 for q in qualities)


@pytest.mark.parametrize("mapping, scale, table", TABLES)
def test_between_points_never_below_the_lower_point(mapping, scale, table):
    for (low_jpeg, low_encoder), (high_jpeg, high_encoder) in itertools.pairwise(table):
        for jpeg_quality in range(low_jpeg, high_jpeg + 1):
            assert low_encoder <= mapping(jpeg_quality, scale) <= high_encoder


@pytest.mark.parametrize("mapping", [webp_quality, avif_quality])
def test_a_scale_between_calibrated_ones_is_held_to_both(mapping):
    ordered = sorted(SCALES)
    for smaller, larger in itertools.pairwise(ordered):
        between = (smaller + larger) / 2
        for jpeg_quality in range(1, 101):
            assert mapping(jpeg_quality, between) == max(mapping(jpeg_quality, smaller),
                                                         mapping(jpeg_quality, larger))


@pytest.mark.parametrize("mapping", [webp_quality, avif_quality])
def test_a_scale_below_the_smallest_calibrated_takes_its_quality(mapping):
    smallest = min(SCALES)
    assert [mapping(q, smallest / 3) for q in range(1, 101)] == [mapping(q, smallest) for q in range(1, 101)]


def test_the_main_size_is_the_default_scale():
    assert [webp_quality(q) for q in range(1, 101)] == [webp_quality(q, 1.0) for q in range(1, 101)]


def test_a_rendition_quality_depends_on_its_scale_where_the_calibration_says_so(monkeypatch):
    monkeypatch.setattr(rendition_quality, "AVIF_TABLES", {1.0: ((20, 10), (50, 40)), 0.5: ((20, 30), (50, 60))})
    assert rendition_quality.avif_quality(30, 1.0) == 20
    assert rendition_quality.avif_quality(30, 0.5) == 40
    assert rendition_quality.avif_quality(30, 0.25) == 40
    assert rendition_quality.avif_quality(30, 0.75) == 40  # held to the narrower width's as well


@pytest.mark.parametrize("mapping", [webp_quality, avif_quality])
def test_clamped_at_the_ends_of_the_jpeg_range(mapping):
    assert mapping(1) >= 0
    assert mapping(100) <= 100


def test_clamps_an_offset_that_would_leave_the_encoder_range(monkeypatch):
    monkeypatch.setattr(rendition_quality, "WEBP_TABLES", {1.0: ((20, 5), (50, 90))})
    assert rendition_quality.webp_quality(1) == 0
    assert rendition_quality.webp_quality(100) == 100


@pytest.mark.parametrize("mapping", [webp_quality, avif_quality])
@pytest.mark.parametrize("jpeg_quality", [0, 101, -5])
def test_rejects_a_jpeg_quality_outside_1_to_100(mapping, jpeg_quality):
    with pytest.raises(ValueError):
        mapping(jpeg_quality)


@pytest.mark.parametrize("mapping", [webp_quality, avif_quality])
@pytest.mark.parametrize("scale", [0, -0.5, 1.01])
def test_rejects_a_scale_outside_0_to_1(mapping, scale):
    with pytest.raises(ValueError):
        mapping(40, scale)


def test_encoder_effort_within_pillow_ranges():
    assert 0 <= AVIF_SPEED <= 10
    assert 0 <= WEBP_METHOD <= 6
