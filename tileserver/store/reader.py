"""Reads a complete store: layout from its metadata, chunks by key, regions by composition."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tileserver.errors import RegionError, StoreError
from tileserver.geometry import Region
from tileserver.store.chunks import decode_chunk
from tileserver.store.encrypted import objects_for_reading
from tileserver.store.layout import COMPLETE_MARKER, FILL_VALUE, GROUP_METADATA, StoreLayout
from tileserver.store.objects import Objects

if TYPE_CHECKING:
    from tileserver.security.keys import KeyRing

MAX_REGION_PIXELS = 1 << 28


class StoreReader:
    """An open, complete store. Immutable after open; reads are thread-safe."""

    def __init__(self, objects: Objects, name: str) -> None:
        self.objects = objects
        self.name = name
        if objects.get(COMPLETE_MARKER) is None:
            raise StoreError(f"{name}: store is incomplete (no completion marker)")
        doc = objects.get(GROUP_METADATA)
        if doc is None:
            raise StoreError(f"{name}: store has no {GROUP_METADATA}")
        try:
            parsed = json.loads(doc)
        except ValueError as exc:
            raise StoreError(f"{name}: {GROUP_METADATA} is not JSON") from exc
        self.layout, self.source = StoreLayout.from_group_metadata(parsed)
        if self.layout.slide_id != name:
            raise StoreError(f"{name}: metadata names slide {self.layout.slide_id}")

    @classmethod
    def open(cls, root: Path, keyring: KeyRing | None = None) -> StoreReader:
        if not root.is_dir():
            raise StoreError(f"{root.name}: no such store")
        return cls(objects_for_reading(root, keyring), root.name)

    def chunk_bytes(self, level: int, t_col: int, t_row: int) -> bytes | None:
        """The stored chunk, or None for a background chunk that was never written."""
        self._check_chunk(level, t_col, t_row)
        return self.objects.get(self.layout.chunk_key(level, t_col, t_row))

    def read_chunk(self, level: int, t_col: int, t_row: int) -> np.ndarray:
        data = self.chunk_bytes(level, t_col, t_row)
        tile = self.layout.tile
        if data is None:
            return np.full((tile, tile, 3), FILL_VALUE, dtype=np.uint8)
        try:
            return decode_chunk(data, self.layout.codec, tile)
        except StoreError as exc:
            raise StoreError(f"{self.name}: level {level} chunk ({t_col}, {t_row}): {exc}") from exc

    def read_region(self, level: int, l_region: Region) -> np.ndarray:
        """uint8 RGB pixels of a region in level pixels; outside the level is white."""
        if not 0 <= level < len(self.layout.levels):
            raise RegionError(f"{self.name}: level {level} out of range")
        if l_region.width <= 0 or l_region.height <= 0:
            raise RegionError(f"{self.name}: empty region")
        if l_region.width * l_region.height > MAX_REGION_PIXELS:
            raise RegionError(f"{self.name}: region exceeds the cap of {MAX_REGION_PIXELS} pixels")
        out = np.full((l_region.height, l_region.width, 3), FILL_VALUE, dtype=np.uint8)
        inside = l_region.intersect(self.layout.levels[level])
        if inside.width and inside.height:
            x, y = inside.x - l_region.x, inside.y - l_region.y
            out[y : y + inside.height, x : x + inside.width] = compose(
                lambda t_col, t_row: self.read_chunk(level, t_col, t_row), self.layout.tile, inside
            )
        return out
        tile = self.layout.tile
        for t_row in range(inside.y // tile, (inside.y + inside.height - 1) // tile + 1):
            for t_col in range(inside.x // tile, (inside.x + inside.width - 1) // tile + 1):
                pixels = self.read_chunk(level, t_col, t_row)
                l_x, l_y = t_col * tile, t_row * tile
                x0, y0 = max(l_x, inside.x), max(l_y, inside.y)
                x1 = min(l_x + tile, inside.x + inside.width)
                y1 = min(l_y + tile, inside.y + inside.height)
                out[y0 - l_region.y : y1 - l_region.y, x0 - l_region.x : x1 - l_region.x] = pixels[
                    y0 - l_y : y1 - l_y, x0 - l_x : x1 - l_x
                ]
        return out

    def summary(self) -> dict[str, Any]:
        """The completion marker's record of the conversion."""
        return dict(json.loads(self.objects.get(COMPLETE_MARKER) or b"{}"))

    def _check_chunk(self, level: int, t_col: int, t_row: int) -> None:
        if not 0 <= level < len(self.layout.levels):
            raise RegionError(f"{self.name}: level {level} out of range")
        grid = self.layout.grid(level)
        if not (0 <= t_col < grid.width and 0 <= t_row < grid.height):
            raise RegionError(f"{self.name}: chunk ({t_col}, {t_row}) outside level {level}")


def compose(
    read_chunk: Callable[[int, int], np.ndarray], tile: int, l_region: Region
) -> np.ndarray:
    """Pixels of a region inside a level, copied out of the (tile x tile) chunks it touches."""
    out = np.empty((l_region.height, l_region.width, 3), np.uint8)
    for t_row in range(l_region.y // tile, -(-(l_region.y + l_region.height) // tile)):
        for t_col in range(l_region.x // tile, -(-(l_region.x + l_region.width) // tile)):
            chunk = read_chunk(t_col, t_row)
            x0, y0 = max(t_col * tile, l_region.x), max(t_row * tile, l_region.y)
            x1 = min((t_col + 1) * tile, l_region.x + l_region.width)
            y1 = min((t_row + 1) * tile, l_region.y + l_region.height)
            out[y0 - l_region.y : y1 - l_region.y, x0 - l_region.x : x1 - l_region.x] = chunk[
                y0 - t_row * tile : y1 - t_row * tile, x0 - t_col * tile : x1 - t_col * tile
            ]
    return out


def complete_stores(directory: Path) -> list[str]:
    """Slide IDs of the complete stores in a directory (incomplete ones are never listed)."""
    return sorted(
        p.name for p in directory.iterdir() if p.is_dir() and (p / COMPLETE_MARKER).is_file()
    )
