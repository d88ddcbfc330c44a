"""The decoded-segment cache: LRU order, byte bound, read-only entries."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tileserver.sources.segment_cache import SegmentCache


def test_least_recently_used_goes_first_and_bytes_stay_bounded() -> None:
    cache = SegmentCache(max_bytes=3000)
    for key in "abc":
        cache.put(key, np.zeros(1000, np.uint8))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", np.zeros(1000, np.uint8))
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.nbytes == 3000
    cache.put("huge", np.zeros(3001, np.uint8))  # larger than the budget: not kept
    assert cache.get("huge") is None and cache.nbytes == 3000
    cache.put("a", np.zeros(500, np.uint8))  # replacing counts the new size only
    assert cache.nbytes == 2500
    cache.clear()
    assert cache.nbytes == 0 and cache.get("a") is None


def test_entries_are_read_only() -> None:
    cache = SegmentCache(max_bytes=100)
    cache.put("a", np.zeros(10, np.uint8))
    entry = cache.get("a")
    assert entry is not None
    with pytest.raises(ValueError, match="read-only"):
        entry[0] = 1


def test_a_zero_budget_keeps_nothing() -> None:
    cache = SegmentCache(max_bytes=0)
    cache.put("a", np.zeros(1, np.uint8))
    assert cache.get("a") is None


def test_a_key_being_loaded_is_loaded_once() -> None:
    """A second thread asking while the first decodes waits for it instead of decoding."""
    cache = SegmentCache(max_bytes=1000)
    inside, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def load() -> np.ndarray:
        calls.append(1)
        inside.set()
        release.wait(30)
        return np.ones(10, np.uint8)

    results: list[np.ndarray | None] = []
    first = threading.Thread(target=lambda: results.append(cache.get_or_load("k", load)))
    first.start()
    assert inside.wait(30)
    second = threading.Thread(target=lambda: results.append(cache.get_or_load("k", load)))
    second.start()
    second.join(0.5)  # gives it time to reach the wait (or, were it broken, the load)
    release.set()
    first.join(30)
    second.join(30)
    assert len(calls) == 1
    assert len(results) == 2 and all(r is not None and r.sum() == 10 for r in results)


def test_a_failed_load_leaves_nothing_pending() -> None:
    cache = SegmentCache(max_bytes=1000)

    def broken() -> np.ndarray:
        raise OSError("disk")

    with pytest.raises(OSError, match="disk"):
        cache.get_or_load("k", broken)
    assert cache.get_or_load("k", lambda: np.zeros(3, np.uint8)) is not None
