"""The argument contract shared by the kernels and their NumPy twins, checked in Python
before anything reaches compiled code (so both raise on exactly the same inputs)."""

from __future__ import annotations

import numpy as np

# Sample types the kernels take: 8-bit RGB or channels, 16-bit channels (native byte order).
SAMPLE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def check_image(
    name: str, arr: object, dtypes: tuple[np.dtype, ...] = SAMPLE_DTYPES[:1]
) -> np.ndarray:
    """Reject anything that is not an (h, w, c) ndarray of ``dtypes`` (default uint8) before
    it reaches compiled code."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (h, w, c), got shape {arr.shape}")
    return arr


def check_downsample_args(src: object, out: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate the downsample contract so the jitted code can index without checks."""
    src = check_image("src", src, SAMPLE_DTYPES)
    out = check_image("out", out, (src.dtype,))
    h, w, c = src.shape
    expected = ((h + 1) // 2, (w + 1) // 2, c)
    if out.shape != expected:
        raise ValueError(
            f"out must have shape {expected} for src of shape {src.shape}, got {out.shape}"
        )
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    if out.size and np.may_share_memory(src, out):
        raise ValueError("src and out must not overlap in memory")
    return src, out


def check_histogram_args(samples: object, counts: object) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, c) uint8/uint16 samples and a writeable int64 (c, 2**bits) counts array."""
    samples = check_image("samples", samples, SAMPLE_DTYPES)
    if not isinstance(counts, np.ndarray) or counts.dtype != np.int64:
        raise ValueError("counts must be an int64 numpy.ndarray")
    bins = 1 << (8 * samples.dtype.itemsize)
    if counts.shape != (samples.shape[2], bins):
        raise ValueError(f"counts must have shape {(samples.shape[2], bins)}, got {counts.shape}")
    if not counts.flags.writeable:
        raise ValueError("counts must be writeable")
    return samples, counts
