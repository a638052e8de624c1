import itertools

import pytest

from imgpipe.images import rendition_quality
from imgpipe.images.rendition_quality import (
    AVIF_SPEED,
    AVIF_TABLE,
    WEBP_METHOD,
    WEBP_TABLE,
    avif_quality,
    webp_quality,
)

MAPPINGS = [(webp_quality, WEBP_TABLE), (avif_quality, AVIF_TABLE)]


@pytest.mark.parametrize("mapping, table", MAPPINGS)
def test_table_points_map_to_themselves(mapping, table):
    for jpeg_quality, encoder_quality in table:
        assert mapping(jpeg_quality) == encoder_quality


@pytest.mark.parametrize("mapping, table", MAPPINGS)
def test_tables_ascend(mapping, table):
    assert all(low[0] < high[0] and low[1] <= high[1] for low, high in itertools.pairwise(table))


@pytest.mark.parametrize("mapping, table", MAPPINGS)
def test_monotone_and_within_the_encoder_range(mapping, table):
    qualities = [mapping(q) for q in range(1, 101)]
    assert qualities == sorted(qualities)
    assert all(0 <= q <= 100 for q in qualities)


@pytest.mark.parametrize("mapping, table", MAPPINGS)
def test_between_points_never_below_the_lower_point(mapping, table):
    for (low_jpeg, low_encoder), (high_jpeg, high_encoder) in itertools.pairwise(table):
        for jpeg_quality in range(low_jpeg, high_jpeg + 1):
            assert low_encoder <= mapping(jpeg_quality) <= high_encoder


@pytest.mark.parametrize("mapping, table", MAPPINGS)
def test_clamped_at_the_ends_of_the_jpeg_range(mapping, table):
    assert mapping(1) >= 0
    assert mapping(100) <= 100


def test_clamps_an_offset_that_would_leave_the_encoder_range(monkeypatch):
    monkeypatch.setattr(rendition_quality, "WEBP_TABLE", ((20, 5), (50, 90)))
    assert rendition_quality.webp_quality(1) == 0
    assert rendition_quality.webp_quality(100) == 100


@pytest.mark.parametrize("mapping", [webp_quality, avif_quality])
@pytest.mark.parametrize("jpeg_quality", [0, 101, -5])
def test_rejects_a_jpeg_quality_outside_1_to_100(mapping, jpeg_quality):
    with pytest.raises(ValueError):
        mapping(jpeg_quality)


def test_encoder_effort_within_pillow_ranges():
    assert 0 <= AVIF_SPEED <= 10
    assert 0 <= WEBP_METHOD <= 6
