"""A thread-safe LRU bounded by total weight (bytes, or 1 per item).

Used by SlideService's response and decoded-chunk caches, the DICOM source's headers and
decoded frames and, with one load at a time per key on top, by the sources' decoded-segment
cache (sources/segment_cache.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class WeightedLRU(Generic[V]):
    def __init__(self, capacity: int, weigh: Callable[[V], int]) -> None:
        self.capacity = capacity
        self.weigh = weigh
        self.weight = 0
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> None:
        """Keep ``value`` (a value heavier than the whole capacity is not kept), dropping
        the least recently used until the total weight fits."""
        weight = self.weigh(value)
        if weight > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.weight -= self.weigh(old)
            self._items[key] = value
            self.weight += weight
            while self.weight > self.capacity:
                _, evicted = self._items.popitem(last=False)
                self.weight -= self.weigh(evicted)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.weight = 0
