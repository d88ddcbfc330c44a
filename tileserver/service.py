"""Use cases behind every protocol: tiles, images, thumbnails, regions, metadata.

The async boundary: opening slides, decoding, resizing and encoding run in a bounded
thread pool. A request abandoned by its client is cancelled while it waits for a worker,
so its work never starts. A pass-through tile (one ranged read and an AES-GCM open) is
awaited on the loop: from an object store the read is asynchronous, and from local disk it
is about 50 us from the page cache, less than the two thread hops of the pool would cost
(cold random tiles: about 1.3x the throughput at concurrency 8; decision 0001).
Caches (all bounded): open slides (in the library), decoded chunks, encoded responses.
What a request shows (render plan, display, colour handling) is decided in view_plan.py.

Renders are limited by cost (issue 14, finding 3). Each is planned first (level, source
region, output size), then charged to its principal's output-pixel budget (429 when spent;
render/budget.py) and admitted by estimated memory (render/admission.py). Small renders
(tiles, thumbnails) run in the render pool and never wait behind large ones, which run in a
pool of their own (``large_threads``), at most ``large_per_principal`` per principal, while
their estimates fit under the render memory ceiling. Not charged: pass-through tiles (no
pixels) and DeepZoom tiles, which are at most one tile of the operator's grid each (their
rate is the request rate limit's business). Associated images are charged a nominal
``ASSOCIATED_PIXELS``: their size is known only once decoded, which the sources cap at
2**26 pixels.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import numpy as np

from tileserver.errors import RegionError, SlideNotFound, TileserverError
from tileserver.geometry import Region, Size
from tileserver.library import Pyramid, SlideLibrary
from tileserver.lru import WeightedLRU
from tileserver.protocols import deepzoom, iiif
from tileserver.protocols.display import Display, display_document, parse_display
from tileserver.render import colour
from tileserver.render.admission import MIB, RenderGate
from tileserver.render.budget import RenderBudget
from tileserver.render.composite import compose_channels, composite
from tileserver.render.encode import MEDIA_TYPES, encode, resize, rotate, to_quality
from tileserver.store.layout import FILL_VALUE
from tileserver.store.reader import compose
from tileserver.view_plan import (
    Plan,
    channel_sample_bytes,
    embedded,
    icc_keyed,
    icc_mode,
    keyed,
    plain,
    plan_at,
    plan_for,
    to_srgb,
)

T = TypeVar("T")

# A render estimated at no more than this runs in the render pool, never waiting behind a
# large one: a 1024-px thumbnail (about 15.7 MiB) or a 512-px tile read at up to 2x.
SMALL_RENDER_BYTES = 16 * MIB
LARGE_RENDER_NICENESS = 10  # CPU shares about 1:10 against the loop's (Linux CFS weights)
ASSOCIATED_PIXELS = 2_000_000  # labels and macros are well under this in practice


@dataclass(frozen=True)
class ServiceSettings:
    dzi_tile: int | None = None  # DeepZoom tile edge; None = the store's chunk edge
    dzi_overlap: int = 0
    quality: int = 85  # JPEG/WebP quality of images we encode
    max_width: int = 8192  # output caps for IIIF images, regions and thumbnails
    max_height: int = 8192
    max_area: int = 8192 * 8192
    # ^ sizes at most this many times the region's edge. Upscaling adds no detail (level 0
    # is the scanner's optical resolution) and costs the square of the factor in pixels;
    # viewers zoom past level 0 themselves. 2x still shows a field at twice the objective,
    # but 0,0,100,100/^max is 200x200, no longer 8192x8192.
    max_upscale: float = 2.0
    threads: int = 2  # render threads
    max_pending: int = 256  # render jobs queued or running before new ones wait
    # Per principal, output megapixels per second and burst (0: no budget). 8/s is 120
    # 256-px tiles or 30 512-px thumbnails a second, sustained; the burst covers a
    # worklist's thumbnails and two 8192 x 8192 renders, after which one such render costs
    # about 8 s of waiting: a single principal cannot keep the large pool busy.
    render_budget_mpx: float = 8.0
    render_burst_mpx: float = 128.0
    # Estimated peak bytes of renders in flight (MiB). A full 20000x15000 slide rendered at
    # 8192 px peaks near 1 GiB; more than one such at once is what took the server to 1.4 GiB.
    render_memory_mib: int = 1024
    render_wait: float = 10.0  # seconds a large render may wait for room, then 503
    large_threads: int = 1  # on 2 cores, the other core stays with tiles and thumbnails
    large_per_principal: int = 1
    response_cache_bytes: int = 256 << 20
    chunk_cache_items: int = 512
    # DICOMweb UIDs are derived from slide IDs under this root ("2.25": UUID-derived).
    dicom_uid_root: str = "2.25"


def _yield_cpu() -> None:
    """Large-render threads run at a lower CPU priority (Linux: a thread's own niceness), so
    on a busy machine the event loop and the small renders of other users go first."""
    with contextlib.suppress(OSError, AttributeError):  # elsewhere: as it is
        thread = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, thread) + LARGE_RENDER_NICENESS
        os.setpriority(os.PRIO_PROCESS, thread, min(19, nice))


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


class SlideService:
    def __init__(self, library: SlideLibrary, settings: ServiceSettings) -> None:
        self.library = library
        self.settings = settings
        self._executor = ThreadPoolExecutor(settings.threads, thread_name_prefix="render")
        self._large = ThreadPoolExecutor(
            settings.large_threads, thread_name_prefix="render-large", initializer=_yield_cpu
        )
        self.budget = RenderBudget(settings.render_budget_mpx, settings.render_burst_mpx)
        self.gate = RenderGate(
            settings.render_memory_mib * MIB,
            small=SMALL_RENDER_BYTES,
            small_slots=settings.threads,
            per_key=settings.large_per_principal,
            wait=settings.render_wait,
        )
        self._slots = asyncio.Semaphore(settings.max_pending)
        self._responses = WeightedLRU[Any](settings.response_cache_bytes, lambda e: len(e.data))
        self._chunks = WeightedLRU[Any](settings.chunk_cache_items, lambda _: 1)
        # Work actually done (not just asked for), for tests and benchmarks.
        self.stats: Counter[str] = Counter()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._large.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def pyramid(self, slide_id: str) -> Pyramid:
        # Open slides are a dictionary lookup away; only opening one needs the pool.
        pyramid = self.library.peek(slide_id)
        if pyramid is None:
            pyramid = await self._run(self.library.get, slide_id)
            if pyramid.icc_profile is not None:  # its transform built here, not on the loop
                await self._run(colour.can_convert, pyramid.icc_profile)
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
            "icc_profile": colour.profile_info(p.icc_profile).as_dict() if p.icc_profile else None,
            **display_document(p.display),
        }

    async def icc_profile(self, slide_id: str) -> bytes:
        """The slide's ICC profile; SlideNotFound when it has none."""
        p = await self.pyramid(slide_id)
        if p.icc_profile is None:
            raise SlideNotFound(f"slide {slide_id} has no ICC profile")
        return p.icc_profile

    # -- DeepZoom --------------------------------------------------------------------------
    def _grid(self, p: Pyramid) -> deepzoom.DeepZoomGrid:
        return deepzoom.grid_of(
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
        display: Mapping[str, str] | None = None,
        icc: str | None = None,
    ) -> Encoded | NotModified:
        """The tile, or NotModified when ``if_none_match`` already names it (304).
        ``display``: the channel and plane parameters (protocols/display.py); none: the
        stored display settings. ``icc``: none|embed|srgb (render/colour.py), None: default."""
        p = await self.pyramid(slide_id)
        d = parse_display(display or {}, p.display)
        grid = self._grid(p)
        chunk = deepzoom.passthrough_chunk(grid, z, t_col, t_row, p.tile, len(p.levels))
        key = keyed(("dz", grid.tile, grid.overlap, z, t_col, t_row, fmt), p, d)
        stored = chunk is not None and p.codec == fmt and plain(p, d)
        mode = icc_mode(p, d, icc, tile=True)
        key = icc_keyed(key, mode)
        if chunk is not None and stored and mode != colour.SRGB:
            fetch = partial(self._passthrough, p, *chunk, fmt, mode)
            return await self._respond(p, key, fmt, if_none_match, fetch=fetch)
        source = grid.tile_source(z, t_col, t_row, len(p.levels))
        plan = plan_at(source.level, source.l_region, source.z_size, channel_sample_bytes(p, d))
        work = partial(self._render, p, plan, fmt, d, mode)
        return await self._respond(p, key, fmt, if_none_match, work, plan=plan)

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
        who: str | None = None,
        icc: str | None = None,
    ) -> Encoded | NotModified:
        """The image; a render is charged to ``who``'s budget (None: not charged)."""
        p = await self.pyramid(slide_id)
        request = self._parse_iiif(p, params)
        fmt = {"jpg": "jpeg"}.get(request.format, request.format)
        chunk = iiif.passthrough_chunk(request, p.levels[0], p.tile, len(p.levels))
        d = parse_display({}, p.display)  # IIIF has no channel parameters: the default view
        key = keyed(("iiif", request), p, d)
        stored = chunk is not None and p.codec == fmt and plain(p, d)
        mode = icc_mode(p, d, icc, tile=stored)  # the route says "none" for grid tiles
        key = icc_keyed(key, mode)
        if chunk is not None and stored and mode != colour.SRGB:
            fetch = partial(self._passthrough, p, *chunk, fmt, mode)
            return await self._respond(p, key, fmt, if_none_match, fetch=fetch)
        plan = plan_for(p, request.l0_region, request.out_size, channel_sample_bytes(p, d))
        work = partial(self._render_iiif, p, request, plan, fmt, d, mode)
        return await self._respond(p, key, fmt, if_none_match, work, plan=plan, who=who)

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
            max_upscale=s.max_upscale,
        )

    def _render_iiif(
        self,
        p: Pyramid,
        request: iiif.ImageRequest,
        plan: Plan,
        fmt: str,
        d: Display,
        icc: str = colour.NONE,
    ) -> bytes:
        self.stats["rendered"] += 1
        pixels = resize(self._pixels(p, plan.level, plan.l_region, d), plan.out)
        pixels = to_srgb(p, pixels, icc)
        pixels = rotate(to_quality(pixels, request.quality), request.rotation, request.mirror)
        return encode(pixels, fmt, self.settings.quality, embedded(p, icc))

    # -- REST images -----------------------------------------------------------------------
    async def thumbnail(
        self,
        slide_id: str,
        max_size: int,
        fmt: str,
        if_none_match: Collection[str],
        who: str | None = None,
        display: Mapping[str, str] | None = None,
        icc: str | None = None,
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
            p,
            Region(0, 0, l0.width, l0.height),
            out,
            fmt,
            ("thumb", max_size, fmt),
            if_none_match,
            who,
            display,
            icc,
        )

    async def region(
        self,
        slide_id: str,
        l0_region: Region,
        out: Size,
        fmt: str,
        if_none_match: Collection[str],
        who: str | None = None,
        display: Mapping[str, str] | None = None,
        icc: str | None = None,
    ) -> Encoded | NotModified:
        s = self.settings
        if out.width > s.max_width or out.height > s.max_height or out.pixels > s.max_area:
            raise RegionError(
                f"output {out.width}x{out.height} exceeds the cap of "
                f"{s.max_width}x{s.max_height} and {s.max_area} pixels"
            )
        limit = s.max_upscale
        if out.width > l0_region.width * limit or out.height > l0_region.height * limit:
            raise RegionError(
                f"output {out.width}x{out.height} enlarges the {l0_region.width}x"
                f"{l0_region.height} region more than the maximum upscaling of {limit:g}x"
            )
        p = await self.pyramid(slide_id)
        clipped = l0_region.intersect(p.levels[0])
        if clipped != l0_region:
            raise RegionError(
                f"region {tuple(l0_region)} is not inside the slide {tuple(p.levels[0])}"
            )
        return await self._image(
            p,
            l0_region,
            out,
            fmt,
            ("region", l0_region, out, fmt),
            if_none_match,
            who,
            display,
            icc,
        )

    async def _image(
        self,
        p: Pyramid,
        l0_region: Region,
        out: Size,
        fmt: str,
        key: tuple[Any, ...],
        if_none_match: Collection[str],
        who: str | None,
        display: Mapping[str, str] | None = None,
        icc: str | None = None,
    ) -> Encoded | NotModified:
        d = parse_display(display or {}, p.display)
        plan = plan_for(p, l0_region, out, channel_sample_bytes(p, d))
        mode = icc_mode(p, d, icc, tile=False)
        work = partial(self._render, p, plan, fmt, d, mode)
        key = icc_keyed(keyed(key, p, d), mode)
        return await self._respond(p, key, fmt, if_none_match, work, plan=plan, who=who)

    async def associated(
        self,
        slide_id: str,
        name: str,
        fmt: str,
        if_none_match: Collection[str],
        who: str | None = None,
    ) -> Encoded | NotModified:
        p = await self.pyramid(slide_id)
        if name not in p.associated:
            raise SlideNotFound(f"no associated image {name!r}")

        def render() -> bytes:
            return encode(p.read_associated(name), fmt, self.settings.quality)

        plan = plan_at(0, Region(0, 0, 0, 0), Size(ASSOCIATED_PIXELS, 1))  # nominal
        key = ("associated", name, fmt)
        return await self._respond(p, key, fmt, if_none_match, render, plan=plan, who=who)

    async def _respond(
        self,
        p: Pyramid,
        key: tuple[Any, ...],
        fmt: str,
        if_none_match: Collection[str],
        work: Callable[[], bytes] | None = None,
        *,
        plan: Plan | None = None,
        who: str | None = None,
        fetch: Callable[[], Awaitable[bytes]] | None = None,
    ) -> Encoded | NotModified:
        """304 when the client has it, the cached response when we have it, else ``work``
        rendered as ``plan`` says (charged to ``who``), or ``fetch`` (stored bytes, no
        pixels) awaited here; the result is cached."""
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
            assert work is not None and plan is not None
            data = await self._render_admitted(work, plan, who)
        encoded = Encoded(data, MEDIA_TYPES[fmt], etag)
        self._responses.put(cache_key, encoded)
        return encoded

    async def _render_admitted(
        self, work: Callable[[], bytes], plan: Plan, who: str | None
    ) -> bytes:
        """Charge the budget, wait for memory, then render: small renders in the render
        pool, large ones in their own."""
        if who is not None:
            self.budget.charge(who, plan.out.pixels)
        try:
            await self.gate.acquire(who, plan.nbytes)
        except BaseException:  # refused or abandoned: nothing was rendered
            if who is not None:
                self.budget.refund(who, plan.out.pixels)
            raise
        if self.gate.is_small(plan.nbytes):
            return await self._run(work)
        loop = asyncio.get_running_loop()
        try:
            job = self._large.submit(work)
        except BaseException:
            self.gate.release(who, plan.nbytes)
            raise

        def finished(_: Future[bytes]) -> None:
            # Only when the work is over (or never started): an abandoned request's render
            # still holds its memory until then.
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to wake
                loop.call_soon_threadsafe(self.gate.release, who, plan.nbytes)

        job.add_done_callback(finished)
        self.stats["rendered_large"] += 1
        return await asyncio.wrap_future(job)

    async def _passthrough(
        self, p: Pyramid, level: int, t_col: int, t_row: int, fmt: str, icc: str = colour.NONE
    ) -> bytes:
        self.stats["passthrough"] += 1
        data = await p.chunk_bytes_async(level, t_col, t_row)
        data = _blank_tile(p.tile, fmt, self.settings.quality) if data is None else data
        profile = embedded(p, icc)
        if profile is not None and fmt == "jpeg":  # spliced in: the scan stays as stored
            data = colour.embed_in_jpeg(data, profile)
        return data

    # -- pixels (executor threads) -----------------------------------------------------------

    def _chunk(self, p: Pyramid, level: int, t_col: int, t_row: int, z: int = 0) -> np.ndarray:
        key: tuple[Any, ...] = (p.slide_id, p.generation, level, t_col, t_row)
        if z:
            key = (*key, "z", z)
        pixels = self._chunks.get(key)
        if pixels is None:
            pixels = p.read_chunk(level, t_col, t_row, z)
            pixels.flags.writeable = False  # shared between requests
            self._chunks.put(key, pixels)
        return pixels

    def _channel_chunk(
        self, p: Pyramid, level: int, t_col: int, t_row: int, c: int, z: int
    ) -> np.ndarray:
        key = (p.slide_id, p.generation, level, t_col, t_row, "c", c, z)
        samples = self._chunks.get(key)
        if samples is None:
            samples = p.read_channel_chunk(level, t_col, t_row, c, z=z)
            samples.flags.writeable = False  # shared between requests
            self._chunks.put(key, samples)
        return samples

    def display_chunk(self, p: Pyramid, level: int, t_col: int, t_row: int) -> np.ndarray:
        """(tile, tile, 3) RGB of one chunk as the slide shows by default: the stored chunk of
        an RGB single-plane slide, else its default plane or channel composite (DICOMweb's
        frames: one picture per tile, whatever the slide holds)."""
        d = parse_display({}, p.display)
        if plain(p, d):
            return self._chunk(p, level, t_col, t_row)
        tile = p.tile
        return self._pixels(p, level, Region(t_col * tile, t_row * tile, tile, tile), d)

    def _read(self, p: Pyramid, level: int, l_region: Region, z: int = 0) -> np.ndarray:
        """Pixels of a region inside a level, composed from (cached) decoded chunks."""
        return compose(lambda c, r: self._chunk(p, level, c, r, z), p.tile, l_region)

    def _pixels(self, p: Pyramid, level: int, l_region: Region, d: Display) -> np.ndarray:
        """RGB pixels of a region as ``d`` shows it: the plane, or the channels' composite."""
        if not d.channels:
            return self._read(p, level, l_region, d.z)
        samples = compose_channels(
            lambda c, t_col, t_row: self._channel_chunk(p, level, t_col, t_row, c, d.z),
            d.channels,
            p.tile,
            l_region,
            np.dtype(p.display.dtype),
        )
        return composite(samples, d.colors, d.windows)

    def _render(
        self, p: Pyramid, plan: Plan, fmt: str, d: Display, icc: str = colour.NONE
    ) -> bytes:
        self.stats["rendered"] += 1
        pixels = resize(self._pixels(p, plan.level, plan.l_region, d), plan.out)
        pixels = to_srgb(p, pixels, icc)
        return encode(pixels, fmt, self.settings.quality, embedded(p, icc))

    # -- caching -----------------------------------------------------------------------------
    @staticmethod
    def _etag(p: Pyramid, key: tuple[Any, ...]) -> str:
        """Strong ETag: the store's generation plus a digest of what was asked for."""
        digest = hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()
        return f'"{p.generation}-{digest}"'
