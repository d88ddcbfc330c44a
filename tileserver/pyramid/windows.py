"""Display windows of channel slides from histograms of a low level (pure functions).

A window is the sample range mapped onto a channel's colour, from dark to full. It runs from
the 0.1th to the 99.9th percentile of the channel's samples, background (exact 0: dark glass
and never-written chunks) left out, so a few hot pixels do not dim a channel and a mostly
empty one is not stretched to its noise.
"""

from __future__ import annotations

import numpy as np

from tileserver.geometry import Size

LOW, HIGH = 0.001, 0.999
WINDOW_MIN_EDGE = 256  # the level histograms come from: the smallest at least this big


def window_level(levels: tuple[Size, ...]) -> int:
    """The smallest level whose width and height are both at least 256 (else level 0)."""
    fit = [k for k, s in enumerate(levels) if min(s.width, s.height) >= WINDOW_MIN_EDGE]
    return fit[-1] if fit else 0


def display_window(counts: np.ndarray, low: float = LOW, high: float = HIGH) -> tuple[float, float]:
    """(start, end) of one channel from its counts per sample value (len 256 or 65536):
    start < end always, both within the dtype's range."""
    top = len(counts) - 1
    seen = counts.astype(np.int64, copy=True)
    seen[0] = 0
    total = int(seen.sum())
    if total == 0:
        return 0.0, float(top)
    cumulative = np.cumsum(seen)
    start = int(np.searchsorted(cumulative, low * total, side="left"))
    end = int(np.searchsorted(cumulative, high * total, side="left"))
    if end <= start:
        start, end = (start, start + 1) if start < top else (top - 1, top)
    return float(start), float(end)
