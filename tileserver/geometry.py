"""Value types for sizes and regions, with the coordinate frame in the name, and the
pyramid arithmetic every protocol shares.

Frames: ``l0`` is level-0 pixels, ``l`` is pixels of one pyramid level, ``t`` is tile
indices. A region is always given in one frame, named by the variable holding it.

The pyramid halves with sizes rounded up: level ``k`` of an ``l0_size`` image is
``ceil(l0_size / 2**k)``, cut into ``chunk`` x ``chunk`` tiles whose last column and row are
stored padded to the full chunk.
"""

from __future__ import annotations

from typing import NamedTuple


class Size(NamedTuple):
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


class Region(NamedTuple):
    """An axis-aligned rectangle: top-left corner and size, in one frame's pixels."""

    x: int
    y: int
    width: int
    height: int

    @property
    def size(self) -> Size:
        return Size(self.width, self.height)

    def intersect(self, bounds: Size) -> Region:
        """The part of this region inside ``(0, 0, bounds)``; may be empty."""
        x0, y0 = max(self.x, 0), max(self.y, 0)
        x1 = min(self.x + self.width, bounds.width)
        y1 = min(self.y + self.height, bounds.height)
        return Region(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0))


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for a positive ``b``, in integers so huge sizes cannot hit float error."""
    return -(-a // b)


def tile_count(size: Size, tile: Size) -> Size:
    """How many tiles of ``tile`` cover ``size`` (the last column and row may be partial)."""
    return Size(ceil_div(size.width, tile.width), ceil_div(size.height, tile.height))


def level_size(l0_size: Size, level: int) -> Size:
    """The size of pyramid level ``level`` (downsample ``2**level``, rounded up).

    Iterated ceil-halving equals one ceil division: ``ceil(ceil(a/2)/2) == ceil(a/4)``.
    """
    d = 1 << level
    return Size(ceil_div(l0_size.width, d), ceil_div(l0_size.height, d))


def level_region(l0_region: Region, level: int, l0_size: Size) -> Region:
    """The pixels of level ``level`` covering ``l0_region``, clipped to that level."""
    d = 1 << level
    x0, y0 = l0_region.x // d, l0_region.y // d
    x1 = ceil_div(l0_region.x + l0_region.width, d)
    y1 = ceil_div(l0_region.y + l0_region.height, d)
    return Region(x0, y0, x1 - x0, y1 - y0).intersect(level_size(l0_size, level))


def best_level(l0_region: Region, out_size: Size, levels: int) -> int:
    """The coarsest of ``levels`` pyramid levels that needs no upsampling for ``out_size``.

    A level qualifies when it holds at least ``out_size`` pixels of the region, counting a
    partial pixel as whole: ``ceil(region / 2**k) >= out``. That is the tile size the IIIF
    implementation notes ask clients to request at scale factor ``2**k``, so edge tiles
    (``ceil``-sized, ending on the image edge, where the ceil-halved level has exactly that
    many pixels) read the same level as interior ones. Elsewhere the slack is under one
    output pixel.
    """
    if levels < 1:
        raise ValueError(f"levels must be positive, got {levels}")
    if min(l0_region.size) < 1 or min(out_size) < 1:
        raise ValueError("region and output size must be at least 1x1")
    level = 0
    while level + 1 < levels:
        d = 1 << (level + 1)
        if (
            ceil_div(l0_region.width, d) < out_size.width
            or ceil_div(l0_region.height, d) < out_size.height
        ):
            break
        level += 1
    return level


def aligned_chunk(
    l0_region: Region, l0_size: Size, chunk: int, levels: int
) -> tuple[int, int, int] | None:
    """``(level, t_col, t_row)`` when ``l0_region`` is exactly one stored chunk.

    The region must be one ``chunk`` x ``chunk`` tile of one of ``levels`` levels mapped to
    level 0 (clipped at the image edge), and the chunk must not be padded: a padded edge
    chunk holds pixels beyond the image that a reply must not have. Scaling the region to
    ``chunk`` x ``chunk`` is then a plain copy of that chunk's pixels.
    """
    for level in range(levels):
        span = chunk << level
        if l0_region.x % span or l0_region.y % span:
            continue
        t_col, t_row = l0_region.x // span, l0_region.y // span
        l_size = level_size(l0_size, level)
        if (t_col + 1) * chunk > l_size.width or (t_row + 1) * chunk > l_size.height:
            continue
        if l0_region == Region(l0_region.x, l0_region.y, span, span).intersect(l0_size):
            return level, t_col, t_row
    return None
