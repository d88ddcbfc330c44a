"""Deep Zoom geometry, matching ``openslide.deepzoom.DeepZoomGenerator`` tile for tile.

Deep Zoom level ``z`` is level 0 downsampled by ``2**(level_count - 1 - z)`` with sizes
rounded up, down to a 1x1 level 0. The store halves the same way (ceil), so store level
``k`` has exactly the size of Deep Zoom level ``level_count - 1 - k``: a Deep Zoom level
either *is* a store level, or is coarser than the store's coarsest level and needs an
extra power-of-two downsample.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import NamedTuple
from xml.etree.ElementTree import Element, SubElement, tostring

from tileserver.errors import TileserverError
from tileserver.geometry import Region, Size, ceil_div, level_size

DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"

_FORMAT = re.compile(r"[a-z0-9]{1,8}")


class TileNotFound(TileserverError, LookupError):
    """A Deep Zoom level, column or row outside the image (the server answers 404)."""


class TileSource(NamedTuple):
    """Where the pixels of one Deep Zoom tile come from.

    Read ``l_region`` from store level ``level``, then resize it to ``z_size``. The
    resize is a plain copy when ``extra_downsample`` is 1, except at the image edge of
    a coarser-than-store level, where the last pixel covers a partial source block.
    """

    level: int
    extra_downsample: int
    l_region: Region
    z_size: Size


@dataclass(frozen=True)
class DeepZoomGrid:
    """The Deep Zoom pyramid of an ``l0_size`` image cut into ``tile`` tiles with overlap."""

    l0_size: Size
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.l0_size.width < 1 or self.l0_size.height < 1:
            raise ValueError(f"image size must be at least 1x1, got {tuple(self.l0_size)}")
        if self.tile < 1:
            raise ValueError(f"tile size must be positive, got {self.tile}")
        if self.overlap < 0:
            raise ValueError(f"overlap must not be negative, got {self.overlap}")

    @cached_property
    def level_count(self) -> int:
        # ceil(log2(max(w, h))) + 1, in integers so huge sizes cannot hit float error.
        return (max(self.l0_size) - 1).bit_length() + 1

    def downsample(self, z: int) -> int:
        """Level-0 pixels per z-level pixel along each axis."""
        self._check_level(z)
        return 1 << (self.level_count - 1 - z)

    def level_size(self, z: int) -> Size:
        self._check_level(z)
        return self._levels[z][0]

    def tile_grid(self, z: int) -> Size:
        """Tiles across and down at level ``z``."""
        self._check_level(z)
        return self._levels[z][1]

    @cached_property
    def _levels(self) -> tuple[tuple[Size, Size], ...]:
        """(level size, tile grid) per level, worked out once: every tile request asks."""
        levels = []
        for z in range(self.level_count):
            # Iterated ceil-halving equals one ceil division: ceil(ceil(a/2)/2) == ceil(a/4).
            d = 1 << (self.level_count - 1 - z)
            size = Size(ceil_div(self.l0_size.width, d), ceil_div(self.l0_size.height, d))
            levels.append(
                (size, Size(ceil_div(size.width, self.tile), ceil_div(size.height, self.tile)))
            )
        return tuple(levels)

    def tile_region(self, z: int, t_col: int, t_row: int) -> Region:
        """The tile's pixels in level ``z``, overlap included on sides with a neighbour."""
        self._check_level(z)
        size, grid = self._levels[z]
        self._check_tile(z, t_col, t_row, grid)
        x, w = self._span(t_col, grid.width, size.width)
        y, h = self._span(t_row, grid.height, size.height)
        return Region(x, y, w, h)

    def source(self, z: int, store_levels: int) -> tuple[int, int]:
        """``(store level, extra downsample)`` to read level ``z`` from.

        Levels finer than the store's coarsest map one-to-one onto a store level; coarser
        ones read the coarsest store level and downsample by a further power of two.
        """
        if store_levels < 1 or store_levels > self.level_count:
            raise ValueError(
                f"store_levels must be in 1..{self.level_count} for this image, got {store_levels}"
            )
        self._check_level(z)
        steps = self.level_count - 1 - z
        level = min(steps, store_levels - 1)
        return level, 1 << (steps - level)

    def tile_source(self, z: int, t_col: int, t_row: int, store_levels: int) -> TileSource:
        """The store level and level-pixel region to read for one tile, and its final size."""
        z_region = self.tile_region(z, t_col, t_row)
        level, extra = self.source(z, store_levels)
        # The store level is this image's level at downsample 2**level, so its size is
        # known here without asking the store.
        l_bounds = level_size(self.l0_size, level)
        l_region = Region(
            z_region.x * extra,
            z_region.y * extra,
            z_region.width * extra,
            z_region.height * extra,
        ).intersect(l_bounds)
        return TileSource(level, extra, l_region, z_region.size)

    def _span(self, t: int, t_count: int, z_limit: int) -> tuple[int, int]:
        # Same arithmetic as DeepZoomGenerator._get_tile_info, one axis at a time.
        before = self.overlap if t != 0 else 0
        after = self.overlap if t != t_count - 1 else 0
        start = t * self.tile
        return start - before, min(self.tile, z_limit - start) + before + after

    def _check_level(self, z: int) -> None:
        if not 0 <= z < self.level_count:
            raise TileNotFound(f"Deep Zoom level {z} outside 0..{self.level_count - 1}")

    def _check_tile(self, z: int, t_col: int, t_row: int, grid: Size) -> None:
        if not (0 <= t_col < grid.width and 0 <= t_row < grid.height):
            raise TileNotFound(
                f"Deep Zoom tile {t_col}_{t_row} outside the {grid.width}x{grid.height} "
                f"grid of level {z}"
            )


@lru_cache(maxsize=1024)
def grid_of(l0_size: Size, tile: int, overlap: int) -> DeepZoomGrid:
    """One grid per geometry, shared, so its levels are worked out once per slide."""
    return DeepZoomGrid(l0_size, tile, overlap)


def passthrough_chunk(
    grid: DeepZoomGrid, z: int, t_col: int, t_row: int, chunk: int, store_levels: int
) -> tuple[int, int, int] | None:
    """``(store level, chunk col, chunk row)`` when the tile is exactly one stored chunk.

    The constant-time case of ``geometry.aligned_chunk`` for a grid cut like the store (same
    tile edge, no overlap); the tests check that the two agree. Edge chunks are stored
    padded to ``chunk`` pixels while the Deep Zoom edge tile is cropped, so only full-size
    tiles qualify. Raises ``TileNotFound`` for tiles outside the grid, so the caller need
    not validate first. Whether the stored encoding matches the requested format is the
    caller's decision.
    """
    z_region = grid.tile_region(z, t_col, t_row)
    level, extra = grid.source(z, store_levels)
    if grid.overlap != 0 or grid.tile != chunk or extra != 1:
        return None
    if z_region.size != Size(chunk, chunk):
        return None
    return level, t_col, t_row


def dzi_xml(size: Size, tile: int, overlap: int, fmt: str) -> str:
    """The ``.dzi`` descriptor, byte-identical to ``DeepZoomGenerator.get_dzi(fmt)``."""
    if size.width < 1 or size.height < 1:
        raise ValueError(f"image size must be at least 1x1, got {tuple(size)}")
    if tile < 1 or overlap < 0:
        raise ValueError(f"need tile >= 1 and overlap >= 0, got tile={tile} overlap={overlap}")
    if _FORMAT.fullmatch(fmt) is None:
        raise ValueError(f"tile format must be a short lowercase extension, got {fmt!r}")
    # Attribute order follows OpenSlide's so the two documents compare equal as text.
    image = Element(
        "Image", TileSize=str(tile), Overlap=str(overlap), Format=fmt, xmlns=DZI_NAMESPACE
    )
    SubElement(image, "Size", Width=str(size.width), Height=str(size.height))
    return tostring(image, encoding="unicode")
