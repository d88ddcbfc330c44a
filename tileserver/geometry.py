"""Value types for sizes and regions, with the coordinate frame in the name.

Frames: ``l0`` is level-0 pixels, ``l`` is pixels of one pyramid level, ``t`` is tile
indices. A region is always given in one frame, named by the variable holding it.
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


def tile_count(size: Size, tile: Size) -> Size:
    """How many tiles of ``tile`` cover ``size`` (the last column and row may be partial)."""
    return Size(-(-size.width // tile.width), -(-size.height // tile.height))
