"""Pyramid arithmetic shared by the protocols: level sizes, level choice, aligned chunks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tileserver.geometry import (
    Region,
    Size,
    aligned_chunk,
    best_level,
    ceil_div,
    level_region,
    level_size,
    tile_count,
)


def test_ceil_div_is_exact_for_huge_sizes() -> None:
    assert ceil_div(10**30 + 1, 2) == 5 * 10**29 + 1
    assert [ceil_div(a, 4) for a in range(9)] == [0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_level_size_equals_iterated_ceil_halving() -> None:
    size = l_size = Size(2221, 2967)
    for k in range(14):
        assert level_size(size, k) == l_size
        l_size = Size(ceil_div(l_size.width, 2), ceil_div(l_size.height, 2))
    assert level_size(size, 12) == Size(1, 1)
    assert tile_count(Size(1000, 600), Size(256, 256)) == Size(4, 3)


# Level choice --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "out", "levels", "expected"),
    [
        (Region(0, 0, 1024, 1024), Size(1024, 1024), 5, 0),
        (Region(0, 0, 1024, 1024), Size(512, 512), 5, 1),
        (Region(0, 0, 1024, 1024), Size(513, 512), 5, 0),  # level 1 would upsample
        (Region(0, 0, 1024, 1024), Size(256, 256), 5, 2),
        (Region(0, 0, 1024, 1024), Size(300, 100), 5, 1),  # the finer axis decides
        (Region(0, 0, 1024, 1024), Size(1, 1), 5, 4),  # capped by the store
        (Region(0, 0, 1024, 1024), Size(1, 1), 1, 0),
        (Region(0, 0, 1024, 1024), Size(2048, 2048), 5, 0),  # upscaling reads level 0
        (Region(3840, 0, 1001, 1024), Size(251, 256), 5, 2),  # edge tile, ceil(1001/4)
        (Region(0, 0, 1000, 600), Size(125, 75), 5, 3),
    ],
)
def test_best_level(region: Region, out: Size, levels: int, expected: int) -> None:
    assert best_level(region, out, levels) == expected


def test_best_level_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        best_level(Region(0, 0, 10, 10), Size(1, 1), 0)
    with pytest.raises(ValueError):
        best_level(Region(0, 0, 0, 10), Size(1, 1), 3)


def test_level_region() -> None:
    l0_size = Size(1001, 601)
    assert level_region(Region(0, 0, 1001, 601), 0, l0_size) == Region(0, 0, 1001, 601)
    assert level_region(Region(0, 0, 1001, 601), 2, l0_size) == Region(0, 0, 251, 151)
    assert level_region(Region(5, 6, 10, 3), 2, l0_size) == Region(1, 1, 3, 2)  # 5..15, 6..9


# Aligned chunks ------------------------------------------------------------------------


def test_aligned_chunk() -> None:
    l0_size = Size(1000, 600)  # levels 1000x600, 500x300, 250x150 with 256 chunks
    assert aligned_chunk(Region(0, 0, 256, 256), l0_size, 256, 3) == (0, 0, 0)
    assert aligned_chunk(Region(512, 256, 256, 256), l0_size, 256, 3) == (0, 2, 1)
    assert aligned_chunk(Region(0, 0, 512, 512), l0_size, 256, 3) == (1, 0, 0)
    # Edge chunks are padded in the store; a region clipped at the image edge is not one.
    assert aligned_chunk(Region(768, 0, 232, 256), l0_size, 256, 3) is None
    assert aligned_chunk(Region(512, 0, 488, 512), l0_size, 256, 3) is None
    # Beyond the store's levels, misaligned, or of another size: not a chunk.
    assert aligned_chunk(Region(0, 0, 1000, 600), l0_size, 256, 2) is None
    assert aligned_chunk(Region(1, 0, 256, 256), l0_size, 256, 3) is None
    assert aligned_chunk(Region(0, 0, 240, 240), l0_size, 256, 3) is None
    # 1021 wide: level 2 is ceil(1021/4) = 256 wide, one unpadded chunk, while the
    # level-0 region it covers is clipped to 1021.
    assert aligned_chunk(Region(0, 0, 1021, 1024), Size(1021, 1024), 256, 3) == (2, 0, 0)


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 700),
    height=st.integers(1, 700),
    chunk=st.sampled_from([7, 16, 64, 240, 256]),
    levels=st.integers(1, 5),
)
def test_every_unpadded_chunk_is_found_and_only_chunks_are(
    width: int, height: int, chunk: int, levels: int
) -> None:
    l0_size = Size(width, height)
    for level in range(levels):
        l_size = level_size(l0_size, level)
        grid = tile_count(l_size, Size(chunk, chunk))
        for t_col, t_row in itertools.product(range(grid.width), range(grid.height)):
            span = chunk << level
            l0_region = Region(t_col * span, t_row * span, span, span).intersect(l0_size)
            found = aligned_chunk(l0_region, l0_size, chunk, levels)
            unpadded = (t_col + 1) * chunk <= l_size.width and (t_row + 1) * chunk <= l_size.height
            if unpadded:
                assert found == (level, t_col, t_row)
                # Reading the region at that level reads exactly the chunk's pixels.
                chunk_region = Region(t_col * chunk, t_row * chunk, chunk, chunk)
                assert level_region(l0_region, level, l0_size) == chunk_region
            elif found is not None:
                # A clipped region may still be a whole unpadded chunk of a finer level.
                k, c, r = found
                assert k < level
                k_span = chunk << k
                assert l0_region == Region(c * k_span, r * k_span, k_span, k_span).intersect(
                    l0_size
                )
