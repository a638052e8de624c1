"""JPEG quality estimation against files Pillow (libjpeg) writes, and the halving rule."""
from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from imgpipe.images.quality import (
    CHROMINANCE_TABLE,
    LUMINANCE_TABLE,
    estimate_jpeg_quality,
    ijg_tables,
    output_quality,
)
from imgpipe_tests.images import noisy_gradient


def saved_tables(image: Image.Image, quality: int) -> dict[int, list[int]]:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as saved:
        return saved.quantization


def test_quality_50_is_the_unscaled_annex_k_tables():
    assert ijg_tables(50) == (LUMINANCE_TABLE, CHROMINANCE_TABLE)


def test_tables_match_what_pillow_writes_in_natural_order():
    image = noisy_gradient()
    mismatched = []
    for quality in range(1, 101):
        tables = saved_tables(image, quality)
        if (tuple(tables[0]), tuple(tables[1])) != ijg_tables(quality):
            mismatched.append(quality)
    assert mismatched == []


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_estimate_recovers_every_quality_pillow_writes(mode):
    image = noisy_gradient().convert(mode)
    wrong = {}
    for quality in range(1, 101):
        tables = saved_tables(image, quality)
        assert len(tables) == (2 if mode == "RGB" else 1)
        estimate = estimate_jpeg_quality(tables)
        if estimate != quality:
            wrong[quality] = estimate
    assert wrong == {}


def test_non_ijg_tables_give_the_closest_quality():
    luminance, chrominance = ijg_tables(75)
    # Another encoder's tables: close to IJG 75, but not equal to any IJG table.
    tweaked = {0: [v + (1 if i % 3 == 0 else 0) for i, v in enumerate(luminance)], 1: list(chrominance)}
    assert tweaked[0] not in [list(ijg_tables(q)[0]) for q in range(1, 101)]
    assert estimate_jpeg_quality(tweaked) == 75


def least_squares_quality(quantization: dict[int, list[int]]) -> int:
    """The rule written out plainly, to hold the estimate's table lookup and its vectorised search to it: the
    quality whose IJG tables have the least squared error, the lowest of equals."""
    def error(quality: int) -> int:
        return sum((actual - expected) ** 2
                   for table_id, expected_table in enumerate(ijg_tables(quality)) if table_id in quantization
                   for actual, expected in zip(quantization[table_id], expected_table, strict=True))
    return min(range(1, 101), key=error)


@pytest.mark.parametrize("grayscale", [False, True], ids=["colour", "grayscale"])
def test_every_ijg_quality_is_looked_up_as_the_least_squares_rule_finds_it(grayscale):
    for quality in range(1, 101):
        luminance, chrominance = ijg_tables(quality)
        tables = {0: list(luminance)} if grayscale else {0: list(luminance), 1: list(chrominance)}
        assert estimate_jpeg_quality(tables) == least_squares_quality(tables) == quality


def test_tables_of_other_encoders_get_the_least_squares_quality():
    rng = random.Random(27)
    for case in range(150):
        luminance, chrominance = ijg_tables(rng.randint(1, 100))
        spread = rng.choice([1, 3, 20])
        tables = {0: [max(1, value + rng.randint(-spread, spread)) for value in luminance],
                  1: [max(1, value + rng.randint(-spread, spread)) for value in chrominance]}
        if case % 4 == 0:
            del tables[1]  # grayscale
        if case % 10 == 0:
            tables[0] = [rng.randint(1, 65535) for _ in range(64)]  # 16-bit tables, far from any IJG one
        assert estimate_jpeg_quality(tables) == least_squares_quality(tables), tables


def test_of_two_equally_close_qualities_the_lower_is_taken():
    # A grayscale table as far from quality 57's as from 58's: its first 47 entries are 58's, the rest 57's.
    between = ijg_tables(58)[0][:47] + ijg_tables(57)[0][47:]
    assert least_squares_quality({0: list(between)}) == 57
    assert estimate_jpeg_quality({0: list(between)}) == 57


@pytest.mark.parametrize("length", [63, 65])
def test_a_table_without_64_entries_is_refused(length):
    with pytest.raises(ValueError, match="64 entries"):
        estimate_jpeg_quality({0: [16] * length})


def test_tables_without_luminance_are_refused():
    with pytest.raises(ValueError, match="luminance"):
        estimate_jpeg_quality({1: list(CHROMINANCE_TABLE)})


@pytest.mark.parametrize("quality", [0, 101])
def test_ijg_tables_refuse_qualities_outside_1_to_100(quality):
    with pytest.raises(ValueError):
        ijg_tables(quality)


@pytest.mark.parametrize(
    ("quality_in", "allowed"),
    [(1, {1}), (2, {1}), (3, {1, 2}), (20, {10}), (60, {30}), (90, {45}), (99, {49, 50}), (100, {50})],
)
def test_output_quality_is_half_the_input_and_at_least_1(quality_in, allowed):
    assert output_quality(quality_in) in allowed
