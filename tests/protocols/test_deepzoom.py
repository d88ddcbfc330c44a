"""Deep Zoom geometry against OpenSlide's own (pure-Python) DeepZoomGenerator."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from functools import cache

import openslide
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from tileserver.errors import TileserverError
from tileserver.geometry import Region, Size, aligned_chunk
from tileserver.protocols.deepzoom import (
    DZI_NAMESPACE,
    DeepZoomGrid,
    TileNotFound,
    dzi_xml,
    passthrough_chunk,
)

TILINGS = [(254, 1), (256, 0), (240, 0)]
SIZES = [
    (1, 1),
    (1, 2),
    (2, 1),
    (3, 5),
    (255, 255),
    (256, 256),
    (257, 1),
    (1000, 1),
    (1001, 999),
    (2220, 2967),
    (4096, 4096),
    (5000, 3000),
]
# Full tile-by-tile comparisons are quadratic in the grid; past this many tiles per level
# we check a deterministic sample that always includes the four corners and neighbours.
FULL_GRID_LIMIT = 400


@cache
def generator(width: int, height: int, tile: int, overlap: int) -> DeepZoomGenerator:
    slide = openslide.ImageSlide(Image.new("RGB", (width, height)))
    return DeepZoomGenerator(slide, tile_size=tile, overlap=overlap)


def tiles_to_check(cols: int, rows: int) -> Iterator[tuple[int, int]]:
    if cols * rows <= FULL_GRID_LIMIT:
        yield from itertools.product(range(cols), range(rows))
        return
    edge_cols = {0, 1, cols // 2, cols - 2, cols - 1} & set(range(cols))
    edge_rows = {0, 1, rows // 2, rows - 2, rows - 1} & set(range(rows))
    yield from itertools.product(sorted(edge_cols), sorted(edge_rows))


def openslide_z_region(dz: DeepZoomGenerator, z: int, col: int, row: int) -> Region:
    # On a one-level ImageSlide the read_region location is the z-level location
    # (overlap included) times the level's downsample, exactly.
    (l0_x, l0_y), slide_level, _ = dz.get_tile_coordinates(z, (col, row))
    assert slide_level == 0
    downsample = 2 ** (dz.level_count - 1 - z)
    assert l0_x % downsample == 0 and l0_y % downsample == 0
    w, h = dz.get_tile_dimensions(z, (col, row))
    return Region(l0_x // downsample, l0_y // downsample, w, h)


def assert_matches_openslide(width: int, height: int, tile: int, overlap: int) -> None:
    dz = generator(width, height, tile, overlap)
    grid = DeepZoomGrid(Size(width, height), tile, overlap)
    assert grid.level_count == dz.level_count
    assert tuple(tuple(grid.level_size(z)) for z in range(grid.level_count)) == (
        dz.level_dimensions
    )
    assert tuple(tuple(grid.tile_grid(z)) for z in range(grid.level_count)) == dz.level_tiles
    for z in range(grid.level_count):
        cols, rows = grid.tile_grid(z)
        for col, row in tiles_to_check(cols, rows):
            ours = grid.tile_region(z, col, row)
            assert ours == openslide_z_region(dz, z, col, row), (z, col, row)
            assert tuple(ours.size) == dz.get_tile_dimensions(z, (col, row))


@pytest.mark.parametrize(("tile", "overlap"), TILINGS)
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_matches_openslide(width: int, height: int, tile: int, overlap: int) -> None:
    assert_matches_openslide(width, height, tile, overlap)


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 3000),
    height=st.integers(1, 3000),
    tiling=st.sampled_from(TILINGS),
)
def test_matches_openslide_random(width: int, height: int, tiling: tuple[int, int]) -> None:
    assert_matches_openslide(width, height, *tiling)


def test_dzi_matches_openslide() -> None:
    for (width, height), (tile, overlap), fmt in itertools.product(
        [(1, 1), (2220, 2967)], TILINGS, ["jpeg", "png"]
    ):
        expected = generator(width, height, tile, overlap).get_dzi(fmt)
        assert dzi_xml(Size(width, height), tile, overlap, fmt) == expected


def test_dzi_parses() -> None:
    root = ET.fromstring(dzi_xml(Size(2220, 2967), 256, 0, "jpeg"))
    assert root.tag == f"{{{DZI_NAMESPACE}}}Image"
    assert root.attrib == {"TileSize": "256", "Overlap": "0", "Format": "jpeg"}
    (size,) = list(root)
    assert size.tag == f"{{{DZI_NAMESPACE}}}Size"
    assert size.attrib == {"Width": "2220", "Height": "2967"}


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "fmt"),
    [
        (Size(0, 5), 256, 0, "jpeg"),
        (Size(5, 5), 0, 0, "jpeg"),
        (Size(5, 5), 256, -1, "jpeg"),
        (Size(5, 5), 256, 0, ""),
        (Size(5, 5), 256, 0, 'jpeg" x="1'),
        (Size(5, 5), 256, 0, "JPEG"),
    ],
)
def test_dzi_rejects_bad_arguments(size: Size, tile: int, overlap: int, fmt: str) -> None:
    with pytest.raises(ValueError):
        dzi_xml(size, tile, overlap, fmt)


def test_level_count_and_downsample() -> None:
    assert DeepZoomGrid(Size(1, 1), 256, 0).level_count == 1
    assert DeepZoomGrid(Size(2, 1), 256, 0).level_count == 2
    assert DeepZoomGrid(Size(1024, 3), 256, 0).level_count == 11
    assert DeepZoomGrid(Size(1025, 3), 256, 0).level_count == 12
    grid = DeepZoomGrid(Size(100_000, 70_000), 256, 0)
    assert grid.level_count == 18
    assert grid.downsample(17) == 1
    assert grid.downsample(0) == 2**17
    assert grid.level_size(0) == Size(1, 1)
    assert grid.level_size(17) == Size(100_000, 70_000)
    assert grid.level_size(16) == Size(50_000, 35_000)
    assert grid.level_size(10) == Size(782, 547)  # ceil(100000/128), ceil(70000/128)


@pytest.mark.parametrize(
    ("size", "tile", "overlap"),
    [(Size(0, 1), 256, 0), (Size(1, 0), 256, 0), (Size(9, 9), 0, 0), (Size(9, 9), 256, -1)],
)
def test_constructor_rejects_bad_arguments(size: Size, tile: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        DeepZoomGrid(size, tile, overlap)


def test_out_of_range_is_tile_not_found() -> None:
    grid = DeepZoomGrid(Size(1000, 600), 256, 0)  # 11 levels; level 10 is 4x3 tiles
    for z, col, row in [(-1, 0, 0), (11, 0, 0), (10, 4, 0), (10, 0, 3), (10, -1, 0), (0, 1, 0)]:
        with pytest.raises(TileNotFound):
            grid.tile_region(z, col, row)
    for method in (grid.level_size, grid.tile_grid, grid.downsample):
        with pytest.raises(TileNotFound):
            method(11)
    with pytest.raises(TileNotFound):
        grid.source(-1, 3)
    with pytest.raises(TileNotFound):
        passthrough_chunk(grid, 10, 4, 0, 256, 3)
    assert issubclass(TileNotFound, LookupError)
    assert issubclass(TileNotFound, TileserverError)


def test_source_maps_levels_onto_store() -> None:
    # 1000x600: 11 Deep Zoom levels; a 256-chunk store has 1000,500,250 -> 3 levels.
    grid = DeepZoomGrid(Size(1000, 600), 256, 0)
    assert grid.source(10, 3) == (0, 1)
    assert grid.source(9, 3) == (1, 1)
    assert grid.source(8, 3) == (2, 1)
    assert grid.source(7, 3) == (2, 2)
    assert grid.source(0, 3) == (2, 256)
    assert grid.source(0, 1) == (0, 1024)
    for bad in (0, 12):
        with pytest.raises(ValueError):
            grid.source(5, bad)


def test_store_level_sizes_equal_deep_zoom_level_sizes() -> None:
    grid = DeepZoomGrid(Size(2221, 2967), 240, 0)
    l_size = grid.l0_size
    for k in range(grid.level_count):
        assert grid.level_size(grid.level_count - 1 - k) == l_size
        l_size = Size(-(-l_size.width // 2), -(-l_size.height // 2))


def test_tile_source() -> None:
    grid = DeepZoomGrid(Size(1000, 600), 254, 1)
    # Level 10 is the store's level 0: same region, no resize.
    source = grid.tile_source(10, 1, 0, 3)
    assert source.level == 0 and source.extra_downsample == 1
    assert source.l_region == Region(253, 0, 256, 255) == grid.tile_region(10, 1, 0)
    assert source.z_size == Size(256, 255)
    # Level 7 (125x75) reads store level 2 (250x150) at twice the scale.
    source = grid.tile_source(7, 0, 0, 3)
    assert (source.level, source.extra_downsample) == (2, 2)
    assert source.l_region == Region(0, 0, 250, 150)
    assert source.z_size == Size(125, 75)
    # An odd-sized coarser level: the last z pixel covers a partial block, clipped.
    grid = DeepZoomGrid(Size(1001, 601), 256, 0)
    source = grid.tile_source(7, 0, 0, 3)  # store level 2 is 251x151, level 7 is 126x76
    assert source.l_region == Region(0, 0, 251, 151)
    assert source.z_size == Size(126, 76)


def test_passthrough_full_tiles() -> None:
    # 1000x600 with 256 tiles: level 10 (store 0) is 4x3 tiles; only full ones qualify.
    grid = DeepZoomGrid(Size(1000, 600), 256, 0)
    assert passthrough_chunk(grid, 10, 0, 0, 256, 3) == (0, 0, 0)
    assert passthrough_chunk(grid, 10, 2, 1, 256, 3) == (0, 2, 1)
    assert passthrough_chunk(grid, 10, 3, 0, 256, 3) is None  # 1000 - 768 = 232 wide
    assert passthrough_chunk(grid, 10, 0, 2, 256, 3) is None  # 600 - 512 = 88 high
    # Level 9 (store 1) is 500x300: tile (0, 0) is full, (1, 0) is 244 wide.
    assert passthrough_chunk(grid, 9, 0, 0, 256, 3) == (1, 0, 0)
    assert passthrough_chunk(grid, 9, 1, 0, 256, 3) is None
    # Level 8 (store 2) is 250x150: smaller than a chunk, so cropped.
    assert passthrough_chunk(grid, 8, 0, 0, 256, 3) is None


def test_passthrough_needs_exact_multiple_at_edges() -> None:
    grid = DeepZoomGrid(Size(1024, 1024), 256, 0)  # store levels 1024, 512, 256
    assert passthrough_chunk(grid, 10, 3, 3, 256, 3) == (0, 3, 3)
    assert passthrough_chunk(grid, 9, 1, 0, 256, 3) == (1, 1, 0)
    assert passthrough_chunk(grid, 8, 0, 0, 256, 3) == (2, 0, 0)
    # Level 7 (128x128) is coarser than the store: needs an extra downsample.
    assert passthrough_chunk(grid, 7, 0, 0, 256, 3) is None


def test_passthrough_refuses_mismatched_tiling() -> None:
    size = Size(1024, 1024)
    assert passthrough_chunk(DeepZoomGrid(size, 254, 1), 10, 1, 1, 254, 3) is None  # overlap
    assert passthrough_chunk(DeepZoomGrid(size, 256, 0), 10, 1, 1, 240, 3) is None  # sizes
    assert passthrough_chunk(DeepZoomGrid(size, 240, 0), 10, 1, 1, 240, 3) == (0, 1, 1)
    # A level the store does not have (only 2 store levels here) is never pass-through.
    grid = DeepZoomGrid(size, 256, 0)
    assert passthrough_chunk(grid, 8, 0, 0, 256, 2) is None
    assert passthrough_chunk(grid, 9, 1, 1, 256, 2) == (1, 1, 1)


@pytest.mark.parametrize("tile", [240, 256])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_passthrough_agrees_with_aligned_chunk(width: int, height: int, tile: int) -> None:
    # For a grid cut like the store, the Deep Zoom rule is the general geometry rule: a tile
    # passes through exactly when its level-0 region, at tile x tile pixels, is one chunk.
    grid = DeepZoomGrid(Size(width, height), tile, 0)
    for store_levels in range(1, min(grid.level_count, 4) + 1):
        for z in range(grid.level_count):
            t_grid = grid.tile_grid(z)
            for t_col, t_row in tiles_to_check(t_grid.width, t_grid.height):
                z_region = grid.tile_region(z, t_col, t_row)
                d = grid.downsample(z)
                l0_region = Region(
                    z_region.x * d, z_region.y * d, z_region.width * d, z_region.height * d
                ).intersect(grid.l0_size)
                expected = None
                if z_region.size == Size(tile, tile):
                    expected = aligned_chunk(l0_region, grid.l0_size, tile, store_levels)
                assert passthrough_chunk(grid, z, t_col, t_row, tile, store_levels) == expected
