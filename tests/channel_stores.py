"""Channel (fluorescence) and RGB z-stack stores for serving tests and benchmarks, written from
arrays through the real store writer: every level is level 0 decimated by 2**k (the test
knows each stored sample exactly), all-background chunks are left out as the builder does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tileserver.geometry import Size
from tileserver.security.keys import KeyRing
from tileserver.store.chunks import encode_channel_chunk, encode_chunk
from tileserver.store.layout import ChannelInfo, StoreLayout, pyramid_sizes
from tileserver.store.local import LocalObjects
from tileserver.store.writer import StoreWriter


def level_samples(samples: np.ndarray, level: int) -> np.ndarray:
    """(C, Z, h, w) of level ``level``: what ``write_store`` stores there."""
    return samples[:, :, :: 2**level, :: 2**level]


def write_store(
    root: Path,
    slide_id: str,
    samples: np.ndarray,
    *,
    tile: int,
    channels: tuple[ChannelInfo, ...] = (),
    plane_offsets: tuple[float, ...] = (),
    default_plane: int = 0,
    keyring: KeyRing | None = None,
    mpp: float | None = 0.5,
) -> StoreLayout:
    """``samples`` (C, Z, h, w): a "channels" store when ``channels`` names them (uint8 or
    uint16), else an RGB store (C = 3, uint8, zstd chunks)."""
    c, planes, h, w = samples.shape
    kind = "channels" if channels else "rgb"
    layout = StoreLayout(
        slide_id,
        pyramid_sizes(Size(w, h), tile),
        tile,
        "zstd",
        0,
        shard=4,
        dtype=str(samples.dtype),
        channels=c,
        planes=planes,
        kind=kind,
        channel_info=channels,
        plane_offsets=plane_offsets if planes > 1 else (),
        default_plane=default_plane,
    )
    source = {"mpp": [mpp, mpp] if mpp else None, "vendor": "synthetic"}
    writer = StoreWriter.create(LocalObjects(root / slide_id), layout, source, keyring)
    fill = layout.fill_value
    for z in range(planes):
        for level in range(len(layout.levels)):
            pixels = level_samples(samples, level)
            grid = layout.grid(level)
            for t_row in range(grid.height):
                rows = pixels[:, z, t_row * tile : (t_row + 1) * tile]
                for t_col in range(grid.width):
                    part = rows[:, :, t_col * tile : (t_col + 1) * tile]
                    chunk = np.full((c, tile, tile), fill, samples.dtype)
                    chunk[:, : part.shape[1], : part.shape[2]] = part
                    if kind == "rgb":
                        if (chunk != fill).any():
                            data = encode_chunk(np.moveaxis(chunk, 0, -1), "zstd", 0)
                            writer.write_chunk(level, t_col, t_row, data, z=z)
                        continue
                    for ch in range(c):
                        if chunk[ch].any():
                            data = encode_channel_chunk(chunk[ch])
                            writer.write_chunk(level, t_col, t_row, data, c=ch, z=z)
                writer.end_row(level, t_row, z=z)
    assert writer.finish({"slide_id": slide_id})
    return layout
