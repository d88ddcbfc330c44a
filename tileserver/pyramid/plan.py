"""Conversion plan: pure decisions about a store's layout from a source's description."""

from __future__ import annotations

from dataclasses import dataclass

from tileserver.geometry import Size
from tileserver.sources.base import SlideInfo
from tileserver.store.layout import CODECS, DEFAULT_SHARD, StoreLayout, pyramid_sizes

DEFAULT_TILE = 256
# Source tiles we copy as chunks: square, even (2x2 downsampling pairs rows), not absurd.
_PASSTHROUGH_EDGES = range(64, 2049, 2)


@dataclass(frozen=True)
class ConvertOptions:
    codec: str = "jpeg"  # "jpeg" (lossy, the default) or "zstd" (lossless)
    # JPEG quality of chunks we encode (4:4:4; copied chunks keep theirs). 90: on the corpus's
    # H&E and fluorescence it cuts the worst error 1.7-10x against 4:2:0 Q85 for 1.5-1.85x
    # the bytes, still 4-6x smaller than lossless (benchmarks/RESULTS.md, JPEG quality).
    quality: int = 90
    tile: int = DEFAULT_TILE  # chunk edge when source tiles cannot be copied
    workers: int = 2  # threads decoding, downsampling and encoding chunks
    keep_associated: bool = False  # copy label/macro/thumbnail (identifying!) into the store
    background_tolerance: int = 3  # a chunk within this of pure white is not written
    shard: int = DEFAULT_SHARD  # chunks per shard edge

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, not {self.codec!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be 1..100, not {self.quality}")
        if self.tile < 16 or self.tile % 2:
            raise ValueError(f"tile must be an even number >= 16, not {self.tile}")
        if not 1 <= self.shard <= 256:
            raise ValueError(f"shard must be 1..256 chunks, not {self.shard}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, not {self.workers}")


def passthrough_tile(info: SlideInfo, raw_codec: str | None, options: ConvertOptions) -> int | None:
    """The source tile edge when level-0 tiles can be copied as chunks, else None."""
    tile = info.levels[0].tile
    if options.codec != "jpeg" or raw_codec != "jpeg" or tile is None:
        return None
    if tile.width != tile.height or tile.width not in _PASSTHROUGH_EDGES:
        return None
    return tile.width


def plan_layout(
    info: SlideInfo, raw_codec: str | None, options: ConvertOptions, slide_id: str
) -> tuple[StoreLayout, bool]:
    """The store layout, and whether level-0 chunks are copied from the source."""
    copied = passthrough_tile(info, raw_codec, options)
    tile = copied or options.tile
    levels = pyramid_sizes(Size(*info.dimensions), tile)
    layout = StoreLayout(slide_id, levels, tile, options.codec, options.quality, options.shard)
    return layout, copied is not None
