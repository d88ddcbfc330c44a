"""Per-principal render budgets: a token bucket of output pixels (issue 14, finding 3).

A render's cost is what it makes: its output pixels. Each principal has a bucket that
refills at ``rate`` megapixels per second up to ``burst`` megapixels, and a render is
charged before it starts. Counting requests would price a 256-pixel tile like a
67-megapixel PNG; counting pixels lets a viewer or an LIS fetch thumbnails freely while a
flood of full-slide renders runs dry after its burst.

A render bigger than the whole burst is admitted when the bucket is full and leaves it in
debt, so every size within the output caps stays possible, at that size's rate.
Pure: no I/O, and the clock is injectable, so tests step time by hand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from tileserver.errors import Overloaded

MEGA = 1_000_000
# Buckets of principals idle long enough to be full again are forgotten past this many.
MAX_KEYS = 4096


class BudgetExceeded(Overloaded):
    """This principal's render budget is spent for now (the server answers 429)."""


@dataclass
class _Bucket:
    pixels: float  # may be negative: the debt of a render bigger than the burst
    stamp: float


class RenderBudget:
    """Output-pixel token buckets, one per principal key. ``rate`` 0 turns budgets off.

    Not thread-safe: call it from the event loop only (it never blocks).
    """

    def __init__(
        self,
        rate_mpx: float,
        burst_mpx: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_mpx < 0 or burst_mpx <= 0:
            raise ValueError("the render budget's rate must be >= 0 and its burst positive")
        self.rate = rate_mpx * MEGA  # pixels per second
        self.burst = burst_mpx * MEGA  # pixels
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def charge(self, key: str, pixels: int) -> None:
        """Take ``pixels`` from ``key``'s bucket, or raise BudgetExceeded saying when to retry."""
        if self.rate == 0:
            return
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.pixels = min(self.burst, bucket.pixels + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        needed = min(pixels, self.burst)  # a full bucket admits even a render over the burst
        if bucket.pixels >= needed:
            bucket.pixels -= pixels
            return
        wait = (needed - bucket.pixels) / self.rate
        raise BudgetExceeded(
            f"render budget exceeded: this image is {pixels / MEGA:.1f} megapixels and "
            f"{max(0.0, bucket.pixels) / MEGA:.1f} are left of this caller's "
            f"{self.rate / MEGA:g} megapixels per second (burst {self.burst / MEGA:g}); "
            f"retry in {max(1, math.ceil(wait))} s or ask for a smaller image",
            wait,
        )

    def refund(self, key: str, pixels: int) -> None:
        """Give back a charge whose render never ran (refused for memory, or abandoned)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.pixels = min(self.burst, bucket.pixels + pixels)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: a new bucket starts full, so nothing changes."""
        for key, bucket in list(self._buckets.items()):
            if bucket.pixels + (now - bucket.stamp) * self.rate >= self.burst:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
