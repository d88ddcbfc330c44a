"""A small thread-safe LRU of decoded segments, bounded in bytes.

Channel slides are often stored in larger tiles (512 px) than the chunks a converter reads
(256 px): without it every source tile would be decoded once per chunk it overlaps, four
times or more. Cached arrays are read-only so no caller can change another's pixels. Threads
asking for a segment another thread is decoding wait for that decode instead of repeating it
(a converter's workers read neighbouring chunks, i.e. the same source tile, at once).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

import numpy as np

from tileserver.lru import WeightedLRU


class SegmentCache(WeightedLRU[np.ndarray]):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, lambda value: value.nbytes)
        self._loading: dict[Hashable, threading.Event] = {}

    @property
    def max_bytes(self) -> int:
        return self.capacity

    @property
    def nbytes(self) -> int:
        return self.weight

    def get_or_load(
        self, key: Hashable, load: Callable[[], np.ndarray | None]
    ) -> np.ndarray | None:
        """The cached value, else ``load()``'s (cached), loading each key once at a time."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                return value
            pending = self._loading.get(key)
            owner = pending is None
            if pending is None:
                pending = self._loading[key] = threading.Event()
        if not owner:
            pending.wait()
            value = self.get(key)
            # None: the load failed, found nothing, or was evicted already: do it here.
            return value if value is not None else load()
        try:
            value = load()
            if value is not None:
                self.put(key, value)
            return value
        finally:
            with self._lock:
                del self._loading[key]
            pending.set()

    def put(self, key: Hashable, value: np.ndarray) -> None:
        if value.nbytes <= self.capacity:  # kept, so shared between readers
            value.setflags(write=False)
        super().put(key, value)
