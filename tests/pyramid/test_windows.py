"""Display windows from histograms: percentiles of the non-background samples."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tileserver.geometry import Size
from tileserver.pyramid.windows import display_window, window_level


def test_window_level_is_the_smallest_at_least_256_square() -> None:
    levels = (Size(2000, 1000), Size(1000, 500), Size(500, 250), Size(250, 125))
    assert window_level(levels) == 1
    assert window_level((Size(100, 3000), Size(50, 1500))) == 0
    assert window_level((Size(256, 256), Size(128, 128))) == 0


def test_window_ignores_background_and_hot_pixels() -> None:
    counts = np.zeros(65536, np.int64)
    counts[0] = 10**9  # background
    counts[100:1100] = 1000  # 1 million signal samples, uniform over 100..1099
    counts[65535] = 5  # hot pixels
    start, end = display_window(counts)
    assert 100 <= start <= 101 and 1097 <= end <= 1099


def test_window_of_an_empty_or_flat_channel_is_still_a_range() -> None:
    assert display_window(np.zeros(256, np.int64)) == (0.0, 255.0)
    flat = np.zeros(256, np.int64)
    flat[40] = 7
    assert display_window(flat) == (40.0, 41.0)
    flat[40], flat[255] = 0, 3
    assert display_window(flat) == (254.0, 255.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 65535), min_size=1, max_size=300))
def test_window_brackets_the_samples(values: list[int]) -> None:
    counts = np.bincount(np.array(values), minlength=65536).astype(np.int64)
    start, end = display_window(counts)
    assert 0 <= start < end <= 65535
    signal = [v for v in values if v]
    if signal:
        assert min(signal) <= start <= max(signal) or start == 65534
        assert end <= max(max(signal), start + 1)
