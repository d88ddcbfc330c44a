"""The slides a server can show: complete stores at a location (a directory or an object
store URL; or, with ``--sources``, slide files in a directory read directly), each presented
as a ``Pyramid`` of halving levels and square chunks.

Slide IDs are 32 hex digits, checked before they name a store, and source files are looked up
in an index, never joined onto a path from the request: a URL cannot name anything else.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tileserver.errors import RegionError, SlideError, SlideNotFound, UnsupportedFeature
from tileserver.geometry import Region, Size
from tileserver.protocols.display import SlideDisplay, layout_display, source_display
from tileserver.pyramid.windows import display_window
from tileserver.render.encode import decode, resize
from tileserver.slide_ids import is_slide_id
from tileserver.sources import open_slide
from tileserver.sources.base import SlideSource
from tileserver.store.layout import COMPLETE_MARKER, FILL_VALUE, pyramid_sizes
from tileserver.store.location import open_location
from tileserver.store.objects import ObjectStore
from tileserver.store.reader import StoreReader

if TYPE_CHECKING:
    from tileserver.security.keys import KeyRing

SOURCE_TILE = 256
SOURCE_WINDOW_BYTES = 64 << 20  # display windows of a file from a level of at most this
_SOURCE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms"}
# A DICOM series spans files: listed once, under an ID from its folder and Series Instance UID.
_DICOM_SUFFIXES = {".dcm", ".dicom"}


class Pyramid(Protocol):
    """One slide as the protocols see it. Immutable after open; reads are thread-safe."""

    slide_id: str
    levels: tuple[Size, ...]  # level k is level 0 downsampled by 2**k
    tile: int  # chunk edge
    codec: str | None  # codec of ``chunk_bytes``, or None when chunks are never stored
    generation: str  # changes whenever the slide's pixels may have changed (ETags)
    metadata: dict[str, Any]  # vendor, mpp, objective_power, properties
    display: SlideDisplay  # channels (none: RGB) and focal planes, with display defaults
    icc_profile: bytes | None  # what the pixels' colours mean (render/colour.py); None: sRGB

    @property
    def associated(self) -> tuple[str, ...]: ...

    def chunk_bytes(self, level: int, t_col: int, t_row: int) -> bytes | None: ...

    async def chunk_bytes_async(self, level: int, t_col: int, t_row: int) -> bytes | None: ...

    def read_chunk(self, level: int, t_col: int, t_row: int, z: int = 0) -> np.ndarray:
        """(tile, tile, 3) uint8 RGB pixels of plane ``z``: RGB slides only."""
        ...

    def read_channel_chunk(
        self, level: int, t_col: int, t_row: int, c: int, z: int = 0
    ) -> np.ndarray:
        """(tile, tile) samples of channel ``c``, plane ``z``: channel slides only."""
        ...

    def read_channels(
        self, level: int, l_region: Region, channels: Sequence[int], z: int = 0
    ) -> np.ndarray:
        """(h, w, len(channels)) samples of a region in level pixels: channel slides only."""
        ...

    def read_associated(self, name: str) -> np.ndarray: ...


class StorePyramid:
    """A complete store: stored chunks can be passed through as they are."""

    def __init__(self, store: ObjectStore, slide_id: str, keyring: KeyRing | None) -> None:
        self.reader = StoreReader.open(store, slide_id, keyring)
        layout = self.reader.layout
        self.slide_id = layout.slide_id
        self.levels = layout.levels
        self.tile = layout.tile
        self.codec: str | None = layout.codec
        # The marker is rewritten (with a fresh nonce when sealed) whenever a store is rebuilt.
        self.generation = hashlib.sha256(self.reader.generation_bytes).hexdigest()[:16]
        self.metadata = dict(self.reader.source)
        self.display = layout_display(layout)
        self.icc_profile = self.reader.icc_profile()  # read once: a few kilobytes
        kept = self.reader.summary().get("associated", [])
        self._associated = tuple(sorted(kept))

    @property
    def associated(self) -> tuple[str, ...]:
        return self._associated

    def chunk_bytes(self, level: int, t_col: int, t_row: int) -> bytes | None:
        return self.reader.chunk_bytes(level, t_col, t_row)

    async def chunk_bytes_async(self, level: int, t_col: int, t_row: int) -> bytes | None:
        return await self.reader.chunk_bytes_async(level, t_col, t_row)

    def read_chunk(self, level: int, t_col: int, t_row: int, z: int = 0) -> np.ndarray:
        return self.reader.read_chunk(level, t_col, t_row, z)

    def read_channel_chunk(
        self, level: int, t_col: int, t_row: int, c: int, z: int = 0
    ) -> np.ndarray:
        return self.reader.read_channel_chunk(level, t_col, t_row, c, z)

    def read_channels(
        self, level: int, l_region: Region, channels: Sequence[int], z: int = 0
    ) -> np.ndarray:
        return self.reader.read_channels(level, l_region, channels, z)

    def read_associated(self, name: str) -> np.ndarray:
        data = (
            self.reader.objects.get(f"associated/{name}.jpg") if name in self.associated else None
        )
        if data is None:
            raise SlideNotFound(f"{self.slide_id}: no associated image {name!r}")
        return decode(data)


class SourcePyramid:
    """A slide file read directly: virtual halving levels rendered from the nearest level.

    Owns its source: the file closes once the pyramid is unreachable, i.e. when the library
    has evicted it and the last request still reading it has finished."""

    def __init__(self, slide_id: str, source: SlideSource) -> None:
        self.slide_id = slide_id
        self.source = source
        weakref.finalize(self, source.close)
        self.tile = SOURCE_TILE
        self.levels = pyramid_sizes(source.info.dimensions, SOURCE_TILE)
        self.codec: str | None = None
        stats = [(p.stat().st_size, p.stat().st_mtime_ns) for p in source.files]
        self.generation = hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
        info = source.info
        self.display = source_display(info, _source_windows(source))
        self.icc_profile = info.icc_profile
        self.metadata = {
            "vendor": info.vendor,
            "mpp": list(info.mpp) if info.mpp else None,
            "objective_power": info.objective_power,
            "properties": dict(info.properties),
        }

    @property
    def associated(self) -> tuple[str, ...]:
        return self.source.info.associated

    def chunk_bytes(self, level: int, t_col: int, t_row: int) -> bytes | None:
        raise NotImplementedError("slide files have no stored chunks")

    async def chunk_bytes_async(self, level: int, t_col: int, t_row: int) -> bytes | None:
        raise NotImplementedError("slide files have no stored chunks")

    def read_chunk(self, level: int, t_col: int, t_row: int, z: int = 0) -> np.ndarray:
        out = np.full((self.tile, self.tile, 3), FILL_VALUE, np.uint8)
        l_region = Region(t_col * self.tile, t_row * self.tile, self.tile, self.tile)
        return self._render(level, l_region, out, lambda s, r: self.source.read_region(s, r, z))

    def read_channel_chunk(
        self, level: int, t_col: int, t_row: int, c: int, z: int = 0
    ) -> np.ndarray:
        l_region = Region(t_col * self.tile, t_row * self.tile, self.tile, self.tile)
        return self.read_channels(level, l_region, [c], z)[:, :, 0]

    def read_channels(
        self, level: int, l_region: Region, channels: Sequence[int], z: int = 0
    ) -> np.ndarray:
        picked = list(channels)
        count = len(self.source.info.channels)
        if not count:
            raise UnsupportedFeature(f"{self.slide_id}: an RGB slide has no channels to read")
        if not picked or any(not 0 <= c < count for c in picked):
            raise RegionError(f"{self.slide_id}: channels {picked} outside 0..{count - 1}")
        out = np.zeros((l_region.height, l_region.width, len(picked)), self.source.info.dtype)

        def read(src: int, region: Region) -> np.ndarray:
            return self.source.read_channels(src, region, z)[:, :, picked]

        return self._render(level, l_region, out, read)

    def _render(
        self,
        level: int,
        l_region: Region,
        out: np.ndarray,
        read: Callable[[int, Region], np.ndarray],
    ) -> np.ndarray:
        """Fill ``out`` (the region's background) with the part inside the level, read from
        the finest file level that is not finer than needed, then resized exactly."""
        downsample = 2**level
        inside = l_region.intersect(self.levels[level])
        if inside.width == 0 or inside.height == 0:
            return out
        src_levels = self.source.info.levels
        src = max(
            (i for i, lv in enumerate(src_levels) if lv.downsample <= downsample + 1e-6),
            key=lambda i: src_levels[i].downsample,
        )
        ds = src_levels[src].downsample
        x0 = math.floor(inside.x * downsample / ds)
        y0 = math.floor(inside.y * downsample / ds)
        x1 = math.ceil((inside.x + inside.width) * downsample / ds)
        y1 = math.ceil((inside.y + inside.height) * downsample / ds)
        pixels = read(src, Region(x0, y0, x1 - x0, y1 - y0))
        size = Size(inside.width, inside.height)
        x, y = inside.x - l_region.x, inside.y - l_region.y
        target = out[y : y + inside.height, x : x + inside.width]
        if out.dtype == np.uint8 and out.shape[2] == 3:
            target[...] = resize(pixels, size)
        else:  # Pillow resizes one 8- or 16-bit channel at a time
            for i in range(out.shape[2]):
                target[:, :, i] = resize(np.ascontiguousarray(pixels[:, :, i]), size)
        return out

    def read_associated(self, name: str) -> np.ndarray:
        if name not in self.associated:
            raise SlideNotFound(f"{self.slide_id}: no associated image {name!r}")
        return self.source.read_associated(name)


def _source_windows(source: SlideSource) -> list[tuple[float, float]] | None:
    """A channel slide file's display windows, as the converter takes them (percentiles of
    each channel, pyramid/windows.py), from its smallest level and default plane when that is
    small enough to read at open (a flat file's only level rarely is: then None, full range)."""
    info = source.info
    if not info.channels:
        return None
    level = min(range(len(info.levels)), key=lambda k: info.levels[k].size.pixels)
    size = info.levels[level].size
    if size.pixels * len(info.channels) * np.dtype(info.dtype).itemsize > SOURCE_WINDOW_BYTES:
        return None
    samples = source.read_channels(level, Region(0, 0, size.width, size.height), info.default_plane)
    bins = 65536 if info.dtype == "uint16" else 256
    return [
        display_window(np.bincount(samples[..., c].ravel(), minlength=bins))
        for c in range(samples.shape[-1])
    ]


def _series_uid(path: Path) -> str | None:
    """``dicom.series_uid``, imported (with wsidicom) only when a listing meets a .dcm file."""
    from tileserver.sources.dicom import series_uid

    return series_uid(path)


class SlideLibrary:
    """Slide IDs -> open pyramids, with a bounded cache of open slides. Thread-safe."""

    def __init__(
        self, location: str | Path, *, sources: bool, keyring: KeyRing | None, max_open: int = 64
    ) -> None:
        self.location = str(location)
        self.sources = sources
        self.directory = Path(location).resolve() if sources else Path()
        self.stores: ObjectStore | None = None if sources else open_location(location)
        self.keyring = keyring
        self.max_open = max_open
        self._open: OrderedDict[str, Pyramid] = OrderedDict()
        self._lock = threading.Lock()
        self._opening: dict[str, threading.Lock] = {}
        self._source_paths: dict[str, Path] = {}
        self._series_uids: dict[tuple[Path, int, int], str | None] = {}

    def slide_ids(self) -> list[str]:
        """Every servable slide, sorted. Incomplete stores are never listed."""
        if self.stores is not None:
            stores = self.stores
            return [
                name
                for name in stores.children()
                if is_slide_id(name) and stores.exists(f"{name}/{COMPLETE_MARKER}")
            ]
        paths = {}
        for root, _dirs, files in os.walk(self.directory):
            dicom = []
            for name in files:
                path = Path(root) / name
                if not path.resolve().is_relative_to(self.directory):
                    continue
                suffix = path.suffix.lower()
                rel = path.relative_to(self.directory).as_posix()
                if suffix in _DICOM_SUFFIXES:
                    dicom.append(path)
                elif suffix in _SOURCE_SUFFIXES:
                    paths[hashlib.sha256(rel.encode()).hexdigest()[:32]] = path
            if dicom:
                paths.update(self._dicom_series(Path(root), dicom))
        with self._lock:
            self._source_paths = paths
        return sorted(paths)

    def _dicom_series(self, folder: Path, files: list[Path]) -> dict[str, Path]:
        """One slide ID per DICOM series in a folder -> its first file (which opens the
        series). Headers are read once per file version, not at every listing."""
        series: dict[str, list[Path]] = {}
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                continue
            key = (path, stat.st_size, stat.st_mtime_ns)
            uid = self._series_uids.get(key, "")
            if uid == "":
                uid = _series_uid(path)
                self._series_uids[key] = uid
            if uid is not None:
                series.setdefault(uid, []).append(path)
        rel = folder.relative_to(self.directory).as_posix()
        return {
            hashlib.sha256(f"{rel}\0dicom-series\0{uid}".encode()).hexdigest()[:32]: min(paths)
            for uid, paths in series.items()
        }

    def peek(self, slide_id: str) -> Pyramid | None:
        """The slide if it is already open (no I/O: safe on the event loop), else None."""
        with self._lock:
            pyramid = self._open.get(slide_id)
            if pyramid is not None:
                self._open.move_to_end(slide_id)
            return pyramid

    def get(self, slide_id: str) -> Pyramid:
        """The open slide; SlideNotFound for anything that is not a servable slide ID."""
        if not is_slide_id(slide_id):
            raise SlideNotFound("no such slide")
        with self._lock:
            pyramid = self._open.get(slide_id)
            if pyramid is not None:
                self._open.move_to_end(slide_id)
                return pyramid
            opening = self._opening.setdefault(slide_id, threading.Lock())
        with opening:  # one thread opens a slide; the others wait for it
            with self._lock:
                if slide_id in self._open:
                    return self._open[slide_id]
            pyramid = self._load(slide_id)
            evicted = []
            with self._lock:
                self._open[slide_id] = pyramid
                self._opening.pop(slide_id, None)
                while len(self._open) > self.max_open:
                    evicted.append(self._open.popitem(last=False))
        # Dropped outside the lock: the last reference to a SourcePyramid closes its file.
        del evicted
        return pyramid

    def _load(self, slide_id: str) -> Pyramid:
        if self.stores is not None:
            store = self.stores.child(f"{slide_id}/")  # slide_id is 32 hex digits: checked
            if not store.exists(COMPLETE_MARKER):
                raise SlideNotFound("no such slide")
            return StorePyramid(store, slide_id, self.keyring)
        path = self._source_paths.get(slide_id)
        if path is None:
            self.slide_ids()
            path = self._source_paths.get(slide_id)
        if path is None:
            raise SlideNotFound("no such slide")
        try:
            return SourcePyramid(slide_id, open_slide(path))
        except SlideError as exc:  # keep the type: it decides the HTTP status
            raise type(exc)(f"{slide_id}: {exc}") from exc
