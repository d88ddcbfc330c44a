"""Channel planes -> an RGB display image: the additive composite of fluorescence channels.

For each chosen channel, ``v = clip((x - start) / (end - start), 0, 1)`` and
``rgb += v * color``; the sum is rounded half up and clipped to 255. ``composite`` runs the
Numba kernel (tileserver.pyramid.kernels, the one Numba importer); ``composite_reference``
is its plain NumPy twin with the same contract, kept as the tests' oracle. Both share the
argument checks below, so they refuse exactly the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tileserver.geometry import Region
from tileserver.pyramid.kernels import composite_kernel

__all__ = ["DTYPES", "compose_channels", "composite", "composite_reference"]

DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))

RGB = tuple[int, int, int]
Window = tuple[float, float]


def _check(
    planes: object, colors: Sequence[RGB], windows: Sequence[Window], out: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The arrays the kernel trusts: planes, float32 starts, scales and colours, and out."""
    if not isinstance(planes, np.ndarray) or planes.ndim != 3:
        raise ValueError("planes must be a (channels, h, w) numpy array")
    if planes.dtype not in DTYPES:
        raise ValueError(f"planes must be uint8 or uint16, not {planes.dtype}")
    k, h, w = planes.shape
    if len(colors) != k or len(windows) != k:
        raise ValueError(
            f"{k} planes need {k} colours and {k} windows, got {len(colors)} and {len(windows)}"
        )
    color_arr = np.asarray(colors, dtype=np.float32).reshape(k, 3)
    if np.any(color_arr < 0) or np.any(color_arr > 255):
        raise ValueError("colour components must be in 0..255")
    starts = np.empty(k, np.float32)
    scales = np.empty(k, np.float32)
    for i, (start, end) in enumerate(windows):
        if not (np.isfinite(start) and np.isfinite(end) and end > start):
            raise ValueError(f"window {i} must be finite with end > start, got {start}-{end}")
        starts[i] = start
        scales[i] = 1.0 / (float(end) - float(start))
    if out is None:
        out = np.empty((h, w, 3), np.uint8)
    elif out.shape != (h, w, 3) or out.dtype != np.uint8 or not out.flags.writeable:
        raise ValueError(f"out must be a writeable uint8 array of shape {(h, w, 3)}")
    return planes, starts, scales, color_arr, out


def composite(
    planes: np.ndarray,
    colors: Sequence[RGB],
    windows: Sequence[Window],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The (h, w, 3) uint8 composite of ``planes`` (k, h, w), one colour and window each.
    Channel first, as stored (one channel per chunk): each channel's rows are contiguous."""
    planes, starts, scales, color_arr, result = _check(planes, colors, windows, out)
    composite_kernel(planes, starts, scales, color_arr, result)
    return result


def composite_reference(
    planes: np.ndarray,
    colors: Sequence[RGB],
    windows: Sequence[Window],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """NumPy twin of :func:`composite`: float32 arithmetic in the kernel's order."""
    planes, starts, scales, color_arr, result = _check(planes, colors, windows, out)
    acc = np.zeros(result.shape, np.float32)
    for c in range(planes.shape[0]):
        v = (planes[c].astype(np.float32) - starts[c]) * scales[c]
        v = np.minimum(np.maximum(v, np.float32(0.0)), np.float32(1.0))
        acc += v[:, :, None] * color_arr[c]
    # acc >= 0, so truncation is floor: round half up as the kernel does.
    result[...] = np.minimum((acc + np.float32(0.5)).astype(np.int32), 255)
    return result


def compose_channels(
    read_chunk: Callable[[int, int, int], np.ndarray],
    channels: Sequence[int],
    tile: int,
    l_region: Region,
    dtype: np.dtype[Any],
) -> np.ndarray:
    """(len(channels), h, w) samples of a region inside a level, copied out of the
    (tile x tile) single-channel chunks it touches: ``read_chunk(c, t_col, t_row)``."""
    out = np.empty((len(channels), l_region.height, l_region.width), dtype)
    rows = range(l_region.y // tile, -(-(l_region.y + l_region.height) // tile))
    cols = range(l_region.x // tile, -(-(l_region.x + l_region.width) // tile))
    for t_row in rows:
        y0 = max(t_row * tile, l_region.y)
        y1 = min((t_row + 1) * tile, l_region.y + l_region.height)
        dst_y, src_y = (
            slice(y0 - l_region.y, y1 - l_region.y),
            slice(y0 - t_row * tile, y1 - t_row * tile),
        )
        for t_col in cols:
            x0 = max(t_col * tile, l_region.x)
            x1 = min((t_col + 1) * tile, l_region.x + l_region.width)
            dst_x = slice(x0 - l_region.x, x1 - l_region.x)
            src_x = slice(x0 - t_col * tile, x1 - t_col * tile)
            for i, c in enumerate(channels):
                out[i, dst_y, dst_x] = read_chunk(c, t_col, t_row)[src_y, src_x]
    return out
