"""Streams a slide into a store, one band of chunk rows at a time, memory bounded by width.

Level 0 is read a chunk row at a time (stored JPEG tiles copied as they are when the plan
allows, otherwise decoded regions re-encoded). Each level keeps a two-band buffer; when a
pair of bands (or the last, lone band) is complete it is downsampled 2x2 into the next
level's buffer and written. Peak memory is about 2 x 2 bands x width x 3 bytes summed over
levels (~4 x 240 x 100k x 3 = 290 MB for a 100k-wide slide), independent of height.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tileserver.errors import CorruptSlide, StoreError
from tileserver.geometry import Region
from tileserver.pyramid.kernels import downsample_2x, is_uniform
from tileserver.pyramid.plan import ConvertOptions, plan_layout
from tileserver.render.encode import decode_jpeg_half
from tileserver.sources.base import SlideSource
from tileserver.store.chunks import decode_chunk, encode_chunk
from tileserver.store.icc import put_profile
from tileserver.store.layout import FILL_VALUE, StoreLayout
from tileserver.store.objects import ObjectStore
from tileserver.store.writer import StoreWriter

if TYPE_CHECKING:
    from tileserver.security.keys import KeyRing

# Called with (level-0 chunks just finished, level-0 chunks in all).
Progress = Callable[[int, int], None]


@dataclass
class ConvertResult:
    slide_id: str
    store: str  # where the store is (URL or path)
    l0_pixels: int
    seconds: float
    chunks: dict[str, int] = field(default_factory=dict)  # written, copied, background, kept

    @property
    def megapixels_per_second(self) -> float:
        return self.l0_pixels / 1e6 / max(self.seconds, 1e-9)


def source_metadata(source: SlideSource) -> dict[str, Any]:
    """The allowlisted description of the source that a store keeps."""
    info = source.info
    return {
        "vendor": info.vendor,
        "mpp": list(info.mpp) if info.mpp else None,
        "objective_power": info.objective_power,
        "properties": dict(info.properties),
    }


class _ChunkWrites:
    """Chunk writes on a thread of their own, so decoding and downsampling never wait for
    shards to be sealed and stored, and the writer is only ever called from one thread.
    Chunks are handed over a row at a time; a failed write is raised by the next ``drain``."""

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="store-write")
        self._batch: list[tuple[int, int, int, bytes]] = []
        self._pending: deque[Future[None]] = deque()

    def add(self, level: int, t_col: int, t_row: int, data: bytes) -> None:
        """Queue a chunk (from any thread: appending to a list is atomic)."""
        self._batch.append((level, t_col, t_row, data))

    def end_row(self, level: int, t_row: int) -> None:
        """Hand a completed chunk row of a level (its chunks queued so far) to the writer."""
        batch, self._batch = self._batch, []
        self._pending.append(self._thread.submit(self._write, batch, level, t_row))

    def _write(self, batch: list[tuple[int, int, int, bytes]], level: int, t_row: int) -> None:
        for chunk in batch:
            self.writer.write_chunk(*chunk)
        self.writer.end_row(level, t_row)

    def drain(self, backlog: int = 0) -> None:
        """Wait until at most ``backlog`` batches are queued (bounding memory), raising the
        first failure."""
        while self._pending and (len(self._pending) > backlog or self._pending[0].done()):
            self._pending.popleft().result()

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)


class _Builder:
    def __init__(
        self,
        source: SlideSource,
        layout: StoreLayout,
        writes: _ChunkWrites,
        copy_level0: bool,
        options: ConvertOptions,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.source = source
        self.layout = layout
        self.writes = writes
        self.copy_level0 = copy_level0
        self.options = options
        self.pool = pool
        tile = layout.tile
        # Level 0 copied from JPEG tiles: level 1 comes straight from half-size DCT-domain
        # decodes, so full-size level-0 pixels are never made (nor downsampled).
        self.half = copy_level0 and len(layout.levels) > 1
        # Two bands per level: rows [0, tile) hold even chunk rows, [tile, 2 tile) odd ones.
        self.buffers = [
            np.empty((2 * tile, s.width, 3), np.uint8) if k or not self.half else None
            for k, s in enumerate(layout.levels)
        ]
        self.counts = {"written": 0, "copied": 0, "background": 0, "kept": 0}
        # Encoded level-0 tiles already found to be background (whole, not edge tiles).
        self.white_tiles: set[bytes] = set()

    # -- level 0 ---------------------------------------------------------------------------
    def build(self, progress: Progress | None) -> None:
        grid = self.layout.grid(0)
        chunk = self._level0_half if self.half else self._level0_chunk
        for t_row in range(grid.height):
            kinds = list(self.pool.map(lambda c, r=t_row: chunk(c, r), range(grid.width)))
            self._tally(kinds, 0, t_row)
            if not self.half:
                self._band_done(0, t_row)
            elif t_row % 2 or t_row == grid.height - 1:  # a level-1 chunk row is complete
                self._store_band(1, t_row // 2)
                self._band_done(1, t_row // 2)
            self.writes.drain(backlog=8)
            if progress:
                progress(grid.width, grid.pixels)
        self.writes.drain()

    def _level0_half(self, t_col: int, t_row: int) -> str:
        """Copy one level-0 tile and decode it at half size into the level-1 band."""
        tile, half = self.layout.tile, self.layout.tile // 2
        raw = self.source.raw_tile(0, t_col, t_row)
        band = self._band(1, t_row // 2)
        size1 = self.layout.levels[1]
        x0, y0 = t_col * half, (t_row % 2) * half
        width = min(half, size1.width - x0)
        height = min(half, band.shape[0] - y0)
        if raw is None or raw.data in self.white_tiles:  # background, known without decoding
            band[y0 : y0 + height, x0 : x0 + width] = FILL_VALUE
            return "background"
        try:
            pixels = decode_jpeg_half(raw.data)
        except ValueError as exc:
            msg = f"{self.source.name}: level 0 tile ({t_col}, {t_row}) is corrupt: {exc}"
            raise CorruptSlide(msg) from exc
        if pixels.shape[:2] != (half, half):
            msg = f"{self.source.name}: level 0 tile ({t_col}, {t_row}) is not {tile}x{tile}"
            raise CorruptSlide(msg)
        target = band[y0 : y0 + height, x0 : x0 + width]
        target[...] = pixels[:height, :width]
        kind = self._store_chunk(0, t_col, t_row, target, raw.data)
        if kind == "background" and len(self.white_tiles) < 64 and (width, height) == (half, half):
            # Scanners write blank glass as the same few byte strings over and over.
            self.white_tiles.add(raw.data)
        return kind

    def _level0_chunk(self, t_col: int, t_row: int) -> str:
        tile = self.layout.tile
        band = self._band(0, t_row)
        l_x = t_col * tile
        width = min(tile, self.layout.levels[0].width - l_x)
        raw = self.source.raw_tile(0, t_col, t_row) if self.copy_level0 else None
        if raw is not None:
            try:
                pixels = decode_chunk(raw.data, "jpeg", tile)
            except StoreError as exc:
                msg = f"{self.source.name}: level 0 tile ({t_col}, {t_row}) is corrupt: {exc}"
                raise CorruptSlide(msg) from exc
        else:
            pixels = self.source.read_region(0, Region(l_x, t_row * tile, tile, tile))
        band[:, l_x : l_x + width] = pixels[: band.shape[0], :width]
        return self._store_chunk(
            0, t_col, t_row, band[:, l_x : l_x + width], raw.data if raw else None
        )

    # -- every level -----------------------------------------------------------------------
    def _band(self, level: int, t_row: int) -> np.ndarray:
        """The buffer rows holding chunk row ``t_row`` of a level (short for the last row)."""
        tile = self.layout.tile
        rows = min(tile, self.layout.levels[level].height - t_row * tile)
        start = (t_row % 2) * tile
        buffer = self.buffers[level]
        assert buffer is not None
        return buffer[start : start + rows]

    def _store_band(self, level: int, t_row: int) -> None:
        """Write every chunk of a complete chunk row already in its buffer."""
        band, tile = self._band(level, t_row), self.layout.tile

        def chunk(t_col: int) -> str:
            part = band[:, t_col * tile : (t_col + 1) * tile]
            return self._store_chunk(level, t_col, t_row, part, None)

        self._tally(list(self.pool.map(chunk, range(self.layout.grid(level).width))), level, t_row)

    def _store_chunk(
        self, level: int, t_col: int, t_row: int, pixels: np.ndarray, stored: bytes | None
    ) -> str:
        """Write one chunk (``pixels`` is its part inside the level); returns what happened."""
        if is_uniform(pixels, FILL_VALUE, self.options.background_tolerance):
            pixels[...] = FILL_VALUE  # upper levels see exactly what a reader sees
            return "background"
        if self.writes.writer.has_shard(level, t_col, t_row):
            return "kept"  # an earlier run finished its shard
        if stored is not None:
            self.writes.add(level, t_col, t_row, stored)
            return "copied"
        tile = self.layout.tile
        full = pixels
        if pixels.shape[:2] != (tile, tile):
            full = np.full((tile, tile, 3), FILL_VALUE, np.uint8)
            full[: pixels.shape[0], : pixels.shape[1]] = pixels
        self.writes.add(
            level, t_col, t_row, encode_chunk(full, self.layout.codec, self.layout.quality)
        )
        return "written"

    def _band_done(self, level: int, t_row: int) -> None:
        """Chunk row ``t_row`` of ``level`` is in its buffer: make the next level's row if due."""
        if level + 1 >= len(self.layout.levels):
            return
        last = t_row == self.layout.grid(level).height - 1
        if t_row % 2 == 0 and not last:
            return  # wait for the odd partner band
        next_row = t_row // 2
        tile = self.layout.tile
        src_rows = (t_row % 2) * tile + self._band(level, t_row).shape[0]
        buffer = self.buffers[level]
        assert buffer is not None
        src = buffer[:src_rows]
        dst = self._band(level + 1, next_row)
        grid = self.layout.grid(level + 1)

        def chunk(t_col: int) -> str:
            l_x = t_col * tile
            width = min(tile, dst.shape[1] - l_x)
            downsample_2x(src[:, 2 * l_x : 2 * l_x + 2 * width], dst[:, l_x : l_x + width])
            return self._store_chunk(level + 1, t_col, next_row, dst[:, l_x : l_x + width], None)

        self._tally(list(self.pool.map(chunk, range(grid.width))), level + 1, next_row)
        self._band_done(level + 1, next_row)

    def _tally(self, kinds: list[str], level: int, t_row: int) -> None:
        """After each pool.map (one chunk row of one level): count what happened, pass the
        row's writes on."""
        for kind in kinds:
            self.counts[kind] += 1
        self.writes.end_row(level, t_row)


def convert(
    source: SlideSource,
    store: ObjectStore,
    slide_id: str,
    options: ConvertOptions,
    keyring: KeyRing | None,
    progress: Progress | None = None,
) -> ConvertResult:
    """Convert a whole slide into ``store`` (the slide's own: ``{stores}/{slide_id}``).

    With a key ring the store is encrypted; ``None`` writes a plaintext research export."""
    started = time.perf_counter()
    layout, copy_level0 = plan_layout(source.info, source.raw_tile_codec(0), options, slide_id)
    writer = StoreWriter.create(store, layout, source_metadata(source), keyring)
    writes = _ChunkWrites(writer)
    try:
        with ThreadPoolExecutor(options.workers) as pool:
            builder = _Builder(source, layout, writes, copy_level0, options, pool)
            builder.build(progress)
    finally:
        writes.close()
    if options.keep_associated:
        for name in source.info.associated:
            pixels = source.read_associated(name)
            writer.objects.put(f"associated/{name}.jpg", encode_chunk(pixels, "jpeg", 90))
    icc = source.info.icc_profile
    icc_entry = put_profile(writer.objects, icc) if icc else {}  # sealed, listed in the marker
    seconds = time.perf_counter() - started
    result = ConvertResult(
        slide_id, store.url, source.info.dimensions.pixels, seconds, builder.counts
    )
    writer.finish(
        {
            "slide_id": slide_id,
            "levels": len(layout.levels),
            "chunks": builder.counts,
            "level0_copied": copy_level0,
            "associated": list(source.info.associated) if options.keep_associated else [],
            **icc_entry,
        }
    )
    return result
