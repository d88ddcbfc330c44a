"""Micro-benchmarks: Numba pyramid kernels against their NumPy twins.

Run on demand, not part of the default test run::

    pytest benchmarks/bench_kernels.py --benchmark-only

Each benchmark records its throughput in source megapixels per second in ``extra_info`` (shown
with ``--benchmark-json``): ``mpix_per_s_best`` from the fastest round and ``mpix_per_s_mean``
from the mean; compare the best rounds, since anything else running slows the mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tileserver.pyramid import kernels, reference

TILE_SHAPE = (1024, 1024, 3)
MPIX = TILE_SHAPE[0] * TILE_SHAPE[1] / 1e6


@pytest.fixture(scope="module")
def tile() -> np.ndarray:
    """Random content, so neither side can profit from uniform data."""
    return np.random.default_rng(1234).integers(0, 256, TILE_SHAPE, dtype=np.uint8)


def _record_throughput(benchmark: Any) -> None:
    stats = benchmark.stats.stats
    benchmark.extra_info["mpix_per_s_best"] = round(MPIX / stats.min, 1)
    benchmark.extra_info["mpix_per_s_mean"] = round(MPIX / stats.mean, 1)


@pytest.mark.parametrize(
    "fn",
    [kernels.downsample_2x, reference.downsample_2x],
    ids=["numba", "numpy"],
)
def test_downsample_2x(
    benchmark: Any, tile: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], None]
) -> None:
    h, w, c = tile.shape
    out = np.empty(((h + 1) // 2, (w + 1) // 2, c), dtype=np.uint8)
    expected = np.empty_like(out)
    reference.downsample_2x(tile, expected)
    fn(tile, out)  # warm-up: JIT compilation must not be timed
    benchmark(fn, tile, out)
    np.testing.assert_array_equal(out, expected)
    _record_throughput(benchmark)


@pytest.mark.parametrize("fn", [kernels.is_uniform, reference.is_uniform], ids=["numba", "numpy"])
def test_is_uniform_white(benchmark: Any, fn: Callable[[np.ndarray, int, int], bool]) -> None:
    """Worst case for the early exit: a uniform tile must be scanned to the end."""
    white = np.full(TILE_SHAPE, 250, dtype=np.uint8)
    assert fn(white, 255, 8)  # warm-up
    assert benchmark(fn, white, 255, 8)
    _record_throughput(benchmark)
