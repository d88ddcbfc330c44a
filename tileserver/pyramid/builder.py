"""Streams a slide into a store, one band of chunk rows at a time, memory bounded by width.

Level 0 is read a chunk row at a time (stored JPEG tiles copied as they are when the plan
allows, otherwise decoded regions re-encoded). Each level keeps a two-band buffer; when a
pair of bands (or the last, lone band) is complete it is downsampled 2x2 into the next
level's buffer and written. Peak memory is about 2 x 2 bands x width x 3 bytes summed over
levels (~4 x 240 x 100k x 3 = 290 MB for a 100k-wide slide), independent of height.

Channel slides go the same way with bands of (rows, width, C) samples (uint8 or uint16),
each channel of a chunk encoded on its own (zstd); the display windows come from a histogram
of a low level, taken as its bands pass. Focal planes are converted one after another, and
channels in groups whose bands fit CHANNEL_BANDS_BYTES (more passes, bounded memory).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tileserver.errors import CorruptSlide, StoreError
from tileserver.geometry import Region
from tileserver.pyramid.kernels import downsample_2x, histogram, is_uniform
from tileserver.pyramid.plan import ConvertOptions, plan_layout
from tileserver.pyramid.windows import display_window, window_level
from tileserver.render.encode import decode_jpeg_half
from tileserver.sources.base import SlideSource
from tileserver.store.chunks import decode_chunk, encode_channel_chunk, encode_chunk
from tileserver.store.icc import put_profile
from tileserver.store.layout import FILL_VALUE, StoreLayout
from tileserver.store.objects import ObjectStore
from tileserver.store.writer import StoreWriter

if TYPE_CHECKING:
    from tileserver.security.keys import KeyRing

# Level bands of a channel slide: more channels than fit are converted in further passes
# (each reads the source again) - 8 16-bit channels of a 64k-wide slide fit in one.
CHANNEL_BANDS_BYTES = 1 << 30
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
        self._batch: list[tuple[int, int, int, bytes, int]] = []
        self._pending: deque[Future[None]] = deque()

    def add(self, level: int, t_col: int, t_row: int, data: bytes, c: int = 0) -> None:
        """Queue a chunk (from any thread: appending to a list is atomic)."""
        self._batch.append((level, t_col, t_row, data, c))

    def end_row(self, level: int, t_row: int, z: int = 0) -> None:
        """Hand a completed chunk row of a level (its chunks queued so far) to the writer."""
        batch, self._batch = self._batch, []
        self._pending.append(self._thread.submit(self._write, batch, level, t_row, z))

    def _write(
        self, batch: list[tuple[int, int, int, bytes, int]], level: int, t_row: int, z: int
    ) -> None:
        for level_, t_col, t_row_, data, c in batch:
            self.writer.write_chunk(level_, t_col, t_row_, data, c=c, z=z)
        self.writer.end_row(level, t_row, z=z)

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
        z: int = 0,
        counts: dict[str, int] | None = None,
        group: range = range(0),
        passes: int = 1,
    ) -> None:
        self.source = source
        self.layout = layout
        self.writes = writes
        self.copy_level0 = copy_level0
        self.options = options
        self.pool = pool
        self.z = z  # the focal plane this builder converts
        self.channels = layout.kind == "channels"
        self.group = group  # channel slides: the channels this pass converts
        self.passes = passes  # over the whole slide (planes x channel groups), for progress
        tile = layout.tile
        # Level 0 copied from JPEG tiles: level 1 comes straight from half-size DCT-domain
        # decodes, so full-size level-0 pixels are never made (nor downsampled).
        self.half = copy_level0 and len(layout.levels) > 1
        # Two bands per level: rows [0, tile) hold even chunk rows, [tile, 2 tile) odd ones.
        samples = len(group) if self.channels else 3
        self.buffers = [
            np.empty((2 * tile, s.width, samples), layout.dtype) if k or not self.half else None
            for k, s in enumerate(layout.levels)
        ]
        if counts is None:
            counts = {"written": 0, "copied": 0, "background": 0, "kept": 0}
        self.counts = counts
        # Channel slides: per-channel counts of one level's samples, for display windows.
        self.histogram_level = window_level(layout.levels)
        self.histogram: np.ndarray | None = None
        if self.channels and z == layout.default_plane:
            bins = 1 << (8 * np.dtype(layout.dtype).itemsize)
            self.histogram = np.zeros((len(group), bins), np.int64)
        # Encoded level-0 tiles already found to be background (whole, not edge tiles).
        self.white_tiles: set[bytes] = set()

    # -- level 0 ---------------------------------------------------------------------------
    def build(self, progress: Progress | None) -> None:
        grid = self.layout.grid(0)
        total = grid.pixels * self.passes
        chunk = self._level0_half if self.half else self._level0_chunk
        for t_row in range(grid.height):
            kinds = list(self.pool.map(lambda c, r=t_row: chunk(c, r), range(grid.width)))
            self._tally(kinds, 0, t_row)
            if not self.half:
                self._band_done(0, t_row)
            elif t_row % 2 or t_row == grid.height - 1:  # a level-1 chunk row is complete
                self._store_band(1, t_row // 2)
                self._band_done(1, t_row // 2)
            # Rows of channel chunks are C times larger: keep fewer of them queued.
            self.writes.drain(backlog=2 if self.channels else 8)
            if progress:
                progress(grid.width, total)
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
            l_region = Region(l_x, t_row * tile, tile, tile)
            if self.channels:
                pixels = self.source.read_channels(0, l_region, self.z)
                pixels = pixels[:, :, self.group.start : self.group.stop]
            elif self.layout.stacked:
                pixels = self.source.read_region(0, l_region, self.z)
            else:
                pixels = self.source.read_region(0, l_region)
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
        if self.channels:
            return self._store_channels(level, t_col, t_row, pixels)
        if is_uniform(pixels, FILL_VALUE, self.options.background_tolerance):
            pixels[...] = FILL_VALUE  # upper levels see exactly what a reader sees
            return "background"
        if self.writes.writer.has_shard(level, t_col, t_row, z=self.z):
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

    def _store_channels(self, level: int, t_col: int, t_row: int, pixels: np.ndarray) -> str:
        """Write each channel of one chunk as a chunk of its own; all-dark ones are
        background (not stored: the fill value is 0). "written" when any channel was."""
        tile = self.layout.tile
        height, width = pixels.shape[:2]
        kinds = set()
        for i, c in enumerate(self.group):
            full = np.zeros((tile, tile), pixels.dtype)
            full[:height, :width] = pixels[:, :, i]
            if not full.any():
                kinds.add("background")
            elif self.writes.writer.has_shard(level, t_col, t_row, c=c, z=self.z):
                kinds.add("kept")
            else:
                self.writes.add(level, t_col, t_row, encode_channel_chunk(full), c)
                kinds.add("written")
        return next(k for k in ("written", "kept", "background") if k in kinds)

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
        if self.histogram is not None and level == self.histogram_level:
            band = self._band(level, t_row)[:, : self.layout.levels[level].width]
            histogram(band, self.histogram)
        self.writes.end_row(level, t_row, self.z)

    def display_windows(self) -> tuple[tuple[float, float], ...]:
        """The display window of each channel of the group, from the histogram taken while
        building."""
        assert self.histogram is not None
        return tuple(display_window(counts) for counts in self.histogram)


def channel_groups(layout: StoreLayout) -> list[range]:
    """The channels converted together, one pass over the slide each: as many as keep the
    level bands (about 4 x tile x width samples a channel) within CHANNEL_BANDS_BYTES, so
    memory stays bounded by width whatever the channel count (RGB: one pass)."""
    if layout.kind != "channels":
        return [range(0)]
    per_channel = 4 * layout.tile * layout.levels[0].width * np.dtype(layout.dtype).itemsize
    size = max(1, CHANNEL_BANDS_BYTES // per_channel)
    return [range(c, min(c + size, layout.channels)) for c in range(0, layout.channels, size)]


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
    metadata = source_metadata(source)
    writer = StoreWriter.create(store, layout, metadata, keyring)
    writes = _ChunkWrites(writer)
    counts = {"written": 0, "copied": 0, "background": 0, "kept": 0}
    windows: list[tuple[float, float]] = []
    passes = [(z, group) for z in range(layout.planes) for group in channel_groups(layout)]
    try:
        with ThreadPoolExecutor(options.workers) as pool:
            for z, group in passes:
                builder = _Builder(
                    source, layout, writes, copy_level0, options, pool, z, counts, group,
                    len(passes),
                )  # fmt: skip
                builder.build(progress)
                if builder.histogram is not None:
                    windows.extend(builder.display_windows())
    finally:
        writes.close()
    if windows:
        infos = tuple(
            dataclasses.replace(info, window=window)
            for info, window in zip(layout.channel_info, windows, strict=True)
        )
        writer.rewrite_group_metadata(dataclasses.replace(layout, channel_info=infos), metadata)
    if options.keep_associated:
        for name in source.info.associated:
            pixels = source.read_associated(name)
            writer.objects.put(f"associated/{name}.jpg", encode_chunk(pixels, "jpeg", 90))
    icc = source.info.icc_profile
    icc_entry = put_profile(writer.objects, icc) if icc else {}  # sealed, listed in the marker
    seconds = time.perf_counter() - started
    result = ConvertResult(slide_id, store.url, source.info.dimensions.pixels, seconds, counts)
    writer.finish(
        {
            "slide_id": slide_id,
            "levels": len(layout.levels),
            "chunks": counts,
            "level0_copied": copy_level0,
            "associated": list(source.info.associated) if options.keep_associated else [],
            **icc_entry,
        }
    )
    return result
