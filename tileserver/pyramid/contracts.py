"""The argument contract shared by the kernels and their NumPy twins, checked in Python
before anything reaches compiled code (so both raise on exactly the same inputs)."""

from __future__ import annotations

import numpy as np


def check_image(name: str, arr: object) -> np.ndarray:
    """Reject anything that is not an (h, w, c) uint8 ndarray before it reaches compiled code."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (h, w, c), got shape {arr.shape}")
    return arr


def check_downsample_args(src: object, out: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate the downsample contract so the jitted code can index without checks."""
    src = check_image("src", src)
    out = check_image("out", out)
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
