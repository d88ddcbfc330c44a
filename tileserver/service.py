"""Use cases behind every protocol: tiles, images, thumbnails, regions, metadata.

The async boundary: opening slides, decoding, resizing and encoding run in a bounded
thread pool. A request abandoned by its client is cancelled while it waits for a worker,
so its work never starts. A pass-through tile (one ranged read and an AES-GCM open) is
awaited on the loop: from an object store the read is asynchronous, and from local disk it
is about 50 us from the page cache, less than the two thread hops of the pool would cost
(cold random tiles: about 1.3x the throughput at concurrency 8; decision 0001).
Caches (all bounded): open slides (in the library), decoded chunks, encoded responses.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import numpy as np

from tileserver.errors import RegionError, SlideNotFound, TileserverError
from tileserver.geometry import Region, Size, best_level, level_region
from tileserver.library import Pyramid, SlideLibrary
from tileserver.protocols import deepzoom, iiif
from tileserver.render.encode import MEDIA_TYPES, encode, resize, rotate, to_quality
from tileserver.store.layout import FILL_VALUE
from tileserver.store.reader import compose

T = TypeVar("T")


@dataclass(frozen=True)
class ServiceSettings:
    dzi_tile: int | None = None  # DeepZoom tile edge; None = the store's chunk edge
    dzi_overlap: int = 0
    quality: int = 85  # JPEG/WebP quality of images we encode
    max_width: int = 8192  # output caps for IIIF images, regions and thumbnails
    max_height: int = 8192
    max_area: int = 8192 * 8192
    threads: int = 2  # render threads
    max_pending: int = 256  # render jobs queued or running before new ones wait
    response_cache_bytes: int = 256 << 20
    chunk_cache_items: int = 512


@dataclass(frozen=True)
class Encoded:
    data: bytes
    media_type: str
    etag: str


@dataclass(frozen=True)
class NotModified:
    """The client already holds this response (its If-None-Match named the ETag)."""

    etag: str


@functools.lru_cache(maxsize=8)
def _blank_tile(edge: int, fmt: str, quality: int) -> bytes:
    """A background chunk (never written: fill value), encoded once per edge and format."""
    return encode(np.full((edge, edge, 3), FILL_VALUE, np.uint8), fmt, quality)


class _LRU:
    """A thread-safe LRU bounded by total weight (bytes, or 1 per item)."""

    def __init__(self, capacity: int, weigh: Callable[[Any], int]) -> None:
        self.capacity = capacity
        self.weigh = weigh
        self.weight = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        weight = self.weigh(value)
        if weight > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.weight -= self.weigh(old)
            self._items[key] = value
            self.weight += weight
            while self.weight > self.capacity:
                _, evicted = self._items.popitem(last=False)
                self.weight -= self.weigh(evicted)


class SlideService:
    def __init__(self, library: SlideLibrary, settings: ServiceSettings) -> None:
        self.library = library
        self.settings = settings
        self._executor = ThreadPoolExecutor(settings.threads, thread_name_prefix="render")
        self._slots = asyncio.Semaphore(settings.max_pending)
        self._responses = _LRU(settings.response_cache_bytes, lambda e: len(e.data))
        self._chunks = _LRU(settings.chunk_cache_items, lambda _: 1)
        # Work actually done (not just asked for), for tests and benchmarks.
        self.stats: Counter[str] = Counter()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def pyramid(self, slide_id: str) -> Pyramid:
        # Open slides are a dictionary lookup away; only opening one needs the pool.
        pyramid = self.library.peek(slide_id)
        if pyramid is None:
            pyramid = await self._run(self.library.get, slide_id)
        return pyramid

    # -- slides ----------------------------------------------------------------------------
    async def list_slides(
        self, offset: int, limit: int, visible: set[str] | None
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of the slides in ``visible`` (None: every slide), each described."""
        ids = await self._run(self.library.slide_ids)
        if visible is not None:
            ids = [slide_id for slide_id in ids if slide_id in visible]
        items = []
        for slide_id in ids[offset : offset + limit]:
            try:
                items.append(await self.describe(slide_id))
            except TileserverError:  # one unreadable slide must not hide the others
                items.append({"id": slide_id, "available": False})
        return items, len(ids)

    async def describe(self, slide_id: str) -> dict[str, Any]:
        p = await self.pyramid(slide_id)
        meta = p.metadata
        return {
            "id": p.slide_id,
            "available": True,
            "width": p.levels[0].width,
            "height": p.levels[0].height,
            "levels": [
                {"width": s.width, "height": s.height, "downsample": 2**k}
                for k, s in enumerate(p.levels)
            ],
            "tile_size": p.tile,
            "mpp": meta.get("mpp"),
            "objective_power": meta.get("objective_power"),
            "vendor": meta.get("vendor"),
            "associated": list(p.associated),
            "properties": meta.get("properties", {}),
        }

    # -- DeepZoom --------------------------------------------------------------------------
    def _grid(self, p: Pyramid) -> deepzoom.DeepZoomGrid:
        return deepzoom.DeepZoomGrid(
            p.levels[0], self.settings.dzi_tile or p.tile, self.settings.dzi_overlap
        )

    async def dzi(self, slide_id: str, fmt: str) -> str:
        p = await self.pyramid(slide_id)
        grid = self._grid(p)
        return deepzoom.dzi_xml(p.levels[0], grid.tile, grid.overlap, fmt)

    async def deepzoom_tile(
        self,
        slide_id: str,
        z: int,
        t_col: int,
        t_row: int,
        fmt: str,
        if_none_match: Collection[str],
    ) -> Encoded | NotModified:
        """The tile, or NotModified when ``if_none_match`` already names it (304)."""
        p = await self.pyramid(slide_id)
        grid = self._grid(p)
        grid.tile_region(z, t_col, t_row)  # TileNotFound before any work
        chunk = deepzoom.passthrough_chunk(grid, z, t_col, t_row, p.tile, len(p.levels))
        key = ("dz", grid.tile, grid.overlap, z, t_col, t_row, fmt)
        if chunk is not None and p.codec == fmt:
            fetch = partial(self._passthrough, p, *chunk, fmt)
            return await self._respond(p, key, fmt, if_none_match, fetch=fetch)
        source = grid.tile_source(z, t_col, t_row, len(p.levels))
        work = partial(self._render, p, source.level, source.l_region, source.z_size, fmt)
        return await self._respond(p, key, fmt, if_none_match, work)

    # -- IIIF ------------------------------------------------------------------------------
    async def iiif_info(self, slide_id: str, base_id: str) -> dict[str, Any]:
        p = await self.pyramid(slide_id)
        s = self.settings
        sizes = [
            lv
            for lv in reversed(p.levels)
            if lv.width <= s.max_width and lv.height <= s.max_height and lv.pixels <= s.max_area
        ]
        return iiif.info_json(
            base_id,
            p.levels[0],
            p.tile,
            [2**k for k in range(len(p.levels))],
            max_width=s.max_width,
            max_height=s.max_height,
            max_area=s.max_area,
            sizes=sizes[:8],
        )

    async def iiif_image(
        self,
        slide_id: str,
        params: tuple[str, str, str, str, str],
        if_none_match: Collection[str],
    ) -> Encoded | NotModified:
        p = await self.pyramid(slide_id)
        request = self._parse_iiif(p, params)
        fmt = {"jpg": "jpeg"}.get(request.format, request.format)
        chunk = iiif.passthrough_chunk(request, p.levels[0], p.tile, len(p.levels))
        key = ("iiif", request)
        if chunk is not None and p.codec == fmt:
            fetch = partial(self._passthrough, p, *chunk, fmt)
            return await self._respond(p, key, fmt, if_none_match, fetch=fetch)
        work = partial(self._render_iiif, p, request, fmt)
        return await self._respond(p, key, fmt, if_none_match, work)

    async def iiif_request(
        self, slide_id: str, params: tuple[str, str, str, str, str]
    ) -> tuple[iiif.ImageRequest, Pyramid]:
        """An image request checked against the slide and the output caps, and the slide."""
        p = await self.pyramid(slide_id)
        return self._parse_iiif(p, params), p

    def _parse_iiif(self, p: Pyramid, params: tuple[str, str, str, str, str]) -> iiif.ImageRequest:
        s = self.settings
        return iiif.parse_request(
            *params,
            p.levels[0],
            max_width=s.max_width,
            max_height=s.max_height,
            max_area=s.max_area,
        )

    def _render_iiif(self, p: Pyramid, request: iiif.ImageRequest, fmt: str) -> bytes:
        self.stats["rendered"] += 1
        level = best_level(request.l0_region, request.out_size, len(p.levels))
        l_region = level_region(request.l0_region, level, p.levels[0])
        pixels = resize(self._read(p, level, l_region), request.out_size)
        pixels = rotate(to_quality(pixels, request.quality), request.rotation, request.mirror)
        return encode(pixels, fmt, self.settings.quality)

    # -- REST images -----------------------------------------------------------------------
    async def thumbnail(
        self, slide_id: str, max_size: int, fmt: str, if_none_match: Collection[str]
    ) -> Encoded | NotModified:
        if not 1 <= max_size <= min(self.settings.max_width, self.settings.max_height):
            raise RegionError(
                f"max must be 1..{min(self.settings.max_width, self.settings.max_height)}"
            )
        p = await self.pyramid(slide_id)
        l0 = p.levels[0]
        scale = min(max_size / l0.width, max_size / l0.height, 1.0)
        out = Size(max(1, round(l0.width * scale)), max(1, round(l0.height * scale)))
        return await self._image(
            p, Region(0, 0, l0.width, l0.height), out, fmt, ("thumb", max_size, fmt), if_none_match
        )

    async def region(
        self, slide_id: str, l0_region: Region, out: Size, fmt: str, if_none_match: Collection[str]
    ) -> Encoded | NotModified:
        s = self.settings
        if out.width > s.max_width or out.height > s.max_height or out.pixels > s.max_area:
            raise RegionError(
                f"output {out.width}x{out.height} exceeds the cap of "
                f"{s.max_width}x{s.max_height} and {s.max_area} pixels"
            )
        p = await self.pyramid(slide_id)
        clipped = l0_region.intersect(p.levels[0])
        if clipped != l0_region:
            raise RegionError(
                f"region {tuple(l0_region)} is not inside the slide {tuple(p.levels[0])}"
            )
        return await self._image(
            p, l0_region, out, fmt, ("region", l0_region, out, fmt), if_none_match
        )

    async def _image(
        self,
        p: Pyramid,
        l0_region: Region,
        out: Size,
        fmt: str,
        key: tuple[Any, ...],
        if_none_match: Collection[str],
    ) -> Encoded | NotModified:
        def render() -> bytes:
            self.stats["rendered"] += 1
            level = best_level(l0_region, out, len(p.levels))
            l_region = level_region(l0_region, level, p.levels[0])
            return encode(resize(self._read(p, level, l_region), out), fmt, self.settings.quality)

        return await self._respond(p, key, fmt, if_none_match, render)

    async def associated(
        self, slide_id: str, name: str, fmt: str, if_none_match: Collection[str]
    ) -> Encoded | NotModified:
        p = await self.pyramid(slide_id)
        if name not in p.associated:
            raise SlideNotFound(f"no associated image {name!r}")

        def render() -> bytes:
            return encode(p.read_associated(name), fmt, self.settings.quality)

        return await self._respond(p, ("associated", name, fmt), fmt, if_none_match, render)

    async def _respond(
        self,
        p: Pyramid,
        key: tuple[Any, ...],
        fmt: str,
        if_none_match: Collection[str],
        work: Callable[[], bytes] | None = None,
        *,
        fetch: Callable[[], Awaitable[bytes]] | None = None,
    ) -> Encoded | NotModified:
        """304 when the client has it, the cached response when we have it, else ``work``
        run in the render pool, or ``fetch`` (stored bytes, no pixels) awaited here; the
        result is cached."""
        etag = self._etag(p, key)
        if etag in if_none_match:
            return NotModified(etag)
        cache_key = (p.slide_id, p.generation, key)
        cached = self._responses.get(cache_key)
        if cached is not None:
            return cast(Encoded, cached)
        if fetch is not None:
            data = await fetch()
        else:
            assert work is not None
            data = await self._run(work)
        encoded = Encoded(data, MEDIA_TYPES[fmt], etag)
        self._responses.put(cache_key, encoded)
        return encoded

    async def _passthrough(self, p: Pyramid, level: int, t_col: int, t_row: int, fmt: str) -> bytes:
        self.stats["passthrough"] += 1
        data = await p.chunk_bytes_async(level, t_col, t_row)
        return _blank_tile(p.tile, fmt, self.settings.quality) if data is None else data

    # -- pixels (executor threads) -----------------------------------------------------------

    def _chunk(self, p: Pyramid, level: int, t_col: int, t_row: int) -> np.ndarray:
        key = (p.slide_id, p.generation, level, t_col, t_row)
        pixels = self._chunks.get(key)
        if pixels is None:
            pixels = p.read_chunk(level, t_col, t_row)
            pixels.flags.writeable = False  # shared between requests
            self._chunks.put(key, pixels)
        return pixels

    def _read(self, p: Pyramid, level: int, l_region: Region) -> np.ndarray:
        """Pixels of a region inside a level, composed from (cached) decoded chunks."""
        return compose(lambda c, r: self._chunk(p, level, c, r), p.tile, l_region)

    def _render(self, p: Pyramid, level: int, l_region: Region, size: Size, fmt: str) -> bytes:
        self.stats["rendered"] += 1
        return encode(resize(self._read(p, level, l_region), size), fmt, self.settings.quality)

    # -- caching -----------------------------------------------------------------------------
    @staticmethod
    def _etag(p: Pyramid, key: tuple[Any, ...]) -> str:
        """Strong ETag: the store's generation plus a digest of what was asked for."""
        digest = hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()
        return f'"{p.generation}-{digest}"'
