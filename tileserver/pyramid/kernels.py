"""Numba kernels for building the image pyramid.

Kernels are leaf functions: arrays in, results written into a caller-provided output array.
They hold no allocation policy, I/O or logging, so the builder decides memory layout and
threading. They are compiled with ``nogil=True`` so that a thread pool gets real parallelism,
and never with ``parallel=True``: Numba's own threads would fight the pool. Kernels are cached
on disk (``__pycache__``, or ``NUMBA_CACHE_DIR``): compiling them costs every process about a
second.

Every public kernel has a plain NumPy twin with the same signature in
:mod:`tileserver.pyramid.reference`; the tests check that both agree exactly.

Numba is imported only in this module.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tileserver.pyramid.contracts import check_downsample_args, check_histogram_args, check_image

__all__ = ["composite_kernel", "downsample_2x", "histogram", "is_uniform"]


@njit(nogil=True, cache=True, inline="always")
def _downsample_row(src: np.ndarray, y0: int, y1: int, out: np.ndarray, oy: int) -> None:
    """Reduce source rows ``y0`` and ``y1`` into output row ``oy``.

    On an odd last row the caller passes ``y1 == y0``; on an odd last column the pair of
    columns is ``(x0, x0)``. Repeating a pixel makes the 4-sample sum ``2a + 2b``, so
    ``(2a + 2b + 2) >> 2 == (a + b + 1) >> 1`` and a lone corner gives ``(4a + 2) >> 2 == a``:
    the edge rules fall out of the same round-half-up formula without separate branches.
    """
    w = src.shape[1]
    c = src.shape[2]
    full = w // 2
    for ox in range(full):
        x0 = 2 * ox
        x1 = x0 + 1
        for k in range(c):
            s = (
                np.uint32(src[y0, x0, k])
                + np.uint32(src[y0, x1, k])
                + np.uint32(src[y1, x0, k])
                + np.uint32(src[y1, x1, k])
            )
            out[oy, ox, k] = np.uint8((s + np.uint32(2)) >> np.uint32(2))
    if w % 2:
        x0 = w - 1
        for k in range(c):
            s = np.uint32(src[y0, x0, k]) + np.uint32(src[y1, x0, k])
            out[oy, full, k] = np.uint8((s + np.uint32(1)) >> np.uint32(1))


@njit(nogil=True, cache=True)
def _downsample_2x_serial(src: np.ndarray, out: np.ndarray) -> None:
    """Serial 2x2 mean; releases the GIL so callers can run it on a thread pool."""
    h = src.shape[0]
    for oy in range(out.shape[0]):
        y0 = 2 * oy
        y1 = min(y0 + 1, h - 1)
        _downsample_row(src, y0, y1, out, oy)


@njit(nogil=True, cache=True)
def _is_uniform_rows(rows: np.ndarray, lo: int, hi: int) -> bool:
    """Fast path over (h, w*c) rows: a branch-free inner loop vectorizes; exit once per row."""
    lo32 = np.int32(lo)
    hi32 = np.int32(hi)
    for y in range(rows.shape[0]):
        bad: np.bool_ = np.bool_(False)
        for i in range(rows.shape[1]):
            v = np.int32(rows[y, i])
            bad |= (v < lo32) | (v > hi32)
        if bad:
            return False
    return True


@njit(nogil=True, cache=True)
def _is_uniform_3d(tile: np.ndarray, lo: int, hi: int) -> bool:
    """Fallback for views whose pixels cannot be merged into one row axis."""
    lo32 = np.int32(lo)
    hi32 = np.int32(hi)
    h, w, c = tile.shape
    for y in range(h):
        bad: np.bool_ = np.bool_(False)
        for x in range(w):
            for k in range(c):
                v = np.int32(tile[y, x, k])
                bad |= (v < lo32) | (v > hi32)
        if bad:
            return False
    return True


def downsample_2x(src: np.ndarray, out: np.ndarray) -> None:
    """Write the 2x2 area mean of ``src`` into ``out``, rounding half up.

    ``src`` is ``uint8[h, w, c]`` or ``uint16[h, w, c]`` (any number of channels) and ``out``
    must be ``[(h+1)//2, (w+1)//2, c]`` of the same dtype; both may be non-contiguous views.
    Each output sample is ``(a+b+c+d+2)//4``; on an odd last column or row it is the rounded
    mean of the 2 remaining pixels, and a lone corner pixel is copied.
    Raises ValueError when the shapes or dtypes do not match.
    """
    src, out = check_downsample_args(src, out)
    if src.dtype == np.uint8:
        _downsample_2x_serial(src, out)
    else:
        _downsample_2x_wide(src, out)


# -- 16-bit and channel samples (fluorescence) ------------------------------------------------
# A kernel of its own rather than a generic one: the uint8 RGB kernel above is the converter's
# hot path and stays exactly as it is.


@njit(nogil=True, cache=True)
def _downsample_2x_wide(src: np.ndarray, out: np.ndarray) -> None:
    """``_downsample_2x_serial`` for uint16 samples (same edge rules; uint32 sums)."""
    h, w, c = src.shape
    full = w // 2
    for oy in range(out.shape[0]):
        y0 = 2 * oy
        y1 = min(y0 + 1, h - 1)
        for ox in range(full):
            x0 = 2 * ox
            for k in range(c):
                s = (
                    np.uint32(src[y0, x0, k])
                    + np.uint32(src[y0, x0 + 1, k])
                    + np.uint32(src[y1, x0, k])
                    + np.uint32(src[y1, x0 + 1, k])
                )
                out[oy, ox, k] = np.uint16((s + np.uint32(2)) >> np.uint32(2))
        if w % 2:
            x0 = w - 1
            for k in range(c):
                s = np.uint32(src[y0, x0, k]) + np.uint32(src[y1, x0, k])
                out[oy, full, k] = np.uint16((s + np.uint32(1)) >> np.uint32(1))


@njit(nogil=True, cache=True)
def _histogram(samples: np.ndarray, counts: np.ndarray) -> None:
    h, w, c = samples.shape
    for y in range(h):
        for x in range(w):
            for k in range(c):
                counts[k, samples[y, x, k]] += 1


def histogram(samples: np.ndarray, counts: np.ndarray) -> None:
    """Add the samples of each channel of ``samples`` (h, w, c; uint8 or uint16, any view)
    to ``counts`` (c, 256 or 65536; int64): one pass, no copy, for display windows."""
    samples, counts = check_histogram_args(samples, counts)
    _histogram(samples, counts)


def is_uniform(tile: np.ndarray, value: int, tolerance: int) -> bool:
    """True when every sample of ``tile`` is within ``tolerance`` of ``value``.

    Used to skip chunks of uniform (e.g. white) background. The scan stops at the end of the
    first row that holds an outlier: checking once per row keeps the inner loop vectorizable.
    """
    tile = check_image("tile", tile)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    # Clamp the window to the uint8 range so the bounds fit int32 whatever the caller passes.
    lo = min(max(int(value) - int(tolerance), -1), 256)
    hi = min(max(int(value) + int(tolerance), -1), 256)
    h, w, c = tile.shape
    try:
        rows = tile.reshape((h, w * c), copy=False)
    except ValueError:  # strides do not allow a view; never copy a tile just to scan it
        return bool(_is_uniform_3d(tile, lo, hi))
    return bool(_is_uniform_rows(rows, lo, hi))


# -- composite of display channels (served, not built) ------------------------------------
# Kept here so Numba has one importer. The checked wrapper and its NumPy twin live in
# tileserver.render.composite; this kernel trusts them for shapes, dtypes and windows.


@njit(nogil=True, cache=True)
def composite_kernel(
    planes: np.ndarray, starts: np.ndarray, scales: np.ndarray, colors: np.ndarray, out: np.ndarray
) -> None:
    """Additive composite of ``planes`` (k, h, w) into ``out`` (h, w, 3) uint8.

    Per channel ``v = clip((x - start) * scale, 0, 1)``, ``rgb += v * color``, then rounded
    half up and clipped to 255. All arithmetic is float32 in the same order as the twin, so
    both give identical bytes (no fastmath: fused multiply-adds would round differently).
    Row by row, channel by channel: the inner loop runs along one channel's contiguous row
    into a row of sums, which vectorizes (a pixel-by-pixel loop over 3 channels did not:
    about 25x slower on a 256 x 256 tile).
    """
    k, h, w = planes.shape
    acc = np.empty((3, w), np.float32)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    half = np.float32(0.5)
    top = np.float32(255.0)
    for y in range(h):
        acc[:] = zero
        for c in range(k):
            start = starts[c]
            scale = scales[c]
            red = colors[c, 0]
            green = colors[c, 1]
            blue = colors[c, 2]
            for x in range(w):
                v = min(max((np.float32(planes[c, y, x]) - start) * scale, zero), one)
                acc[0, x] += v * red
                acc[1, x] += v * green
                acc[2, x] += v * blue
        for x in range(w):  # the sums are >= 0: truncation after + 0.5 rounds half up
            out[y, x, 0] = np.uint8(min(acc[0, x] + half, top))
            out[y, x, 1] = np.uint8(min(acc[1, x] + half, top))
            out[y, x, 2] = np.uint8(min(acc[2, x] + half, top))
