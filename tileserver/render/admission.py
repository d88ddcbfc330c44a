"""Admission of renders by memory: the estimated peak bytes of renders in flight stay under a
ceiling, and one principal holds at most a few large renders at once (issue 14, finding 3).

A render's peak is estimated before it starts from the pixels it reads and makes
(``estimate_bytes``). Small renders (tiles, thumbnails: at most ``small`` bytes each) are
never held back: the render pool runs at most ``small_slots`` of them at once, so that much
of the ceiling is set aside for them, and they never queue behind a large render (which is
what keeps other users' tiles fast during a flood). A large render that alone needs more
than the rest of the ceiling is refused (400); otherwise it waits, for a bounded time, until
the large renders in flight leave room for it and its principal is under its share, then
503 with Retry-After.

Everything runs on the event loop (no locks): waiting is on futures that each release wakes.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from tileserver.errors import Overloaded, RegionError

MIB = 1 << 20
# Peak bytes per pixel read or made, measured: the composed source is held as numpy RGB
# (3 bytes) and as Pillow's 4-byte RGB while resizing, and the output as both again while
# encoding. A full 20000x15000 slide rendered to an 8192x6144 PNG peaked 983 MiB above the
# idle process; 8 bytes per pixel estimates 956 MiB.
BYTES_PER_PIXEL = 8


def estimate_bytes(source_pixels: int, out_pixels: int) -> int:
    """The estimated peak memory of a render reading ``source_pixels`` into ``out_pixels``."""
    return BYTES_PER_PIXEL * (source_pixels + out_pixels)


class RenderTooLarge(RegionError):
    """A render that alone would exceed the render memory ceiling (400: ask for less)."""


class RenderBusy(Overloaded):
    """No room for a large render within the bounded wait (503 with Retry-After)."""


class RenderGate:
    """Estimated bytes of renders in flight under ``ceiling``; ``per_key`` large renders at
    most per principal key (None: no principal, no per-key share)."""

    def __init__(
        self, ceiling: int, *, small: int, small_slots: int, per_key: int, wait: float
    ) -> None:
        if min(small, small_slots, wait) < 0 or per_key < 1:
            raise ValueError("render gate: per_key positive, small, small_slots and wait >= 0")
        if ceiling - small * small_slots < small:
            raise ValueError(
                f"a render memory ceiling of {ceiling // MIB} MiB leaves no room for large "
                f"renders beside {small_slots} small ones of {small // MIB} MiB"
            )
        self.ceiling = ceiling
        self.capacity = ceiling - small * small_slots  # for large renders
        self.per_key = per_key
        self.small = small
        self.wait = wait
        self.used = 0  # estimated bytes of large renders admitted and not yet finished
        self._large: Counter[str] = Counter()  # large renders in flight per key
        self._waiters: set[asyncio.Future[None]] = set()

    def is_small(self, nbytes: int) -> bool:
        return nbytes <= self.small

    def _fits(self, key: str | None, nbytes: int) -> bool:
        if key is not None and self._large[key] >= self.per_key:
            return False
        return self.used + nbytes <= self.capacity

    async def acquire(self, key: str | None, nbytes: int) -> None:
        """Admit a render of ``nbytes`` for ``key``; the caller must ``release`` it once it
        has finished (not merely once its client has gone)."""
        if self.is_small(nbytes):
            return
        if nbytes > self.capacity:
            raise RenderTooLarge(
                f"this image needs about {nbytes // MIB} MiB to render, over the "
                f"{self.capacity // MIB} MiB the server's render memory ceiling of "
                f"{self.ceiling // MIB} MiB leaves for large renders; ask for a smaller size "
                "or region"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while not self._fits(key, nbytes):
            waiter = loop.create_future()
            self._waiters.add(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise self._busy(key) from None
            finally:
                self._waiters.discard(waiter)
        self.used += nbytes
        if key is not None:
            self._large[key] += 1

    def release(self, key: str | None, nbytes: int) -> None:
        if self.is_small(nbytes):
            return
        self.used -= nbytes
        if key is not None:
            self._large[key] -= 1
            if not self._large[key]:
                del self._large[key]
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _busy(self, key: str | None) -> RenderBusy:
        if key is not None and self._large[key] >= self.per_key:
            why = f"this caller already has {self._large[key]} large render(s) in progress"
        else:
            why = (
                f"large renders in progress hold {self.used // MIB} of the "
                f"{self.capacity // MIB} MiB render memory"
            )
        return RenderBusy(
            f"the server is busy: {why}; retry in {max(1, round(self.wait))} s", self.wait
        )
