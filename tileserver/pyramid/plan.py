"""Conversion plan: pure decisions about a store's layout from a source's description."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tileserver.errors import UnsupportedFeature
from tileserver.geometry import Size
from tileserver.sources.base import SlideInfo
from tileserver.sources.channel_metadata import display_colors
from tileserver.store.layout import (
    CODECS,
    DEFAULT_ACTIVE,
    DEFAULT_SHARD,
    DTYPES,
    MAX_CHANNELS,
    MAX_PLANES,
    ChannelInfo,
    StoreLayout,
    pyramid_sizes,
)

DEFAULT_TILE = 256
CHANNEL_SHARD_ROW_BYTES = 256 << 20  # see _with_channels_and_planes
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
    if info.channels or len(info.planes) > 1:  # raw tiles are RGB of one plane
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
    return _with_channels_and_planes(layout, info), copied is not None


def _with_channels_and_planes(layout: StoreLayout, info: SlideInfo) -> StoreLayout:
    """Channel slides are stored losslessly (zstd: JPEG is for 8-bit RGB only), one channel
    per chunk; display windows are filled in by the builder once the pyramid is built."""
    if len(info.planes) > MAX_PLANES or len(info.channels) > MAX_CHANNELS:
        raise UnsupportedFeature(
            f"{len(info.channels)} channels x {len(info.planes)} planes: over the store's limits"
            f" ({MAX_CHANNELS} channels, {MAX_PLANES} planes)"
        )
    if len(info.planes) > 1:
        layout = replace(
            layout,
            planes=len(info.planes),
            plane_offsets=tuple(info.planes),
            default_plane=info.default_plane,
        )
    if not info.channels:
        return layout
    if info.dtype not in DTYPES:
        raise UnsupportedFeature(f"{info.dtype} samples cannot be stored (only {DTYPES})")
    # The writer holds a shard row's chunks until its last chunk row arrives: bound that by
    # the raw samples of a level-0 shard row (zstd may not shrink noisy channels at all).
    row_bytes = (
        layout.tile
        * layout.levels[0].width
        * len(info.channels)
        * (2 if info.dtype == "uint16" else 1)
    )
    shard = max(1, min(layout.shard, CHANNEL_SHARD_ROW_BYTES // row_bytes))
    colors = display_colors(info.channels)
    channel_info = tuple(
        ChannelInfo(
            name=ch.name or f"Channel {i}",
            color=colors[i].upper(),
            emission_nm=ch.emission_nm,
            active=i < DEFAULT_ACTIVE,
        )
        for i, ch in enumerate(info.channels)
    )
    return replace(
        layout,
        codec="zstd",
        quality=0,
        shard=shard,
        dtype=info.dtype,
        channels=len(channel_info),
        kind="channels",
        channel_info=channel_info,
    )
