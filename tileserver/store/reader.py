"""Reads a complete store: layout from its metadata, chunks by key, regions by composition.

Format 2 (sharded): a chunk is a ranged read of its shard, located through the shard's index,
which is read once (bounded cache) and checked against the digest the completion marker
lists, so a deleted, truncated, replaced or swapped shard is an IntegrityError, never
background. Only shards the marker does not list are background. Format 1 (a file per chunk)
is still read; it cannot tell a deleted chunk from background, so opening one warns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tileserver.errors import IntegrityError, RegionError, StoreError, UnsupportedFeature
from tileserver.geometry import Region
from tileserver.store.chunks import decode_channel_chunk, decode_chunk
from tileserver.store.encrypted import objects_for_reading, parts
from tileserver.store.icc import get_profile
from tileserver.store.layout import COMPLETE_MARKER, FILL_VALUE, GROUP_METADATA, StoreLayout
from tileserver.store.objects import ObjectStore
from tileserver.store.shards import EMPTY, decode_index, index_bytes, index_digest, index_name

if TYPE_CHECKING:
    from tileserver.security.keys import KeyRing

logger = logging.getLogger(__name__)

MAX_REGION_PIXELS = 1 << 28
INDEX_CACHE_SHARDS = 1024  # 4 KiB each at 16 x 16 chunks per shard


def _json_document(data: bytes | None, what: str) -> dict[str, Any]:
    if data is None:
        raise StoreError(f"{what} is missing")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{what} is not JSON") from exc
    if not isinstance(doc, dict):
        raise StoreError(f"{what} is not a JSON object")
    return doc


class StoreReader:
    """An open, complete store. Immutable after open (but for its index cache); reads are
    thread-safe, and the ``*_async`` reads await the backend instead of blocking."""

    def __init__(self, objects: ObjectStore, name: str) -> None:
        self.objects = objects
        self.name = name
        self.raw, self.sealing = parts(objects)
        marker_blob = self.raw.get(COMPLETE_MARKER)
        if marker_blob is None:
            raise StoreError(f"{name}: store is incomplete (no completion marker)")
        marker_text = self.sealing.open(COMPLETE_MARKER, marker_blob)
        marker = _json_document(marker_text, f"{name}: completion marker")
        doc = _json_document(objects.get(GROUP_METADATA), f"{name}: {GROUP_METADATA}")
        layout, self.source = StoreLayout.from_group_metadata(doc)
        # The marker is written last and decides the format: `migrate` rewrites it before the
        # metadata documents.
        version = marker.get("format_version", 1)
        try:
            if version == 2:
                layout = dataclasses.replace(layout, format_version=2, shard=int(marker["shard"]))
                self.shards: dict[str, str] = {str(k): str(v) for k, v in marker["shards"].items()}
            elif version == 1:
                layout = dataclasses.replace(layout, format_version=1, shard=1)
                self.shards = {}
                logger.warning("%s: store format 1: run `tileserver migrate` (format 2)", name)
            else:
                raise StoreError(f"{name}: unknown store format v{version}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{name}: malformed completion marker: {exc!r}") from exc
        if layout.slide_id != name:
            raise StoreError(f"{name}: metadata names slide {layout.slide_id}")
        self.layout = layout
        self.marker = marker
        self.generation_bytes = marker_blob  # changes whenever the store is rebuilt
        self._index_length = index_bytes(layout.chunks_per_shard) + self.sealing.overhead
        self._indexes: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, store: ObjectStore, slide_id: str, keyring: KeyRing | None = None) -> StoreReader:
        """Open the store of ``slide_id`` (``store`` is that slide's own)."""
        return cls(objects_for_reading(store, slide_id, keyring), slide_id)

    # -- chunks ------------------------------------------------------------------------------
    def chunk_bytes(
        self, level: int, t_col: int, t_row: int, *, c: int = 0, z: int = 0
    ) -> bytes | None:
        """The stored chunk, or None for a background chunk that was never written.
        ``c`` names a channel of a channel store (RGB chunks hold all three: c = 0), ``z`` a
        focal plane."""
        self._check_chunk(level, t_col, t_row, c, z)
        name = self.layout.chunk_key(level, t_col, t_row, c=c, z=z)
        if self.layout.format_version == 1:
            return self.objects.get(name)
        key, i = self.layout.locate(level, t_col, t_row, c=c, z=z)
        entries = self._cached_index(key)
        if entries is ...:
            blob = self.raw.get_range(key, 0, self._index_length)
            entries = self._remember_index(key, blob)
        span = _span(entries, i)
        if span is None:
            return None
        return self._open_chunk(name, key, span, self.raw.get_range(key, *span))

    async def chunk_bytes_async(
        self, level: int, t_col: int, t_row: int, *, c: int = 0, z: int = 0
    ) -> bytes | None:
        """``chunk_bytes`` with the backend's reads awaited (S3: never blocking the loop)."""
        self._check_chunk(level, t_col, t_row, c, z)
        name = self.layout.chunk_key(level, t_col, t_row, c=c, z=z)
        if self.layout.format_version == 1:
            return await self.objects.get_async(name)
        key, i = self.layout.locate(level, t_col, t_row, c=c, z=z)
        entries = self._cached_index(key)
        if entries is ...:
            blob = await self.raw.get_range_async(key, 0, self._index_length)
            entries = self._remember_index(key, blob)
        span = _span(entries, i)
        if span is None:
            return None
        data = await self.raw.get_range_async(key, *span)
        return self._open_chunk(name, key, span, data)

    def _cached_index(self, key: str) -> Any:
        """The shard's entries, None for a background shard, or ``...`` when not cached."""
        if key not in self.shards:
            return None
        with self._lock:
            entries = self._indexes.get(key, ...)
            if entries is not ...:
                self._indexes.move_to_end(key)
            return entries

    def _remember_index(self, key: str, blob: bytes | None) -> np.ndarray:
        what = f"{self.name}: shard {key}"
        if blob is None:
            raise IntegrityError(f"{what} is missing")
        if len(blob) < self._index_length:
            raise IntegrityError(f"{what} is truncated")
        index = self.sealing.open(index_name(key), blob)
        if index_digest(index) != self.shards[key]:
            raise IntegrityError(f"{what} is not the shard this store was completed with")
        entries = decode_index(index, self.layout.chunks_per_shard, what)
        with self._lock:
            self._indexes[key] = entries
            while len(self._indexes) > INDEX_CACHE_SHARDS:
                self._indexes.popitem(last=False)
        return entries

    def _open_chunk(self, name: str, key: str, span: tuple[int, int], blob: bytes | None) -> bytes:
        if blob is None or len(blob) != span[1]:
            raise IntegrityError(
                f"{self.name}: shard {key} is {'missing' if blob is None else 'truncated'}"
            )
        return self.sealing.open(name, blob)

    def read_chunk(self, level: int, t_col: int, t_row: int, z: int = 0) -> np.ndarray:
        """(tile, tile, 3) uint8 RGB pixels of a chunk of an RGB store, plane ``z``."""
        self._require("rgb")
        return self.decode(level, t_col, t_row, self.chunk_bytes(level, t_col, t_row, z=z))

    def decode(self, level: int, t_col: int, t_row: int, data: bytes | None) -> np.ndarray:
        """Pixels of an RGB chunk from its stored bytes (None: background)."""
        tile = self.layout.tile
        if data is None:
            return np.full((tile, tile, 3), FILL_VALUE, dtype=np.uint8)
        try:
            return decode_chunk(data, self.layout.codec, tile)
        except StoreError as exc:
            raise StoreError(f"{self.name}: level {level} chunk ({t_col}, {t_row}): {exc}") from exc

    def read_channel_chunk(
        self, level: int, t_col: int, t_row: int, c: int, z: int = 0
    ) -> np.ndarray:
        """(tile, tile) samples of channel ``c`` (plane ``z``) of a channel store's chunk;
        background chunks are 0."""
        self._require("channels")
        data = self.chunk_bytes(level, t_col, t_row, c=c, z=z)
        return self.decode_channel(level, t_col, t_row, data)

    def decode_channel(self, level: int, t_col: int, t_row: int, data: bytes | None) -> np.ndarray:
        """Samples of a channel chunk from its stored bytes (None: background)."""
        tile, dtype = self.layout.tile, self.layout.dtype
        if data is None:
            return np.zeros((tile, tile), dtype=dtype)
        try:
            return decode_channel_chunk(data, dtype, tile)
        except StoreError as exc:
            raise StoreError(f"{self.name}: level {level} chunk ({t_col}, {t_row}): {exc}") from exc

    def read_region(self, level: int, l_region: Region, z: int = 0) -> np.ndarray:
        """uint8 RGB pixels of a region in level pixels, plane ``z``; outside the level is
        white. RGB stores only (a channel store's pixels are composited by the renderer)."""
        self._require("rgb")
        self._check_region(level, l_region, 3)
        self._check_plane(z)
        out = np.full((l_region.height, l_region.width, 3), FILL_VALUE, dtype=np.uint8)
        inside = l_region.intersect(self.layout.levels[level])
        if inside.width and inside.height:
            x, y = inside.x - l_region.x, inside.y - l_region.y
            out[y : y + inside.height, x : x + inside.width] = compose(
                lambda t_col, t_row: self.read_chunk(level, t_col, t_row, z),
                self.layout.tile,
                inside,
            )
        return out

    def read_channels(
        self, level: int, l_region: Region, channels: Sequence[int], z: int = 0
    ) -> np.ndarray:
        """(height, width, len(channels)) samples of the store's dtype, in the order asked,
        of a region in level pixels, plane ``z``; outside the level is 0."""
        self._require("channels")
        picked = list(channels)
        if not picked:
            raise RegionError(f"{self.name}: no channels asked for")
        for c in picked:
            self._check_channel(c)
        self._check_plane(z)
        itemsize = np.dtype(self.layout.dtype).itemsize
        self._check_region(level, l_region, len(picked) * itemsize)
        out = np.zeros((l_region.height, l_region.width, len(picked)), dtype=self.layout.dtype)
        inside = l_region.intersect(self.layout.levels[level])
        if inside.width and inside.height:
            x, y = inside.x - l_region.x, inside.y - l_region.y
            for i, c in enumerate(picked):

                def chunk(t_col: int, t_row: int, c: int = c) -> np.ndarray:
                    return self.read_channel_chunk(level, t_col, t_row, c, z)[:, :, None]

                part = compose(chunk, self.layout.tile, inside, 1, self.layout.dtype)
                out[y : y + inside.height, x : x + inside.width, i] = part[:, :, 0]
        return out

    def describe(self) -> dict[str, Any]:
        """What the pixels are: kind, dtype, channels (names, colours, emission, display
        windows, active), planes (z offsets in micrometres) and the default plane."""
        return self.layout.image_attributes()

    def icc_profile(self) -> bytes | None:
        """The slide's ICC profile (unsealed, digest checked), or None when it has none."""
        return get_profile(self.objects, self.marker, self.name)

    def summary(self) -> dict[str, Any]:
        """The completion marker's record of the conversion, with ``describe()``."""
        return {**self.marker, **self.describe()}

    def _require(self, kind: str) -> None:
        if self.layout.kind != kind:
            what = "RGB pixels" if kind == "rgb" else "channels"
            raise UnsupportedFeature(f"{self.name}: a {self.layout.kind} store has no {what}")

    def _check_region(self, level: int, l_region: Region, pixel_bytes: int) -> None:
        """The cap is on bytes allocated, an RGB region's of ``MAX_REGION_PIXELS``: a region
        of many or 16-bit channels may have proportionally fewer pixels."""
        if not 0 <= level < len(self.layout.levels):
            raise RegionError(f"{self.name}: level {level} out of range")
        if l_region.width <= 0 or l_region.height <= 0:
            raise RegionError(f"{self.name}: empty region")
        cap = MAX_REGION_PIXELS * 3 // pixel_bytes
        if l_region.width * l_region.height > cap:
            raise RegionError(f"{self.name}: region exceeds the cap of {cap} pixels")

    def _check_channel(self, c: int) -> None:
        if not 0 <= c < len(self.layout.chunk_channels):
            raise RegionError(f"{self.name}: channel {c} out of range")

    def _check_plane(self, z: int) -> None:
        if not 0 <= z < self.layout.planes:
            raise RegionError(f"{self.name}: plane {z} out of range")

    def _check_chunk(self, level: int, t_col: int, t_row: int, c: int = 0, z: int = 0) -> None:
        if not 0 <= level < len(self.layout.levels):
            raise RegionError(f"{self.name}: level {level} out of range")
        grid = self.layout.grid(level)
        if not (0 <= t_col < grid.width and 0 <= t_row < grid.height):
            raise RegionError(f"{self.name}: chunk ({t_col}, {t_row}) outside level {level}")
        self._check_channel(c)
        self._check_plane(z)


def _span(entries: np.ndarray | None, i: int) -> tuple[int, int] | None:
    if entries is None or entries[i, 0] == EMPTY:
        return None
    return int(entries[i, 0]), int(entries[i, 1])


def compose(
    read_chunk: Callable[[int, int], np.ndarray],
    tile: int,
    l_region: Region,
    channels: int = 3,
    dtype: str = "uint8",
) -> np.ndarray:
    """Samples of a region inside a level, copied out of the (tile x tile) chunks it touches
    (each (tile, tile, channels) of ``dtype``)."""
    out = np.empty((l_region.height, l_region.width, channels), dtype)
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
