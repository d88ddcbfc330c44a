"""WeightedLRU: least recently used goes first, total weight stays within capacity."""

from __future__ import annotations

from tileserver.lru import WeightedLRU


def test_least_recently_used_goes_first_within_the_weight() -> None:
    cache: WeightedLRU[str] = WeightedLRU(10, len)
    cache.put("a", "xxxx")
    cache.put("b", "xxxx")
    assert cache.get("a") == "xxxx"  # a is now the most recent
    cache.put("c", "xxxx")  # 12 > 10: b goes
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    assert cache.weight == 8


def test_heavier_than_capacity_is_not_kept_and_replacing_reweighs() -> None:
    cache: WeightedLRU[str] = WeightedLRU(5, len)
    cache.put("big", "x" * 6)
    assert cache.get("big") is None and cache.weight == 0
    cache.put("k", "xxx")
    cache.put("k", "x")
    assert cache.get("k") == "x" and cache.weight == 1
    cache.clear()
    assert cache.get("k") is None and cache.weight == 0
