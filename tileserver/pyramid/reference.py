"""Plain NumPy twins of :mod:`tileserver.pyramid.kernels`.

Same signatures and contracts as the kernels, written for clarity rather than speed, so the
tests have an independent oracle. The edge cases are spelled out one by one here, whereas
the kernel folds them into a single formula; agreement between the two checks both.
"""

from __future__ import annotations

import numpy as np

from tileserver.pyramid.contracts import check_downsample_args, check_histogram_args, check_image

__all__ = ["downsample_2x", "histogram", "is_uniform"]


def downsample_2x(src: np.ndarray, out: np.ndarray) -> None:
    """Write the round-half-up 2x2 area mean of ``src`` into ``out`` (see the kernel)."""
    src, out = check_downsample_args(src, out)
    h, w, c = src.shape
    he, we = h - h % 2, w - w % 2
    hf, wf = he // 2, we // 2
    # A type twice as wide holds the largest sum (4 * 255 + 2; 4 * 65535 + 2) without overflow.
    wide = np.uint16 if src.dtype == np.uint8 else np.uint32
    s = src.astype(wide)

    # Full 2x2 blocks: (a + b + c + d + 2) // 4.
    blocks = s[:he, :we].reshape(hf, 2, wf, 2, c).sum(axis=(1, 3), dtype=wide)
    out[:hf, :wf] = (blocks + 2) // 4
    if w % 2:
        # Odd last column: mean of the 2 vertical pixels.
        col = s[:he, w - 1].reshape(hf, 2, c).sum(axis=1, dtype=wide)
        out[:hf, wf] = (col + 1) // 2
    if h % 2:
        # Odd last row: mean of the 2 horizontal pixels.
        row = s[h - 1, :we].reshape(wf, 2, c).sum(axis=1, dtype=wide)
        out[hf, :wf] = (row + 1) // 2
    if h % 2 and w % 2:
        # Lone corner pixel is copied.
        out[hf, wf] = src[h - 1, w - 1]


def is_uniform(tile: np.ndarray, value: int, tolerance: int) -> bool:
    """True when every sample of ``tile`` is within ``tolerance`` of ``value``."""
    tile = check_image("tile", tile)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    return bool(np.all(np.abs(tile.astype(np.int64) - int(value)) <= tolerance))


def histogram(samples: np.ndarray, counts: np.ndarray) -> None:
    """Add each channel's sample counts to ``counts`` (see the kernel)."""
    samples, counts = check_histogram_args(samples, counts)
    for k in range(samples.shape[2]):
        counts[k] += np.bincount(samples[:, :, k].ravel(), minlength=counts.shape[1])
